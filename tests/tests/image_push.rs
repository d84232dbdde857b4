//! Registry-free images: `cairn images push` of a `docker save` archive, a blueprint
//! naming the pushed tag, and two agents that each fetch the archive from the
//! controller over the QUIC link, verify it, load it into Docker and run it.
//!
//! Both agents share this machine's Docker Engine, so the test removes the image
//! between the two launches: each agent has to fetch and load it itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::{Command, Output};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use cairn_tests::cluster::{bin, Agent, Controller, ControllerOptions};
use cairn_tests::docker::docker;
use cairn_tests::images::image_exists;
use cairn_tests::registry::{unique_http_image, HTTP_PORT};
use cairn_tests::require::{require, Need};

const WAIT: Duration = Duration::from_secs(90);

fn cairn(ctl: &Controller, args: &[&str]) -> Output {
    Command::new(bin("cairn"))
        .args(args)
        .env("CAIRN_URL", &ctl.api)
        .env("CAIRN_TOKEN", &ctl.admin_token)
        .env("CAIRN_CONFIG", ctl.dir.join("no-cli-config.toml"))
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("run cairn")
}

async fn start(ctl: &Controller, root: &std::path::Path, name: &str, site: &str) -> Agent {
    let mut agent = Agent::new(root, name);
    let host = agent.join_ok(
        ctl,
        &ctl.token("5m", 1),
        &["--label", &format!("site={site}")],
    );
    agent.start();
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_reaches_two_agents_over_the_link_and_runs() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tag = unique_http_image("cairn-test/pushed-course:1", 4 * 1024 * 1024);
    let image_id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    let archive = tmp.path().join("course.tar");
    docker(&["save", "-o", archive.to_str().unwrap(), &tag]);
    docker(&["rmi", &tag]);
    assert!(!image_exists(&tag));

    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let alpha = start(&ctl, tmp.path(), "alpha", "a").await;
    let beta = start(&ctl, tmp.path(), "beta", "b").await;

    let out = cairn(&ctl, &["images", "push", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "push: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&image_id[..19]),
        "shows the image id: {printed}"
    );
    assert!(printed.contains(&tag), "and the tag to use: {printed}");

    for site in ["a", "b"] {
        let bp = ctl
            .blueprint(json!({
                "name": format!("course-{site}"), "image": tag, "app": "http",
                "app_port": HTTP_PORT, "memory_mib": 32, "prepull": "none",
                "placement": {"site": site},
            }))
            .await;
        assert_eq!(bp["resolved"]["reference"], image_id.as_str(), "{bp:#}");
        assert!(
            bp["resolved"]["source"]["Controller"]["archive"].is_string(),
            "{bp:#}"
        );
    }

    let token = ctl.admin_token.clone();
    for (site, agent) in [("a", &alpha), ("b", &beta)] {
        let id = ctl.launch(&token, &format!("course-{site}")).await;
        let running = ctl.wait_instance(&token, &id, "running", WAIT).await;
        let host = running["host"].as_str().unwrap();
        assert_eq!(host, agent.host_id(), "placed by label");
        let image = docker(&["inspect", "--format", "{{.Image}}", &format!("cairn-{id}")]);
        assert_eq!(image, image_id, "runs the pushed image");
        let log = agent.log_text();
        assert!(
            log.contains("image ready") && log.contains(&image_id),
            "agent {site} fetched and loaded the archive itself:\n{log}"
        );
        // As chunks, not as one stream of bytes.
        assert!(
            log.contains("image archive chunks in place"),
            "agent {site} fetched the archive as chunks:\n{log}"
        );
        let (status, body) = ctl
            .request(
                Some(&token),
                Method::DELETE,
                &format!("/api/v1/instances/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ctl.wait_instance(&token, &id, "stopped", WAIT).await;
        // Gone from the shared engine, so the next agent has to fetch it too.
        docker(&["rmi", &image_id]);
    }
}
