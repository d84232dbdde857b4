//! The scheduler and the host pool with two real agents on a real Docker Engine:
//! bin-packing fills one host up to its instance cap before the next, spreading
//! alternates, a draining host takes nothing new and becomes drained when its last
//! instance stops, and a host whose launches keep failing (a misconfigured OCI
//! runtime) is quarantined after three failures while launches succeed elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{Agent, Controller, ControllerOptions};
use cairn_tests::docker::{require_docker, InstanceContainers};
use cairn_tests::images::busybox_image;

const WAIT: Duration = Duration::from_secs(60);

async fn host_of(ctl: &Controller, token: &str, id: &str) -> String {
    let body = ctl.instance(token, id).await;
    body["host"].as_str().unwrap_or_default().to_string()
}

async fn standing(ctl: &Controller, host: &str) -> Value {
    ctl.get(&format!("/api/v1/hosts/{host}")).await.1["pool"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_spread_drain_and_quarantine_with_two_agents() {
    if !require_docker() {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    let cfg = ctl.dir.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("pools = []\n", "");
    text.push_str("\n[[pools]]\nname = \"default\"\nmax_instances_per_host = 2\n");
    std::fs::write(&cfg, text).unwrap();
    ctl.start().await;
    let mut alpha = Agent::new(tmp.path(), "alpha");
    let mut beta = Agent::new(tmp.path(), "beta");
    let a = alpha.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    let b = beta.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    alpha.start();
    beta.start();
    ctl.wait_host_state(&a, "active", Duration::from_secs(20))
        .await;
    ctl.wait_host_state(&b, "active", Duration::from_secs(20))
        .await;
    let web = |name: &str, strategy: Option<&str>| {
        json!({
            "name": name, "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 32,
            "cpus": 0.1, "max_instances_per_user": 10, "strategy": strategy,
            "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
        })
    };
    for (name, strategy) in [("packed", None), ("spread", Some("spread"))] {
        ctl.blueprint(web(name, strategy)).await;
    }
    let alice = ctl.user("alice", "user").await;
    let mut cleanup = InstanceContainers::default();
    let launch = |bp: &'static str| {
        let (ctl, alice) = (&ctl, alice.clone());
        async move {
            let id = ctl.launch(&alice, bp).await;
            ctl.wait_instance(&alice, &id, "running", WAIT).await;
            id
        }
    };

    // Bin-pack: two on one host (its cap), the third on the other.
    let mut packed = vec![];
    for _ in 0..3 {
        let id = launch("packed").await;
        cleanup.0.push(id.clone());
        packed.push((id.clone(), host_of(&ctl, &alice, &id).await));
    }
    assert_eq!(packed[0].1, packed[1].1, "bin-pack split the first two");
    assert_ne!(packed[2].1, packed[0].1, "the third went over the cap");
    for (id, _) in &packed {
        ctl.stop_instance(&alice, id, WAIT).await;
    }

    // Spread: alternates.
    let mut spread = vec![];
    for _ in 0..2 {
        let id = launch("spread").await;
        cleanup.0.push(id.clone());
        spread.push((id.clone(), host_of(&ctl, &alice, &id).await));
    }
    assert_ne!(spread[0].1, spread[1].1, "spread put both on one host");
    for (id, _) in &spread {
        ctl.stop_instance(&alice, id, WAIT).await;
    }

    // Drain a host with an instance on it: nothing new goes there; it becomes
    // drained when the instance stops; undrain opens it again.
    let first = launch("packed").await;
    cleanup.0.push(first.clone());
    let busy = host_of(&ctl, &alice, &first).await;
    // Bad requests change nothing and say why.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/hosts/{busy}/drain", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .body("{\"deadline_secs\": \"soon\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_request", "{err}");
    let (status, _) = ctl
        .send(Method::POST, "/api/v1/hosts/h-00000000000000ff/drain", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(standing(&ctl, &busy).await["standing"]["state"], "open");
    let (status, body) = ctl
        .send(Method::POST, &format!("/api/v1/hosts/{busy}/drain"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pool"]["standing"]["state"], "draining");
    let second = launch("packed").await;
    cleanup.0.push(second.clone());
    assert_ne!(host_of(&ctl, &alice, &second).await, busy);
    let (status, body) = ctl
        .send(Method::DELETE, &format!("/api/v1/hosts/{busy}"), None)
        .await;
    assert_eq!(status, 409, "removing a draining host: {body}");
    ctl.stop_instance(&alice, &first, WAIT).await;
    cairn_tests::cluster::wait_for("the host to be drained", WAIT, || async {
        standing(&ctl, &busy).await["standing"]["state"] == "drained"
    })
    .await;
    let (status, _) = ctl
        .send(Method::POST, &format!("/api/v1/hosts/{busy}/undrain"), None)
        .await;
    assert_eq!(status, 200);
    ctl.stop_instance(&alice, &second, WAIT).await;

    // Break beta: an OCI runtime Docker does not have. Fill alpha to its cap so the
    // next launches go to beta and fail; after three, beta is quarantined.
    beta.kill9();
    let toml = beta.state_dir.join("agent.toml");
    // At the top: after a table header the key would belong to that table.
    let conf = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!("oci_runtime = \"cairn-no-such-runtime\"\n{conf}"),
    )
    .unwrap();
    beta.start();
    cairn_tests::cluster::wait_for("beta to reconnect", WAIT, || async {
        let h = ctl.get(&format!("/api/v1/hosts/{b}")).await.1;
        h["state"] == "active" && h["connected"] == true
    })
    .await;
    let mut on_alpha = vec![];
    let mut failures = 0;
    while on_alpha.len() < 2 {
        let id = ctl.launch(&alice, "packed").await;
        cleanup.0.push(id.clone());
        let body = ctl
            .wait_instance_any(&alice, &id, &["running", "failed"], WAIT)
            .await;
        if body["host"] == a.as_str() && body["state"] == "running" {
            on_alpha.push(id);
        } else {
            assert_eq!(body["host"], b.as_str(), "{body:#}");
            assert_eq!(body["state"], "failed", "{body:#}");
            failures += 1;
        }
    }
    while standing(&ctl, &b).await["standing"]["state"] != "quarantined" {
        let id = ctl.launch(&alice, "packed").await;
        cleanup.0.push(id.clone());
        let body = ctl.wait_instance(&alice, &id, "failed", WAIT).await;
        assert_eq!(body["host"], b.as_str());
        assert!(
            body["state_reason"]
                .as_str()
                .unwrap_or_default()
                .contains("runtime"),
            "{body:#}"
        );
        failures += 1;
        assert!(
            failures <= 3,
            "beta not quarantined after {failures} failures"
        );
    }
    assert_eq!(failures, 3);
    let pool = standing(&ctl, &b).await;
    assert_eq!(pool["consecutive_failures"], 3);
    // With alpha full and beta quarantined, a launch waits; when alpha has room it
    // runs there.
    let waiting = ctl.launch(&alice, "packed").await;
    cleanup.0.push(waiting.clone());
    let body = ctl.instance(&alice, &waiting).await;
    assert_eq!(body["state"], "queued", "{body:#}");
    assert_eq!(body["queue_position"], 1);
    // Admins see what the queue waits for.
    let (status, scaler) = ctl.get("/api/v1/autoscaler").await;
    assert_eq!(status, 200);
    assert_eq!(scaler["waiting"]["default"]["waiting"], 1, "{scaler:#}");
    assert!(scaler["decisions"].is_array());
    assert_eq!(
        ctl.get_with("/api/v1/autoscaler", Some(&alice)).await.0,
        403
    );
    ctl.stop_instance(&alice, &on_alpha[0], WAIT).await;
    let body = ctl.wait_instance(&alice, &waiting, "running", WAIT).await;
    assert_eq!(body["host"], a.as_str());
}
