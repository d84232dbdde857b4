//! The controller's doors against clients that hold them open or misuse them: a
//! half-sent request head is cut off at the header timeout while a keep-alive
//! connection may idle longer; the connection cap makes new connections wait (and
//! says so in the log) until one closes; an agent whose packet filter isolation
//! fails is shown as such and gets no instances unless its pool allows it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cairn_tests::cluster::{wait_for, Agent, Controller, ControllerOptions};
use cairn_tests::require::{require, Need};

fn api_addr(ctl: &Controller) -> String {
    ctl.api.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response head (up to the blank line).
async fn read_head(s: &mut TcpStream) -> String {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: cairn\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_cut_off_at_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.set_config("header_read_timeout_secs", "2");
    ctl.set_config("idle_timeout_secs", "30");
    ctl.start().await;
    let addr = api_addr(&ctl);

    // Fifty slowloris clients: half a head each, then silence.
    let mut slow = vec![];
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: cair")
            .await
            .unwrap();
        slow.push(s);
    }
    let start = Instant::now();
    let closes = slow.iter_mut().map(|s| async move {
        read_to_close(s).await;
        start.elapsed()
    });
    let took = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(closes))
        .await
        .expect("half-sent heads still open after 10 s");
    let last = took.iter().max().unwrap();
    assert!(
        *last < Duration::from_secs(3),
        "closed only after {last:?} (timeout 2 s)"
    );
    // Counted from accept, not from when the test began waiting.
    assert!(
        *took.iter().min().unwrap() > Duration::from_millis(1000),
        "closed too early: {took:?}"
    );

    // The positive control: a keep-alive client served once may idle past the
    // header timeout (up to the idle timeout) and is served again.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(HEALTHZ).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut byte = [0u8; 1];
    let idle = tokio::time::timeout(Duration::from_secs(4), s.read(&mut byte)).await;
    assert!(
        idle.is_err(),
        "the idle keep-alive connection was closed: {idle:?}"
    );
    s.write_all(HEALTHZ).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.set_config("max_connections", "8");
    ctl.set_config("header_read_timeout_secs", "60");
    ctl.set_config("idle_timeout_secs", "60");
    ctl.start().await;
    // The harness's own keep-alive connection from waiting for /healthz would take
    // a slot.
    ctl.drop_idle_connections();
    let addr = api_addr(&ctl);

    let mut held = vec![];
    for _ in 0..8 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The ninth connects (the kernel's backlog takes it) but is not served.
    let mut ninth = TcpStream::connect(&addr).await.unwrap();
    ninth.write_all(HEALTHZ).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), ninth.peek(&mut byte)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    wait_for("the cap in the log", Duration::from_secs(10), || {
        let log = ctl.log_text();
        async move { log.contains("connection cap reached") && log.contains("max_connections=8") }
    })
    .await;
    assert_eq!(
        ctl.log_text().matches("connection cap reached").count(),
        1,
        "logged once per burst"
    );

    drop(held.remove(0));
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut ninth))
        .await
        .expect("not served after a slot freed");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unisolated_host_is_shown_and_gets_instances_only_where_allowed() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    // A real failure of the real installer: the agent finds an `iptables` that
    // refuses, first on its PATH.
    let fake_bin = tmp.path().join("fake-bin");
    std::fs::create_dir_all(&fake_bin).unwrap();
    let iptables = fake_bin.join("iptables");
    std::fs::write(
        &iptables,
        "#!/bin/sh\necho 'iptables: refused for the doors test' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&iptables, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(fake_bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();

    let mut agent = Agent::new(tmp.path(), "unfenced");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    agent.start_with_env(&[("PATH", path.as_os_str())]);
    ctl.wait_host_state(&host, "active", Duration::from_secs(20))
        .await;
    wait_for(
        "the failed isolation on the host",
        Duration::from_secs(20),
        || {
            let (ctl, host) = (&ctl, host.clone());
            async move {
                let (_, h) = ctl.get(&format!("/api/v1/hosts/{host}")).await;
                h["isolation"]["failed"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("refused for the doors test"))
            }
        },
    )
    .await;
    let (_, hosts) = ctl.get("/api/v1/hosts").await;
    assert!(
        hosts.to_string().contains("refused for the doors test"),
        "{hosts}"
    );

    // Placement is decided at launch: with the only host unisolated, it waits.
    ctl.blueprint(json!({"name": "web", "image": "cairn-test/not-present:1", "pull": "never",
                         "app": "http", "app_port": 8080, "memory_mib": 32, "max_instances_per_user": 2}))
        .await;
    let alice = ctl.user("alice", "user").await;
    let id = ctl.launch(&alice, "web").await;
    let i = ctl.instance(&alice, &id).await;
    assert_eq!(i["state"], "queued", "{i:#}");

    // A pool that allows unisolated hosts takes it.
    ctl.terminate();
    let cfg = ctl.dir.join("config.toml");
    // `init` wrote an empty `pools = []`; the table replaces it.
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("pools = []\n", "");
    text.push_str("\n[[pools]]\nname = \"default\"\nallow_unisolated = true\n");
    std::fs::write(&cfg, text).unwrap();
    ctl.start().await;
    let i = ctl
        .wait_instance_any(
            &alice,
            &id,
            &["scheduled", "preparing", "starting", "running", "failed"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(i["host"], host.as_str(), "{i:#}");
    agent.kill9();
}

/// Failed logins slow the next ones down, with the wait in the answer (for the REST
/// API and the login page alike), even for the right password; an admin lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_with_the_wait_in_the_answer_until_an_admin_lifts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    ctl.user("alice", "user").await;
    let login = |password: &str| {
        let body = json!({"user": "alice", "password": password});
        let ctl = &ctl;
        async move {
            ctl.request(None, reqwest::Method::POST, "/api/v1/login", Some(body))
                .await
        }
    };
    // Three free failures; the fourth answer says what the next attempt faces.
    for n in 1..=4 {
        let (status, body) = login("wrong-password").await;
        assert_eq!(status, 401, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        if n < 4 {
            assert_eq!(
                message,
                "wrong user name or password, or the account is disabled"
            );
        } else {
            assert_eq!(
                message,
                "wrong user name or password, or the account is disabled; too many failed logins for this account; try again in 1 s"
            );
            assert_eq!(body["error"]["retry_after_secs"], 1, "{body}");
        }
    }
    // Right away, even the right password is held back, with the wait.
    let (status, body) = login("alice-password-1").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "login_throttled");
    assert_eq!(
        body["error"]["message"],
        "too many failed logins for this account; try again in 1 s"
    );
    // The login page shows the same sentence.
    let page = reqwest::Client::new()
        .post(format!("{}/login", ctl.api))
        .form(&[("user", "alice"), ("password", "alice-password-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 429);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("too many failed logins for this account; try again in 1 s"));
    // An admin lifts it; the right password works at once. Lifting twice says
    // there is nothing left to lift.
    let (status, body) = ctl
        .send(reqwest::Method::POST, "/api/v1/users/alice/unlock", None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = ctl
        .send(reqwest::Method::POST, "/api/v1/users/alice/unlock", None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = login("alice-password-1").await;
    assert_eq!(status, 200, "{body}");
    // A user may not lift anything.
    let alice = body["token"].as_str().unwrap().to_string();
    let (status, _) = ctl
        .request(
            Some(&alice),
            reqwest::Method::POST,
            "/api/v1/users/alice/unlock",
            None,
        )
        .await;
    assert_eq!(status, 403);
    let log = ctl.log_text();
    assert!(
        log.contains("failed login; further attempts delayed"),
        "{log}"
    );
    assert!(log.contains("login lock-out lifted"), "{log}");
}
