//! A real JupyterLab, launched by Cairn and used only through the controller's proxy:
//! the owner's session opens the Lab page without being asked for Jupyter's token,
//! a kernel starts, and `1+1` sent over the kernel's WebSocket comes back as `2`.
//! Another user, and the instance URL alone, open nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use serde_json::json;

use cairn_tests::cluster::controller_with_agent;
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::jupyter_image;
use cairn_tests::jupyter;
use cairn_tests::require::{require, Need};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyterlab_through_the_proxy_runs_one_plus_one() {
    if !require(&[Need::Docker, Need::Jupyter]) {
        return;
    }
    let image = jupyter_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, _host) = controller_with_agent(tmp.path(), "docker-host").await;
    let bp = json!({
        "name": "lab", "description": "JupyterLab", "image": image, "pull": "never", "app": "jupyter",
        "app_port": 8888, "memory_mib": 1024, "cpus": 1.0,
    });
    ctl.blueprint(bp).await;
    let alice = ctl.user("alice", "user").await;
    let bob = ctl.user("bob", "user").await;

    let id = ctl.launch(&alice, "lab").await;
    let _cleanup = InstanceContainers(vec![id.clone()]);
    ctl.wait_instance(&alice, &id, "running", Duration::from_secs(120))
        .await;
    let base = format!("{}/i/{id}/", ctl.api);
    let session = vec![("Cookie".to_string(), format!("cairn_session={alice}"))];

    // The Lab page opens for the logged-in owner: no token prompt, no login redirect.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!("{base}lab"))
        .header("cookie", format!("cairn_session={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains("JupyterLab"), "{page}");
    // Links in the page point under the instance's prefix.
    assert!(page.contains(&format!("/i/{id}/")), "base URL not applied");

    // A kernel over the proxy, with the WebSocket through the tunnel.
    let out = jupyter::execute(&base, &session, "1+1").await.unwrap();
    assert_eq!(out, "2");

    // Someone else, or nobody: 404, and Jupyter never sees the request.
    for token in [Some(bob.as_str()), None] {
        let mut req = client.get(format!("{base}api/kernels"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), 404);
    }
}
