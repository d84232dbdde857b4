//! The local JupyterLab image (`cairn_tests::images::jupyter_image`) is a working
//! Jupyter server as Cairn runs it: started by its default command on a Docker
//! network, it serves under `CAIRN_BASE_URL`, demands the token from
//! `JUPYTER_TOKEN`, and runs Python code through a kernel over its WebSocket API
//! (`cairn_tests::jupyter::execute`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_tests::docker::{container_logs, docker, ContainerGuard};
use cairn_tests::images::jupyter_image;
use cairn_tests::jupyter;
use cairn_tests::require::{require, Need};

/// Removes a Docker network when dropped; drop it after the containers on it.
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_image_serves_a_kernel_under_its_base_url_with_a_token() {
    if !require(&[Need::Docker, Need::Jupyter]) {
        return;
    }
    let image = tokio::task::spawn_blocking(jupyter_image).await.unwrap();

    let suffix = &random_hex()[..12];
    let network = format!("cairn-jupyter-test-{suffix}");
    docker(&["network", "create", "--driver", "bridge", &network]);
    let _network = NetworkGuard(network.clone());

    let token = random_hex();
    let name = format!("cairn-jupyter-test-{suffix}");
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &network,
        "-e",
        "CAIRN_BASE_URL=/i/test1/",
        "-e",
        &format!("JUPYTER_TOKEN={token}"),
        &image,
    ]);
    // Declared after the network guard, so dropped (container removed) before it.
    let container = ContainerGuard(name.clone());

    let ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &container.0,
    ]);
    assert!(
        !ip.is_empty(),
        "container {name} has no address on {network}"
    );
    let base = format!("http://{ip}:8888/i/test1/");

    if let Err(e) = jupyter::wait_until_up(&base, Duration::from_secs(60)).await {
        let logs = container_logs(&name, 50);
        panic!("{e}\n--- docker logs {name} ---\n{logs}");
    }

    // Without the token the kernels API is refused.
    let client = reqwest::Client::new();
    let refused = client
        .get(format!("{base}api/kernels"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(
        refused == 401 || refused == 403,
        "GET api/kernels without a token answered {refused}"
    );
    let wrong = client
        .get(format!("{base}api/kernels"))
        .header("Authorization", "token not-the-token")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(
        wrong == 401 || wrong == 403,
        "GET api/kernels with a wrong token answered {wrong}"
    );

    let auth = vec![("Authorization".to_string(), format!("token {token}"))];
    let result = jupyter::execute(&base, &auth, "1+1").await;
    assert_eq!(result, Ok("2".to_string()));

    // The kernel was deleted afterwards.
    let kernels: serde_json::Value = client
        .get(format!("{base}api/kernels"))
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kernels, serde_json::json!([]), "kernels left running");
}
