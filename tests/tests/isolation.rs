//! Instances are fenced in, proven without a packet leaving this machine: two instances
//! cannot reach each other, neither can reach a service on the host, no Docker socket
//! is inside, and the rule that drops the cloud metadata address is installed (checked
//! by reading the rules, never by connecting there).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use cairn_tests::cluster::{controller_with_agent, wait_for};
use cairn_tests::docker::docker;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

fn exec_wget(container: &str, url: &str) -> bool {
    Command::new("docker")
        .args(["exec", container, "wget", "-T", "3", "-q", "-O-", url])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_neither_each_other_nor_the_host() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, _host) = controller_with_agent(tmp.path(), "fenced").await;
    let bp = json!({"name": "web", "image": image, "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 32, "max_instances_per_user": 2,
                    "command": ["sh", "-c", "mkdir -p /www && echo secret > /www/index.html && exec httpd -f -p 8080 -h /www"]});
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(bp))
            .await
            .0,
        201
    );
    let alice = ctl.user("alice", "user").await;
    let mut ids = vec![];
    for _ in 0..2 {
        let (_, i) = ctl
            .request(
                Some(&alice),
                Method::POST,
                "/api/v1/instances",
                Some(json!({"blueprint": "web"})),
            )
            .await;
        ids.push(i["id"].as_str().unwrap().to_string());
    }
    let _cleanup = scopeguard(ids.clone());
    let mut addrs = vec![];
    for id in &ids {
        wait_for("running", Duration::from_secs(60), || {
            let (ctl, alice, id) = (&ctl, &alice, id.clone());
            async move {
                ctl.request(
                    Some(alice),
                    Method::GET,
                    &format!("/api/v1/instances/{id}"),
                    None,
                )
                .await
                .1["state"]
                    == "running"
            }
        })
        .await;
        let i = ctl.instance(&alice, id).await;
        addrs.push(i["address"].as_str().unwrap().to_string());
    }
    let (a, b) = (format!("cairn-{}", ids[0]), &addrs[1]);

    // Instance to instance: blocked; the host itself reaches both (the positive control).
    assert_eq!(
        reqwest::get(format!("http://{b}/index.html"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim(),
        "secret"
    );
    assert!(
        !exec_wget(&a, &format!("http://{b}/index.html")),
        "instance A reached instance B"
    );

    // Instance to host: a service on the host, listening on every address, is out of reach.
    let gateway = docker(&[
        "network",
        "inspect",
        "cairn",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
    ]);
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost");
        }
    });
    let url = format!("http://{gateway}:{port}/");
    assert_eq!(
        reqwest::get(&url).await.unwrap().text().await.unwrap(),
        "host",
        "positive control from the host"
    );
    assert!(
        !exec_wget(&a, &url),
        "instance reached a service on the host via {gateway}"
    );

    // No Docker socket inside.
    let inspect: serde_json::Value = serde_json::from_str(&docker(&["inspect", &a])).unwrap();
    assert_eq!(inspect[0]["Mounts"], json!([]));
    let sock = Command::new("docker")
        .args(["exec", &a, "test", "-e", "/var/run/docker.sock"])
        .status()
        .unwrap();
    assert!(!sock.success());

    // The metadata address is dropped for traffic from the Cairn bridge (rules read, not probed).
    let fwd = String::from_utf8(
        Command::new("iptables")
            .args(["-w", "-S", "CAIRN-FORWARD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        fwd.contains("-A CAIRN-FORWARD -d 169.254.169.254/32 -j DROP"),
        "{fwd}"
    );
    let user = String::from_utf8(
        Command::new("iptables")
            .args(["-w", "-S", "DOCKER-USER"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        user.contains("-A DOCKER-USER -i cairn0 -j CAIRN-FORWARD"),
        "{user}"
    );
    let input = String::from_utf8(
        Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        input.contains("-A INPUT -i cairn0 -j CAIRN-INPUT"),
        "{input}"
    );
    let net = docker(&[
        "network",
        "inspect",
        "cairn",
        "--format",
        "{{index .Options \"com.docker.network.bridge.enable_icc\"}}",
    ]);
    assert_eq!(net, "false");
}

/// Removes the test's containers when dropped.
fn scopeguard(ids: Vec<String>) -> impl Drop {
    struct G(Vec<String>);
    impl Drop for G {
        fn drop(&mut self) {
            for id in &self.0 {
                let _ = Command::new("docker")
                    .args(["rm", "-f", &format!("cairn-{id}")])
                    .output();
            }
        }
    }
    G(ids)
}
