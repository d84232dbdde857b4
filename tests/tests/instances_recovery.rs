//! Restarts on a real Docker Engine: an agent killed with running instances adopts
//! them, removes orphans and reports vanished containers; a controller killed during
//! launches and a stop (the agent frozen, so both are surely in flight) ends with the
//! launches running and the stop finished; lifetimes run out on time and admins
//! extend them exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{wait_for, Agent, Controller, ControllerOptions};
use cairn_tests::docker::docker;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

/// Removes every container this test's agent created, whatever happens.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=cairn.host={}", self.0),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

/// Container ids owned by `host`, by instance label.
fn containers(host: &str) -> Vec<(String, String)> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=cairn.host={host}"),
        "--format",
        "{{.ID}} {{.Label \"cairn.instance\"}}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn states(ctl: &Controller, token: &str) -> Vec<(String, String, Value)> {
    let (_, list) = ctl
        .request(Some(token), Method::GET, "/api/v1/instances", None)
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
                i["state_reason"].clone(),
            )
        })
        .collect()
}

fn blueprint(name: &str, image: &str, lifetime: u64) -> Value {
    json!({
        "name": name, "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 32, "cpus": 0.1,
        "max_instances_per_user": 10, "max_lifetime_secs": lifetime,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    })
}

async fn setup(tmp: &std::path::Path) -> (Controller, Agent, String, String, Cleanup) {
    let mut ctl = Controller::init(tmp, &ControllerOptions::default());
    ctl.start().await;
    let mut agent = Agent::new(tmp, "host");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    let cleanup = Cleanup(host.clone());
    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    let alice = ctl.user("alice", "user").await;
    (ctl, agent, host, alice, cleanup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_adopts_its_instances_removes_orphans_and_reports_vanished_ones() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, mut agent, host, alice, _cleanup) = setup(tmp.path()).await;
    assert_eq!(
        ctl.send(
            Method::POST,
            "/api/v1/blueprints",
            Some(blueprint("web", &image, 3600))
        )
        .await
        .0,
        201
    );
    for _ in 0..5 {
        let (s, b) = ctl
            .request(
                Some(&alice),
                Method::POST,
                "/api/v1/instances",
                Some(json!({"blueprint": "web"})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    wait_for("5 running", Duration::from_secs(60), || {
        let (ctl, alice) = (&ctl, &alice);
        async move {
            states(ctl, alice)
                .await
                .iter()
                .filter(|s| s.1 == "running")
                .count()
                == 5
        }
    })
    .await;
    let before: BTreeSet<(String, String)> = containers(&host).into_iter().collect();
    assert_eq!(before.len(), 5);

    agent.kill9();
    // While the agent is down: one instance's container vanishes, and an orphan with
    // this host's labels appears.
    let (victim_container, victim) = before.iter().next().cloned().unwrap();
    docker(&["rm", "-f", &victim_container]);
    let orphan = docker(&[
        "run",
        "-d",
        "--label",
        "cairn.instance=i-00000000000000aa",
        "--label",
        &format!("cairn.host={host}"),
        &image,
        "sleep",
        "300",
    ]);

    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    wait_for("vanished instance failed", Duration::from_secs(30), || {
        let (ctl, alice, victim) = (&ctl, &alice, &victim);
        async move {
            states(ctl, alice)
                .await
                .iter()
                .any(|s| &s.0 == victim && s.1 == "failed" && s.2 == "container disappeared")
        }
    })
    .await;
    wait_for("orphan removed", Duration::from_secs(30), || {
        let (host, orphan) = (&host, orphan.clone());
        async move { !containers(host).iter().any(|c| orphan.starts_with(&c.0)) }
    })
    .await;
    // The other four were adopted: same containers, none duplicated, still running.
    let after: BTreeSet<(String, String)> = containers(&host).into_iter().collect();
    let expected: BTreeSet<(String, String)> =
        before.iter().filter(|c| c.1 != victim).cloned().collect();
    assert_eq!(after, expected);
    let st = states(&ctl, &alice).await;
    assert_eq!(st.iter().filter(|s| s.1 == "running").count(), 4, "{st:?}");
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_controller_during_launches_and_a_stop_leaves_records_and_containers_in_agreement() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, agent, host, alice, _cleanup) = setup(tmp.path()).await;
    assert_eq!(
        ctl.send(
            Method::POST,
            "/api/v1/blueprints",
            Some(blueprint("web", &image, 3600))
        )
        .await
        .0,
        201
    );
    // One instance running: its stop will be in flight when the controller dies.
    let stopped = ctl.launch(&alice, "web").await;
    ctl.wait_instance(&alice, &stopped, "running", Duration::from_secs(60))
        .await;
    // Five launches in flight.
    let mut launched = BTreeSet::new();
    for _ in 0..5 {
        launched.insert(ctl.launch(&alice, "web").await);
    }
    // The agent frozen, nothing the controller asks for from here on can be done
    // before the kill: the launches and the stop are certainly in flight.
    let agent_pid = agent.pid().unwrap();
    signal(agent_pid, "STOP");
    let (status, body) = ctl
        .request(
            Some(&alice),
            Method::DELETE,
            &format!("/api/v1/instances/{stopped}"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "stopping", "{body:#}");
    let killed_ms = cairn_shared::time::now_ms();
    ctl.kill9();
    signal(agent_pid, "CONT");
    ctl.start().await;

    wait_for("every instance settled", Duration::from_secs(60), || {
        let (ctl, alice) = (&ctl, &alice);
        async move {
            states(ctl, alice)
                .await
                .iter()
                .all(|s| s.1 == "running" || s.1 == "failed" || s.1 == "stopped")
        }
    })
    .await;
    // The stop begun before the kill was finished after it, by the new controller.
    let i = ctl.instance(&alice, &stopped).await;
    assert_eq!(i["state"], "stopped", "{i:#}");
    assert_eq!(i["state_reason"], "stopped by alice", "{i:#}");
    let at = |state: &str| {
        i["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["state"] == state)
            .and_then(|t| t["at_ms"].as_u64())
            .unwrap_or_else(|| panic!("no {state} transition: {i:#}"))
    };
    // The same millisecond is possible: the stop was recorded before the answer came.
    assert!(at("stopping") <= killed_ms, "{i:#}");
    assert!(at("stopped") > killed_ms, "{i:#}");
    // Every launch survived the restart.
    let st = states(&ctl, &alice).await;
    assert_eq!(st.len(), 6);
    let running: BTreeSet<String> = st
        .iter()
        .filter(|s| s.1 == "running")
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(
        running, launched,
        "every launch should survive a controller restart: {st:?}"
    );
    // The host runs exactly those: the stopped one's container is gone, none doubled.
    wait_for("containers match records", Duration::from_secs(20), || {
        let (host, running) = (&host, &running);
        async move {
            let c: Vec<String> = containers(host).into_iter().map(|c| c.1).collect();
            c.len() == running.len() && c.iter().cloned().collect::<BTreeSet<_>>() == *running
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_run_out_on_time() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, _host, alice, _cleanup) = setup(tmp.path()).await;
    assert_eq!(
        ctl.send(
            Method::POST,
            "/api/v1/blueprints",
            Some(blueprint("short", &image, 3))
        )
        .await
        .0,
        201
    );
    let (_, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "short"})),
        )
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let expires = inst["expires_ms"].as_u64().unwrap();
    let start = Instant::now();
    wait_for("stopped by lifetime", Duration::from_secs(20), || {
        let (ctl, alice, id) = (&ctl, &alice, &id);
        async move {
            states(ctl, alice)
                .await
                .iter()
                .any(|s| &s.0 == id && s.1 == "stopped")
        }
    })
    .await;
    let i = ctl.instance(&alice, &id).await;
    assert_eq!(i["state_reason"], "its lifetime ran out");
    let stopping = i["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "stopping")
        .unwrap();
    let late = stopping["at_ms"].as_u64().unwrap().saturating_sub(expires);
    assert!(late < 1500, "stopping began {late} ms after expiry");
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_wait_in_the_queue_until_a_fitting_host_appears() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, _host, alice, _cleanup) = setup(tmp.path()).await;
    let mut bp = blueprint("zoned", &image, 3600);
    bp["placement"] = json!({"zone": "b"});
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(bp))
            .await
            .0,
        201
    );
    let (_, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "zoned"})),
        )
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    // No host has zone=b: it stays queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let i = ctl.instance(&alice, &id).await;
    assert_eq!(i["state"], "queued", "{i:#}");

    // A host with zone=b joins: the instance is placed there and runs.
    let mut second = Agent::new(tmp.path(), "zone-b");
    let b = second.join_ok(&ctl, &ctl.token("5m", 1), &["--label", "zone=b"]);
    let _cleanup_b = Cleanup(b.clone());
    second.start();
    wait_for(
        "placed on the new host and running",
        Duration::from_secs(60),
        || {
            let (ctl, alice, id, b) = (&ctl, &alice, &id, &b);
            async move {
                let i = ctl.instance(alice, id).await;
                i["state"] == "running" && i["host"] == b.as_str()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_extend_lifetimes() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, _host, alice, _cleanup) = setup(tmp.path()).await;
    assert_eq!(
        ctl.send(
            Method::POST,
            "/api/v1/blueprints",
            Some(blueprint("short", &image, 4))
        )
        .await
        .0,
        201
    );
    let (status, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "short"})),
        )
        .await;
    assert_eq!(status, 201, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    let expires = inst["expires_ms"].as_u64().unwrap();
    let path = format!("/api/v1/instances/{id}/extend");
    // Users cannot extend; admins can, and each extension adds exactly its seconds.
    assert_eq!(
        ctl.request(
            Some(&alice),
            Method::POST,
            &path,
            Some(json!({"seconds": 60}))
        )
        .await
        .0,
        403
    );
    let (status, i) = ctl
        .send(Method::POST, &path, Some(json!({"seconds": 60})))
        .await;
    assert_eq!(status, 200, "{i}");
    assert_eq!(i["expires_ms"].as_u64(), Some(expires + 60_000), "{i:#}");
    let (status, i) = ctl
        .send(Method::POST, &path, Some(json!({"seconds": 30})))
        .await;
    assert_eq!(status, 200, "{i}");
    let extended = expires + 90_000;
    assert_eq!(i["expires_ms"].as_u64(), Some(extended), "{i:#}");
    let left = i["time_left_secs"].as_u64().unwrap();
    assert!((90..=94).contains(&left), "4 s lifetime + 90 s: {i:#}");
    ctl.wait_instance(&alice, &id, "running", Duration::from_secs(60))
        .await;

    // Past the first expiry, and past the moment the lifecycle tick would have acted
    // on it (`lifetimes_run_out_on_time` allows 1.5 s): nothing to await but time.
    let past = expires + 3_000;
    let now = cairn_shared::time::now_ms();
    tokio::time::sleep(Duration::from_millis(past.saturating_sub(now))).await;
    let i = ctl.instance(&alice, &id).await;
    assert_eq!(
        i["state"], "running",
        "extended instance not running: {i:#}"
    );
    assert_eq!(i["expires_ms"].as_u64(), Some(extended), "{i:#}");
    assert!(
        i["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] != "stopping"),
        "{i:#}"
    );
}
