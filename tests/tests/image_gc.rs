//! Image garbage collection on a real agent and Docker Engine, with the water marks
//! lowered so that collection always runs: images the agent pulled that no container
//! uses and no blueprint wants are removed, least recently used (here: oldest)
//! first; an image a container uses and an image still desired stay; an image the
//! agent did not bring (built on this machine) is never touched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use cairn_tests::cluster::{Agent, Controller, ControllerOptions};
use cairn_tests::docker::{docker, ContainerGuard};
use cairn_tests::images::image_exists;
use cairn_tests::registry::{forget_pulled, unique_http_image, Registry, HTTP_PORT};
use cairn_tests::require::{require, Need};

const WAIT: Duration = Duration::from_secs(90);

/// Image id → digest references, as the host reports them.
async fn host_images(ctl: &Controller, host: &str) -> Vec<(String, Vec<String>)> {
    let (_, h) = ctl.get(&format!("/api/v1/hosts/{host}")).await;
    h["runtime"]["Docker"]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let digests = i["repo_digests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect();
            (i["id"].as_str().unwrap_or_default().to_string(), digests)
        })
        .collect()
}

async fn id_of(ctl: &Controller, host: &str, reference: &str) -> Option<String> {
    host_images(ctl, host)
        .await
        .into_iter()
        .find(|(_, d)| d.iter().any(|d| d == reference))
        .map(|(id, _)| id)
}

/// Lowers the agent's water marks so that collection runs every second.
fn aggressive_gc(agent: &Agent) {
    let path = agent.state_dir.join("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace(
            "gc_high_water_percent = 85.0",
            "gc_high_water_percent = 1.0",
        )
        .replace("gc_low_water_percent = 80.0", "gc_low_water_percent = 0.0")
        .replace("gc_interval_secs = 60", "gc_interval_secs = 1");
    assert_ne!(
        changed, text,
        "agent.toml has the [images] settings:\n{text}"
    );
    std::fs::write(&path, changed).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unused_undesired_images_oldest_first_and_keeps_the_rest() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "registry");
    let mut refs = std::collections::BTreeMap::new();
    // Created a second apart, so "oldest" is well defined.
    for name in ["old", "new", "desired", "inuse"] {
        let local = unique_http_image(&format!("cairn-test/gc-{name}:1"), 1024 * 1024);
        let digest = reg.publish(&local, &format!("gc/{name}:1"));
        refs.insert(name, format!("{}/gc/{name}@{digest}", reg.host()));
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Built here, unused, never pulled by Cairn: not the agent's to remove.
    let bystander = unique_http_image("cairn-test/gc-bystander:1", 64);

    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    for name in refs.keys() {
        ctl.blueprint(json!({
            "name": name, "image": format!("{}/gc/{name}:1", reg.host()), "app": "http",
            "app_port": HTTP_PORT, "memory_mib": 32, "prepull": "all",
        }))
        .await;
    }
    // Join first, lower the marks, then start: the agent runs with them from the start.
    let mut agent = Agent::new(tmp.path(), "gc");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    aggressive_gc(&agent);
    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    let start = Instant::now();
    let mut ids = std::collections::BTreeMap::new();
    for (name, r) in &refs {
        loop {
            if let Some(id) = id_of(&ctl, &host, r).await {
                ids.insert(*name, id);
                break;
            }
            assert!(start.elapsed() < WAIT, "pre-pull of {r} did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Desired images are kept however full the disk is.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in refs.values() {
        assert!(
            id_of(&ctl, &host, r).await.is_some(),
            "{r} was desired and must stay"
        );
    }

    // A container outside Cairn uses one image; three blueprints are switched off.
    let _user = ContainerGuard("cairn-gc-foreign-user".into());
    docker(&["create", "--name", "cairn-gc-foreign-user", &refs["inuse"]]);
    for name in ["old", "new", "inuse"] {
        let (status, body) = ctl
            .send(
                Method::POST,
                &format!("/api/v1/blueprints/{name}/disable"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let start = Instant::now();
    while id_of(&ctl, &host, &refs["old"]).await.is_some()
        || id_of(&ctl, &host, &refs["new"]).await.is_some()
    {
        assert!(
            start.elapsed() < WAIT,
            "unused, undesired images were not collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        id_of(&ctl, &host, &refs["desired"]).await.is_some(),
        "desired image kept"
    );
    assert!(
        id_of(&ctl, &host, &refs["inuse"]).await.is_some(),
        "image in use kept"
    );
    assert!(
        image_exists(&bystander),
        "an image Cairn did not bring is left alone"
    );

    // Decisions are logged, oldest first.
    let log = agent.log_text();
    let removals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("image gc: removing"))
        .collect();
    let pos = |name: &str| {
        removals
            .iter()
            .position(|l| l.contains(ids[name].as_str()))
            .unwrap_or_else(|| panic!("no removal of {name} logged:\n{log}"))
    };
    assert!(
        pos("old") < pos("new"),
        "oldest first:\n{}",
        removals.join("\n")
    );
    for kept in ["desired", "inuse"] {
        assert!(
            !removals.iter().any(|l| l.contains(ids[kept].as_str())),
            "{kept} must never be chosen:\n{}",
            removals.join("\n")
        );
    }
    drop(agent);
    docker(&["rmi", &bystander]);
    forget_pulled(&reg.host());
}
