//! A burst of launches (18) on one host whose agent runs two container creates at a
//! time (`CAIRN_AGENT_CONTAINER_SLOTS=2`), on a real Docker Engine: the others
//! wait their turn in the host's queue, say so to their users (`waiting for the
//! host (N ahead)` as the instance's detail), the host reports its queue in
//! heartbeats, and every launch ends running — none fails for waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::json;

use cairn_tests::cluster::{Agent, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

const LAUNCHES_PER_USER: usize = 6;
const USERS: [&str; 3] = ["ada", "grace", "edsger"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_waits_its_turn_in_the_hosts_queue_and_every_launch_runs() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let mut agent = Agent::new(tmp.path(), "queue-host");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    agent.start_with_env(&[("CAIRN_AGENT_CONTAINER_SLOTS", std::ffi::OsStr::new("2"))]);
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    let mut cleanup = InstanceContainers::default();

    ctl.blueprint(json!({
        "name": "class", "image": image, "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 16, "cpus": 0.01, "max_instances_per_user": LAUNCHES_PER_USER,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    }))
    .await;
    let mut tokens = vec![];
    for u in USERS {
        tokens.push(ctl.user(u, "user").await);
    }

    // All the launches at once.
    let started = Instant::now();
    let ctl_ref = &ctl;
    let launches = tokens
        .iter()
        .flat_map(|t| (0..LAUNCHES_PER_USER).map(move |_| ctl_ref.launch(t, "class")));
    let ids: Vec<String> = futures::future::join_all(launches).await;
    cleanup.0.extend(ids.iter().cloned());
    let total = USERS.len() * LAUNCHES_PER_USER;
    assert_eq!(ids.len(), total);

    // Watch them start: the admin's list and the host's view, until all run.
    // Instances seen waiting, with the first detail each showed.
    let mut waiting_seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut queue_seen = 0u64;
    loop {
        let (status, list) = ctl.get("/api/v1/instances?all=true").await;
        assert_eq!(status, 200, "{list}");
        let mut running = 0;
        for i in list.as_array().unwrap() {
            let reason = i["state_reason"].as_str().unwrap_or_default();
            match i["state"].as_str().unwrap() {
                "running" => running += 1,
                "failed" => panic!("instance {} failed: {reason}", i["id"]),
                "preparing" if reason.starts_with("waiting for the host (") => {
                    let id = i["id"].as_str().unwrap_or_default().to_string();
                    waiting_seen.entry(id).or_insert_with(|| reason.to_string());
                }
                _ => {}
            }
        }
        let (_, h) = ctl.get(&format!("/api/v1/hosts/{host}")).await;
        queue_seen = queue_seen.max(h["launch_queue"].as_u64().unwrap_or(0));
        if running == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{running} of {total} running after {:?}: {list:#}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{total} running after {:?}; {} seen waiting (e.g. {:?}); longest queue reported: {queue_seen}",
        started.elapsed(),
        waiting_seen.len(),
        waiting_seen.values().next()
    );
    assert!(
        !waiting_seen.is_empty(),
        "no instance was seen waiting for the host"
    );
    assert!(
        queue_seen > 0,
        "the host never reported launches waiting in its queue"
    );
    // Remove the containers before the directory goes.
    agent.kill9();
    drop(cleanup);
}
