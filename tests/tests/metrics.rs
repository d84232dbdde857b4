//! Prometheus metrics end to end on a real Docker Engine: a controller and an agent
//! serving `--metrics-listen`, one launch to running and one proxied request, then
//! the controller's `/metrics` (admins only) and the agent's tell what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{json, Value};

use cairn_tests::cluster::{free_tcp_port, wait_for, Agent, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

/// The value of the series `series` (its name and labels as rendered) in a
/// Prometheus text exposition.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// GET `url` with an optional bearer token: status, content type, body.
async fn scrape(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /metrics");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ctype, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_the_hosts_and_the_agent_show_in_the_metrics() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    // The agent's metrics endpoint, through its environment variable (the
    // harness starts agents with extra environment, not extra arguments).
    let agent_metrics = format!("127.0.0.1:{}", free_tcp_port());
    let mut agent = Agent::new(tmp.path(), "metrics-host");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    agent.start_with_env(&[(
        "CAIRN_AGENT_METRICS_LISTEN",
        OsStr::new(agent_metrics.as_str()),
    )]);
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    let mut cleanup = InstanceContainers(vec![]);

    let url = format!("{}/metrics", ctl.api);
    // Nobody, a bad token and a user are refused with the API's JSON errors.
    let (status, _, body) = scrape(&url, None).await;
    assert_eq!(status, 401, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "unauthenticated", "{body}");
    let (status, _, body) = scrape(&url, Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let alice = ctl.user("alice", "user").await;
    let (status, _, body) = scrape(&url, Some(&alice)).await;
    assert_eq!(status, 403, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "forbidden", "{body}");

    // One launch to running, and one request through the proxy.
    ctl.blueprint(json!({
        "name": "web", "image": image, "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 64, "cpus": 0.5,
        "command": ["sh", "-c", "mkdir -p /www && echo hello-metrics > /www/index.html && exec httpd -f -p 8080 -h /www"]
    }))
    .await;
    let id = ctl.launch(&alice, "web").await;
    cleanup.0.push(id.clone());
    ctl.wait_instance(&alice, &id, "running", Duration::from_secs(60))
        .await;
    let page = reqwest::Client::new()
        .get(format!("{}/i/{id}/index.html", ctl.api))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap().trim(), "hello-metrics");

    let (status, ctype, text) = scrape(&url, Some(&ctl.admin_token)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, "text/plain; version=0.0.4");
    assert!(
        text.contains("# TYPE cairn_launches_total counter"),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_launches_total{outcome="accepted"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_launches_total{outcome="running"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_launches_total{outcome="failed"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE cairn_launch_to_running_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        value(&text, "cairn_launch_to_running_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_launch_to_running_seconds_bucket{le="+Inf"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "cairn_launch_queue_length"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_hosts{state="active",standing="open"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_hosts{state="unreachable",standing="open"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_instances{state="running"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"cairn_instances{state="queued"}"#),
        Some(0.0),
        "{text}"
    );
    // The store times its own commits: a launch and its transitions made some.
    assert!(
        value(&text, "cairn_store_commit_seconds_count").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE cairn_store_commit_seconds histogram"),
        "{text}"
    );
    // The tick times itself: it ran while the instance launched.
    assert!(
        value(&text, "cairn_tick_seconds_count").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"cairn_tick_seconds_bucket{le="0.0001"}"#),
        "{text}"
    );
    assert!(
        value(&text, "cairn_proxy_requests_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, r#"cairn_proxy_bytes_total{direction="down"}"#).unwrap_or(0.0)
            > "hello-metrics".len() as f64,
        "{text}"
    );
    assert!(
        value(&text, r#"cairn_proxy_bytes_total{direction="up"}"#).unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(value(&text, "cairn_proxy_open_tunnels").is_some(), "{text}");
    assert!(
        value(&text, "cairn_image_pulls_in_flight").is_some(),
        "{text}"
    );

    // The agent's endpoint: the link is up and the container is counted once a
    // reconcile pass has listed it.
    let agent_url = format!("http://{agent_metrics}/metrics");
    wait_for("the agent's metrics", Duration::from_secs(20), || {
        let agent_url = agent_url.clone();
        async move {
            let (_, _, text) = scrape(&agent_url, None).await;
            value(&text, "cairn_agent_link_up") == Some(1.0)
                && value(&text, r#"cairn_agent_containers{state="running"}"#)
                    .is_some_and(|n| n >= 1.0)
        }
    })
    .await;
    let (_, ctype, agent_text) = scrape(&agent_url, None).await;
    assert_eq!(ctype, "text/plain; version=0.0.4");
    assert!(
        agent_text.contains("# TYPE cairn_agent_container_ops_seconds histogram"),
        "{agent_text}"
    );
    assert_eq!(
        value(
            &agent_text,
            r#"cairn_agent_container_ops_seconds_count{op="create",outcome="ok"}"#
        ),
        Some(1.0),
        "{agent_text}"
    );
    assert_eq!(
        value(
            &agent_text,
            r#"cairn_agent_container_ops_seconds_count{op="start",outcome="ok"}"#
        ),
        Some(1.0),
        "{agent_text}"
    );
    assert_eq!(
        value(&agent_text, "cairn_agent_image_pulls_in_flight"),
        Some(0.0),
        "{agent_text}"
    );
    // Nothing else is served there.
    let (status, _, _) = scrape(&format!("http://{agent_metrics}/"), None).await;
    assert_eq!(status, 404);

    // The instance stopped, the agent's gauge follows.
    ctl.stop_instance(&alice, &id, Duration::from_secs(60))
        .await;
    wait_for("no running container", Duration::from_secs(20), || {
        let agent_url = agent_url.clone();
        async move {
            let (_, _, text) = scrape(&agent_url, None).await;
            value(&text, r#"cairn_agent_containers{state="running"}"#) == Some(0.0)
        }
    })
    .await;
    let (_, _, text) = scrape(&url, Some(&ctl.admin_token)).await;
    assert_eq!(
        value(&text, r#"cairn_instances{state="running"}"#),
        Some(0.0),
        "{text}"
    );
    agent.kill9();
}
