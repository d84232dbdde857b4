//! The scheduler and the host pool with two real agents on a real Docker Engine:
//! bin-packing fills one host up to its instance cap before the next, spreading
//! alternates, a draining host takes nothing new and becomes drained when its last
//! instance stops, and a host whose launches keep failing (a misconfigured OCI
//! runtime) is quarantined after three failures while launches succeed elsewhere.
//! The autoscaler, with the static provider, drains one of two idle hosts and opens
//! it again when a launch uses up the other's room.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{Agent, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

const WAIT: Duration = Duration::from_secs(60);

async fn host_of(ctl: &Controller, token: &str, id: &str) -> String {
    let body = ctl.instance(token, id).await;
    body["host"].as_str().unwrap_or_default().to_string()
}

async fn standing(ctl: &Controller, host: &str) -> Value {
    ctl.get(&format!("/api/v1/hosts/{host}")).await.1["pool"].clone()
}

/// A started controller whose `default` pool has `rules` (TOML lines).
async fn controller_with_pool(root: &Path, rules: &str) -> Controller {
    let mut ctl = Controller::init(root, &ControllerOptions::default());
    let cfg = ctl.dir.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("pools = []\n", "");
    text.push_str(&format!("\n[[pools]]\nname = \"default\"\n{rules}\n"));
    std::fs::write(&cfg, text).unwrap();
    ctl.start().await;
    ctl
}

/// Two agents, `alpha` and `beta`, joined and active; their handles and host ids.
async fn two_agents(ctl: &Controller, root: &Path) -> (Agent, Agent, String, String) {
    let mut alpha = Agent::new(root, "alpha");
    let mut beta = Agent::new(root, "beta");
    let a = alpha.join_ok(ctl, &ctl.token("5m", 1), &[]);
    let b = beta.join_ok(ctl, &ctl.token("5m", 1), &[]);
    alpha.start();
    beta.start();
    ctl.wait_host_state(&a, "active", Duration::from_secs(20))
        .await;
    ctl.wait_host_state(&b, "active", Duration::from_secs(20))
        .await;
    (alpha, beta, a, b)
}

/// A small web server blueprint.
fn web(image: &str, name: &str, strategy: Option<&str>, cpus: f64) -> Value {
    json!({
        "name": name, "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 32,
        "cpus": cpus, "max_instances_per_user": 10, "strategy": strategy,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_spread_drain_and_quarantine_with_two_agents() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller_with_pool(tmp.path(), "max_instances_per_host = 2").await;
    let (_alpha, mut beta, a, b) = two_agents(&ctl, tmp.path()).await;
    let web = |name: &str, strategy: Option<&str>| web(&image, name, strategy, 0.1);
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

/// The autoscaler's decisions as `GET /api/v1/autoscaler` lists them, oldest first,
/// without the "short" notes: before the agents join, the static pool is below its
/// minimum and says plainly that it cannot create hosts (checked here).
async fn decisions(ctl: &Controller) -> Vec<Value> {
    let (status, body) = ctl.get("/api/v1/autoscaler").await;
    assert_eq!(status, 200, "{body}");
    let mut list = body["decisions"].as_array().cloned().unwrap();
    list.reverse();
    list.retain(|d| {
        if d["action"] != "short" {
            return true;
        }
        assert!(
            d["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("a static pool cannot create hosts; join more with")),
            "{d:#}"
        );
        false
    });
    list
}

/// Waits for the autoscaler's `n`-th decision (1-based) and returns it; it runs a pass
/// every 10 s.
async fn nth_decision(ctl: &Controller, n: usize) -> Value {
    cairn_tests::cluster::wait_for(
        "an autoscaler decision",
        Duration::from_secs(45),
        || async { decisions(ctl).await.len() >= n },
    )
    .await;
    decisions(ctl).await[n - 1].clone()
}

/// How many instances of the pool's typical size (64 MiB, 1 CPU) fit in a host's
/// whole capacity, as the autoscaler counts room.
fn typical_fits(host: &Value) -> u64 {
    let c = &host["capacity"];
    let by_mem = c["memory_total_bytes"].as_u64().unwrap() / (64 << 20);
    by_mem.min(c["cpus"].as_u64().unwrap())
}

/// The autoscaler end to end with the static provider: of two idle hosts it drains
/// one (the other is room enough for the headroom), and when a launch takes all of
/// the open host's CPU it opens the drained host again. Each decision is in the
/// decision list with its reason and outcome, and in the host's pool state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_drains_an_idle_host_and_reopens_it_when_room_runs_out() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller_with_pool(
        tmp.path(),
        "min_hosts = 1\nheadroom_instances = 1\ntypical_memory_mib = 64\ntypical_cpus = 1.0\nidle_cooldown_secs = 0",
    )
    .await;
    let (_alpha, _beta, a, b) = two_agents(&ctl, tmp.path()).await;

    // Scale-down: one idle host is drained, and being empty it is drained at once.
    let drain = nth_decision(&ctl, 1).await;
    assert_eq!(drain["action"], "drain", "{drain:#}");
    assert_eq!(drain["pool"], "default", "{drain:#}");
    assert_eq!(drain["outcome"], "ok", "{drain:#}");
    let idle = drain["host"].as_str().unwrap().to_string();
    assert!(idle == a || idle == b, "{drain:#}");
    let open = if idle == a { b.clone() } else { a.clone() };
    let (_, open_host) = ctl.get(&format!("/api/v1/hosts/{open}")).await;
    let reason = drain["reason"].as_str().unwrap();
    let left = typical_fits(&open_host);
    assert!(
        reason.starts_with("idle for ")
            && reason.ends_with(&format!(
                " s (cooldown 0 s) with room for {left} more elsewhere"
            )),
        "{drain:#}"
    );
    cairn_tests::cluster::wait_for("the idle host drained", WAIT, || async {
        standing(&ctl, &idle).await["standing"]["state"] == "drained"
    })
    .await;
    assert_eq!(standing(&ctl, &open).await["standing"]["state"], "open");
    // One idle host is the minimum: nothing more is drained.
    assert_eq!(decisions(&ctl).await.len(), 1);

    // A launch that takes every CPU of the open host leaves no room for the headroom:
    // the drained host is opened again.
    let cpus = open_host["capacity"]["cpus"].as_u64().unwrap();
    ctl.blueprint(web(&image, "whole", None, cpus as f64)).await;
    let alice = ctl.user("alice", "user").await;
    let id = ctl.launch(&alice, "whole").await;
    let _cleanup = InstanceContainers(vec![id.clone()]);
    let running = ctl.wait_instance(&alice, &id, "running", WAIT).await;
    assert_eq!(running["host"], open.as_str(), "{running:#}");
    let undrain = nth_decision(&ctl, 2).await;
    assert_eq!(undrain["action"], "undrain", "{undrain:#}");
    assert_eq!(undrain["host"], idle.as_str(), "{undrain:#}");
    assert_eq!(undrain["outcome"], "ok", "{undrain:#}");
    assert_eq!(
        undrain["reason"],
        "0 request(s) waiting, room for 0 more of the typical size, headroom target 1",
        "{undrain:#}"
    );
    assert_eq!(standing(&ctl, &idle).await["standing"]["state"], "open");
    ctl.stop_instance(&alice, &id, WAIT).await;
}
