//! The README's first command: `cargo run --release -p cairn-dev`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_tests::cluster::{bin, free_tcp_port, free_udp_port, wait_for};
use cairn_tests::docker::docker;
use cairn_tests::require::{require, Need};

#[test]
fn dev_mode_without_docker_fails_with_one_actionable_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin("cairn-dev"))
        .arg("--data-dir")
        .arg(tmp.path().join("dev"))
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", tmp.path().display()),
        )
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach the Docker Engine at unix://"),
        "{err}"
    );
    assert!(
        err.contains("start it (systemctl start docker) or set DOCKER_HOST"),
        "{err}"
    );
    assert!(
        !tmp.path().join("dev").exists(),
        "nothing is created when Docker is missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_runs_a_controller_and_a_local_agent() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let api_port = free_tcp_port();
    let run = || {
        Command::new(bin("cairn-dev"))
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--api-port",
                &api_port.to_string(),
                "--link-port",
                &free_udp_port().to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let http = reqwest::Client::new();
    let hosts = |token: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{api_port}/api/v1/hosts"))
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    };
    for round in 0..2 {
        // The second round reuses the data directory: no re-initialisation, same host.
        let mut child = run();
        let token_path = dir.join("admin.token");
        wait_for("admin token", Duration::from_secs(30), || {
            let p = token_path.clone();
            async move { p.exists() }
        })
        .await;
        let token = std::fs::read_to_string(&token_path)
            .unwrap()
            .trim()
            .to_string();
        wait_for("one active local host", Duration::from_secs(30), || {
            let f = hosts(token.clone());
            async move {
                f.await.is_some_and(|v| {
                    v.as_array().is_some_and(|a| {
                        a.len() == 1
                            && a[0]["state"] == "active"
                            && a[0]["runtime"]["Docker"].is_object()
                    })
                })
            }
        })
        .await;
        let v = hosts(token.clone()).await.unwrap();
        assert_eq!(v[0]["labels"]["dev"], "true", "round {round}: {v:#}");
        if round == 0 {
            check_seeded_content(api_port, &dir).await;
        }
        // Ctrl-C: a clean stop.
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "round {round}: dev exited with {status}");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        assert!(
            out.contains(&format!(
                "API:          http://127.0.0.1:{api_port}/api/v1/hosts"
            )),
            "{out}"
        );
        assert_eq!(out.contains("initialised"), round == 0, "{out}");
        // The example is always there: nothing to install, no note about it.
        assert!(
            out.contains("launch:       cairn launch hello --wait"),
            "{out}"
        );
        assert!(!out.contains("note:"), "{out}");
    }
}

/// The development admin can log in with the password dev mode wrote, and the seeded
/// example blueprint launches and serves its page.
async fn check_seeded_content(api_port: u16, dir: &std::path::Path) {
    let login = std::fs::read_to_string(dir.join("dev-login.txt")).unwrap();
    let password = login
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap()
        .to_string();
    let base = format!("http://127.0.0.1:{api_port}/api/v1");
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{base}/login"))
        .json(&serde_json::json!({"user": "dev", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().expect("dev login").to_string();
    // The example blueprint appears once its image is imported (the first import of
    // a debug build of cairn-dev takes a while on a busy machine).
    wait_for("the hello blueprint", Duration::from_secs(180), || {
        let request = http.get(format!("{base}/blueprints")).bearer_auth(&token);
        async move {
            let Ok(r) = request.send().await else {
                return false;
            };
            r.json::<serde_json::Value>().await.is_ok_and(|bps| {
                bps.as_array()
                    .is_some_and(|a| a.iter().any(|b| b["name"] == "hello"))
            })
        }
    })
    .await;
    // The example image is the cairn-dev binary serving its page, not busybox: the
    // builder needs nothing installed on this machine.
    let cmd = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}}",
        "cairn-example/hello:1",
    ]);
    assert_eq!(
        cmd.trim(),
        r#"["/app/cairn-dev","serve-example","--port","8080"]"#
    );
    let inst: serde_json::Value = http
        .post(format!("{base}/instances"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"blueprint": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = inst["id"].as_str().unwrap().to_string();
    let url = format!("{base}/instances/{id}");
    let mut address = String::new();
    for _ in 0..600 {
        let i: serde_json::Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_ne!(i["state"], "failed", "{i:#}");
        if i["state"] == "running" {
            address = i["address"].as_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!address.is_empty(), "hello never reached running");
    let page = reqwest::get(format!("http://{address}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Hello from Cairn"), "{page}");
    http.delete(&url).bearer_auth(&token).send().await.unwrap();
    for _ in 0..300 {
        let i: serde_json::Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if i["state"] == "stopped" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("hello did not stop");
}
