//! Instances end to end on a real Docker Engine: launch → running → the app answers
//! on the container's address → stop → container gone; limits, authorisation, logs,
//! resource limits, OOM and bad images.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{controller_with_agent, wait_for};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

fn inspect(container: &str) -> Option<Value> {
    let out = std::process::Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_run_answer_stop_and_the_rules_around_it() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, mut agent, host) = controller_with_agent(tmp.path(), "docker-host").await;
    let mut cleanup = InstanceContainers(vec![]);

    let web = json!({
        "name": "web", "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 64, "cpus": 0.5,
        "command": ["sh", "-c", "echo cairn-started; mkdir -p /www && echo hello-cairn > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "env": {"GREETING": "hi"}
    });
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(web))
            .await
            .0,
        201
    );
    let alice = ctl.user("alice", "user").await;
    let bob = ctl.user("bob", "user").await;

    // Launch and reach running, through every state.
    let (status, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "web"})),
        )
        .await;
    assert_eq!(status, 201, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    cleanup.0.push(id.clone());
    let running = ctl
        .wait_instance(&alice, &id, "running", Duration::from_secs(60))
        .await;
    let states: Vec<&str> = running["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        vec!["queued", "scheduled", "preparing", "starting", "running"]
    );
    let times: Vec<u64> = running["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["at_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(running["host"], host.as_str());
    assert!(running["time_left_secs"].as_u64().unwrap() > 3500);

    // The app answers on the container's address.
    let addr = running["address"].as_str().unwrap();
    let page = reqwest::get(format!("http://{addr}/index.html"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page.trim(), "hello-cairn");

    // Limits, labels and isolation settings are really applied.
    let c = inspect(&format!("cairn-{id}")).expect("container exists");
    assert_eq!(c["HostConfig"]["Memory"], 64 * 1024 * 1024);
    assert_eq!(c["HostConfig"]["MemorySwap"], 64 * 1024 * 1024);
    assert_eq!(c["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(c["HostConfig"]["NetworkMode"], "cairn");
    assert!(
        c["HostConfig"]["PortBindings"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "no published ports: {}",
        c["HostConfig"]["PortBindings"]
    );
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["cairn.instance"], id.as_str());
    assert_eq!(labels["cairn.owner"], "alice");
    assert_eq!(labels["cairn.blueprint"], "web");
    assert_eq!(labels["cairn.revision"], "1");
    let env: Vec<&str> = c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GREETING=hi"));
    assert!(env.contains(&format!("CAIRN_BASE_URL=/i/{id}/").as_str()));

    // Logs come from the agent.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/instances/{id}/logs?tail=10", ctl.api))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("cairn-started"));

    // Bob sees nothing of it: 404, not 403.
    for (m, p) in [
        (Method::GET, format!("/api/v1/instances/{id}")),
        (Method::GET, format!("/api/v1/instances/{id}/logs")),
        (Method::DELETE, format!("/api/v1/instances/{id}")),
    ] {
        let (status, body) = ctl.request(Some(&bob), m.clone(), &p, None).await;
        assert_eq!(status, 404, "{m} {p}: {body}");
    }
    assert_eq!(
        ctl.request(Some(&bob), Method::GET, "/api/v1/instances", None)
            .await
            .1,
        json!([])
    );
    // Admins see all.
    let (_, all) = ctl
        .send(Method::GET, "/api/v1/instances?all=true", None)
        .await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    // Over the per-blueprint limit: 409.
    let (status, body) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "web"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("limit_reached")),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit is 1"));

    // Stop: stopping → stopped, container gone; stopping again is harmless.
    let (status, _) = ctl
        .request(
            Some(&alice),
            Method::DELETE,
            &format!("/api/v1/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let stopped = ctl
        .wait_instance(&alice, &id, "stopped", Duration::from_secs(30))
        .await;
    let states: Vec<&str> = stopped["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(&states[4..], &["running", "stopping", "stopped"]);
    assert_eq!(stopped["state_reason"], "stopped by alice");
    wait_for("container removed", Duration::from_secs(10), || {
        let name = format!("cairn-{id}");
        async move { inspect(&name).is_none() }
    })
    .await;
    let (status, again) = ctl
        .request(
            Some(&alice),
            Method::DELETE,
            &format!("/api/v1/instances/{id}"),
            None,
        )
        .await;
    assert_eq!((status, again["state"].as_str()), (202, Some("stopped")));

    // An unknown image fails with Docker's words.
    let bad = json!({"name": "ghost", "image": "cairn-test/does-not-exist:1", "pull": "never", "app": "http", "app_port": 80, "memory_mib": 32});
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(bad))
            .await
            .0,
        201
    );
    let (_, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "ghost"})),
        )
        .await;
    let gid = inst["id"].as_str().unwrap().to_string();
    cleanup.0.push(gid.clone());
    let failed = ctl
        .wait_instance(&alice, &gid, "failed", Duration::from_secs(30))
        .await;
    let reason = failed["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("No such image") || reason.contains("not on this host"),
        "{reason}"
    );

    // A workload over its memory limit is OOM-killed and says so.
    let hog = json!({"name": "hog", "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 32,
                     "command": ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]});
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(hog))
            .await
            .0,
        201
    );
    let (_, inst) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": "hog"})),
        )
        .await;
    let hid = inst["id"].as_str().unwrap().to_string();
    cleanup.0.push(hid.clone());
    let failed = ctl
        .wait_instance(&alice, &hid, "failed", Duration::from_secs(60))
        .await;
    assert!(
        failed["state_reason"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{failed:#}"
    );
    // Failed instances' containers are cleaned up.
    wait_for("failed containers removed", Duration::from_secs(15), || {
        let names = [format!("cairn-{gid}"), format!("cairn-{hid}")];
        async move { names.iter().all(|n| inspect(n).is_none()) }
    })
    .await;
    agent.kill9();
}
