//! Images from a real registry (Debian's `docker-registry` on loopback) reaching
//! real agents: pre-pull warms a new host before anyone launches, an on-demand pull
//! shows its progress and is shared by concurrent launches, and a registry outage
//! fails a launch with a readable reason after retries, with the next launch working
//! once the registry is back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use cairn_tests::cluster::{controller_with_agent, start_agent, Controller, ControllerOptions};
use cairn_tests::docker::docker;
use cairn_tests::registry::{forget_pulled, unique_http_image, Registry, HTTP_PORT};
use cairn_tests::require::{require, Need};

const WAIT: Duration = Duration::from_secs(120);
const MIB: usize = 1024 * 1024;

fn blueprint(name: &str, image: &str, prepull: &str) -> Value {
    json!({
        "name": name, "image": image, "app": "http", "app_port": HTTP_PORT,
        "memory_mib": 32, "cpus": 0.2, "max_instances_per_user": 2, "prepull": prepull,
    })
}

async fn host_pulls(ctl: &Controller, host: &str) -> Vec<Value> {
    let (_, h) = ctl.get(&format!("/api/v1/hosts/{host}")).await;
    h["pulls"].as_array().cloned().unwrap_or_default()
}

/// What the instance's `preparing` step said, over its history and now.
fn preparing_reasons(inst: &Value) -> Vec<String> {
    let mut out: Vec<String> = inst["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["state"] == "preparing")
        .filter_map(|t| t["reason"].as_str().map(str::to_string))
        .collect();
    if inst["state"] == "preparing" {
        if let Some(r) = inst["state_reason"].as_str() {
            out.push(r.to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepull_warms_a_new_host_before_any_launch() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "registry");
    // Big enough that the pull spans several heartbeats, so its progress is seen.
    let local = unique_http_image("cairn-test/prepull-big:1", 160 * MIB);
    let digest = reg.publish(&local, "course/big:1");
    let reference = format!("{}/course/big@{digest}", reg.host());

    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let bp = ctl
        .blueprint(blueprint(
            "big",
            &format!("{}/course/big:1", reg.host()),
            "all",
        ))
        .await;
    assert_eq!(bp["resolved"]["reference"], reference.as_str(), "{bp:#}");

    // A new host joins: it pulls the image by itself, reporting progress.
    let agent = start_agent(&ctl, tmp.path(), "fresh").await;
    let host = agent.host_id();
    let start = Instant::now();
    let mut seen_progress = None;
    while !ctl.host_image_digests(&host).await.contains(&reference) {
        for p in host_pulls(&ctl, &host).await {
            let known = p["bytes_total"].as_u64().unwrap_or(0) > 0
                || p["layers_total"].as_u64().unwrap_or(0) > 0;
            if p["reference"] == reference.as_str() && p["prepull"] == true && known {
                seen_progress = Some(p);
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "the host did not pre-pull {reference}: {:#?}",
            host_pulls(&ctl, &host).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = seen_progress.expect("heartbeats showed the pre-pull's progress");
    assert!(p["layers_total"].as_u64().unwrap() >= 1, "{p:#}");
    let (_, all) = ctl.get("/api/v1/instances?all=true").await;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(0),
        "no launch was needed: {all:#}"
    );

    // The launch finds the image there: nothing to pull.
    let id = ctl.launch(&ctl.admin_token, "big").await;
    let running = ctl
        .wait_instance(&ctl.admin_token, &id, "running", WAIT)
        .await;
    let reasons = preparing_reasons(&running);
    assert!(
        reasons.iter().all(|r| !r.contains("pulling")),
        "a warm host pulls nothing at launch: {reasons:?}"
    );
    let image = docker(&[
        "inspect",
        "--format",
        "{{.Config.Image}}",
        &format!("cairn-{id}"),
    ]);
    assert_eq!(image.trim(), reference, "the container runs the digest");
    ctl.stop_instance(&ctl.admin_token, &id, WAIT).await;
    drop(agent);
    forget_pulled(&reg.host());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_pull_shows_progress_and_is_shared_by_concurrent_launches() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "registry");
    let local = unique_http_image("cairn-test/ondemand:1", 160 * MIB);
    let digest = reg.publish(&local, "course/lab:1");
    let reference = format!("{}/course/lab@{digest}", reg.host());
    let (ctl, agent, _host) = controller_with_agent(tmp.path(), "solo").await;
    ctl.blueprint(blueprint(
        "lab",
        &format!("{}/course/lab:1", reg.host()),
        "none",
    ))
    .await;

    let token = ctl.admin_token.clone();
    let (a, b) = tokio::join!(ctl.launch(&token, "lab"), ctl.launch(&token, "lab"));
    let mut reasons = vec![];
    let start = Instant::now();
    loop {
        let (ia, ib) = (
            ctl.instance(&token, &a).await,
            ctl.instance(&token, &b).await,
        );
        for i in [&ia, &ib] {
            assert_ne!(i["state"], "failed", "{i:#}");
            reasons.extend(preparing_reasons(i));
        }
        if ia["state"] == "running" && ib["state"] == "running" {
            break;
        }
        assert!(start.elapsed() < WAIT, "not running: {ia:#} {ib:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("pulling") && r.ends_with('%')),
        "the instances showed pull progress: {reasons:?}"
    );
    let log = agent.log_text();
    let pulls = log
        .lines()
        .filter(|l| l.contains("image pull started") && l.contains(&reference))
        .count();
    assert_eq!(pulls, 1, "two launches, one pull:\n{log}");
    for id in [&a, &b] {
        ctl.stop_instance(&token, id, WAIT).await;
    }
    drop(agent);
    forget_pulled(&reg.host());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_fails_the_launch_readably_then_recovers() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(tmp.path(), "registry");
    let local = unique_http_image("cairn-test/outage:1", MIB);
    reg.publish(&local, "course/outage:1");
    let (ctl, agent, _host) = controller_with_agent(tmp.path(), "solo").await;
    ctl.blueprint(blueprint(
        "outage",
        &format!("{}/course/outage:1", reg.host()),
        "none",
    ))
    .await;
    let token = ctl.admin_token.clone();

    reg.stop();
    let id = ctl.launch(&token, "outage").await;
    let failed = ctl.wait_instance(&token, &id, "failed", WAIT).await;
    let reason = failed["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot pull")
            && reason.contains(&reg.host())
            && reason.contains("attempts"),
        "a reason a user can read: {failed:#}"
    );

    reg.restart();
    let again = ctl.launch(&token, "outage").await;
    ctl.wait_instance(&token, &again, "running", WAIT).await;
    ctl.stop_instance(&token, &again, WAIT).await;
    drop(agent);
    forget_pulled(&reg.host());
}
