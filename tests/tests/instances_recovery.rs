//! Restarts on a real Docker Engine: an agent killed with running instances adopts
//! them, removes orphans and reports vanished containers; a controller killed during
//! launches ends with every instance in a correct state; lifetimes run out on time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{wait_for, Agent, Controller, ControllerOptions};
use cairn_tests::docker::{docker, require_docker};
use cairn_tests::images::busybox_image;

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
    if !require_docker() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_controller_during_launches_leaves_records_and_containers_in_agreement() {
    if !require_docker() {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, _agent, host, alice, _cleanup) = setup(tmp.path()).await;
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
    for _ in 0..6 {
        let (s, _) = ctl
            .request(
                Some(&alice),
                Method::POST,
                "/api/v1/instances",
                Some(json!({"blueprint": "web"})),
            )
            .await;
        assert_eq!(s, 201);
    }
    // Kill it with launches in flight, and stop one in flight too.
    ctl.kill9();
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
    let st = states(&ctl, &alice).await;
    assert_eq!(st.len(), 6);
    let running: BTreeSet<String> = st
        .iter()
        .filter(|s| s.1 == "running")
        .map(|s| s.0.clone())
        .collect();
    // Give the agent a pass to remove anything nobody wants.
    wait_for("containers match records", Duration::from_secs(20), || {
        let (host, running) = (&host, &running);
        async move {
            let c: BTreeSet<String> = containers(host).into_iter().map(|c| c.1).collect();
            &c == running
        }
    })
    .await;
    assert_eq!(
        running.len(),
        6,
        "every launch should survive a controller restart: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_run_out_on_time() {
    if !require_docker() {
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
    if !require_docker() {
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
    if !require_docker() {
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
    let (_, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "short"})),
        )
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/instances/{id}/extend");
    // Users cannot extend; admins can.
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
    assert!(i["time_left_secs"].as_u64().unwrap() > 55, "{i}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let i = ctl.instance(&alice, &id).await;
    assert!(
        i["state"] == "running" || i["state"] == "starting",
        "extended instance stopped: {i:#}"
    );
}
