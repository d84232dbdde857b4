//! The proxy end to end with real containers: requests to `/i/{id}/…` travel from the
//! controller over the agent's QUIC link to the test app in its container.
//!
//! Proves: GET and POST with headers rewritten as documented; only the owner or an
//! admin gets through (others and anonymous get 404); WebSocket echo, kept through
//! silence shorter than the configured idle limit and closed after it; the waiting
//! and gone pages; and 2 GiB streamed up and down with the controller's memory flat.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use cairn_tests::cluster::{start_agent, Agent, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::require::{require, Need};
use cairn_tests::testapp::{testapp_image, PORT};

/// A controller with one agent and the test app blueprint `app` (and `slow`, which
/// waits before it listens).
async fn stack(tmp: &std::path::Path, ws_idle_secs: Option<u64>) -> (Controller, Agent) {
    let image = testapp_image();
    let mut ctl = Controller::init(tmp, &ControllerOptions::default());
    if let Some(secs) = ws_idle_secs {
        let cfg = ctl.dir.join("config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let changed = text.replace(
            "websocket_idle_secs = 21600",
            &format!("websocket_idle_secs = {secs}"),
        );
        assert_ne!(text, changed, "no websocket_idle_secs in {text}");
        std::fs::write(&cfg, changed).unwrap();
    }
    ctl.start().await;
    let agent = start_agent(&ctl, tmp, "docker-host").await;
    for (name, command) in [
        ("app", json!(null)),
        (
            "slow",
            json!(["sh", "-c", "sleep 6; exec /usr/local/bin/cairn-testapp"]),
        ),
    ] {
        let bp = json!({
            "name": name, "image": image, "pull": "never", "app": "http", "app_port": PORT,
            "memory_mib": 256, "cpus": 1.0, "command": command,
        });
        ctl.blueprint(bp).await;
    }
    (ctl, agent)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_only_the_owner_and_websockets_live_until_the_idle_limit() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent) = stack(tmp.path(), Some(4)).await;
    let alice = ctl.user("alice", "user").await;
    let bob = ctl.user("bob", "user").await;
    let mut cleanup = InstanceContainers(vec![]);

    // A launch on its way shows the waiting page with its state.
    let slow = ctl.launch(&alice, "slow").await;
    cleanup.0.push(slow.clone());
    ctl.wait_instance(&alice, &slow, "starting", Duration::from_secs(60))
        .await;
    let resp = http()
        .get(format!("{}/i/{slow}/", ctl.api))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("Starting — 70%"), "{page}");

    let id = ctl.launch(&alice, "app").await;
    cleanup.0.push(id.clone());
    ctl.wait_instance(&alice, &id, "running", Duration::from_secs(60))
        .await;
    let base = format!("{}/i/{id}", ctl.api);

    // Who gets through.
    let get = |token: Option<String>, cookie: Option<String>| {
        let url = format!("{base}/");
        async move {
            let mut req = http().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = get(Some(alice.clone()), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("Hello from the Cairn test app"), "{body}");
    let (status, body) = get(None, Some(format!("cairn_session={alice}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(Some(ctl.admin_token.clone()), None).await.0, 200);
    let (status, body) = get(Some(bob.clone()), None).await;
    assert_eq!(status, 404);
    assert!(!body.contains("Hello"), "{body}");
    let (status, anon) = get(None, None).await;
    assert_eq!(status, 404);
    assert!(anon.contains("log in"), "{anon}");
    assert_eq!(get(Some("cairn_bogus.bogus".into()), None).await.0, 404);
    // The bare instance path gets its slash.
    let resp = http().get(&base).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], format!("/i/{id}/"));

    // What the app sees.
    let resp = http()
        .get(format!("{base}/headers?x=1"))
        .bearer_auth(&alice)
        .header("cookie", "theme=dark; cairn_session=leak")
        .header("x-forwarded-for", "192.0.2.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/headers?x=1");
    assert_eq!(h["cookie"], "theme=dark");
    assert!(h.get("authorization").is_none(), "{seen:#}");
    assert_eq!(h["x-forwarded-prefix"], format!("/i/{id}"));
    assert_eq!(h["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], ctl.api.trim_start_matches("http://"));
    assert!(!seen.to_string().contains(&alice));

    // POST bodies go both ways.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let resp = http()
        .post(format!("{base}/echo"))
        .bearer_auth(&alice)
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), payload.as_slice());

    // Many requests over the pooled tunnels.
    for i in 0..50 {
        let r = http()
            .get(format!("{base}/small"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }

    // WebSocket echo, idle below the limit (4 s here), then past it.
    let ws_url = format!("{}/i/{id}/ws", ctl.api.replace("http://", "ws://"));
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {alice}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("again"));
    // Now silence beyond the limit: the proxy closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the idle WebSocket was not closed");

    // A WebSocket of someone else's instance is refused like any request.
    let mut req = format!("{}/i/{id}/ws", ctl.api.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());

    // Stopped: the gone page.
    let (status, _) = ctl
        .request(
            Some(&alice),
            Method::DELETE,
            &format!("/api/v1/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    ctl.wait_instance(&alice, &id, "stopped", Duration::from_secs(30))
        .await;
    let (status, body) = get(Some(alice.clone()), None).await;
    assert_eq!(status, 410);
    assert!(body.contains("has ended"), "{body}");
}

const TWO_GIB: u64 = 2 << 30;

/// The test app's byte pattern (byte i = i mod 251), long enough that any chunk at any
/// offset is a slice of it: checking and generating are then a memcmp and a copy.
fn pattern() -> Vec<u8> {
    (0..251 * 2048).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gibibytes_stream_up_and_down_with_flat_memory() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent) = stack(tmp.path(), None).await;
    let alice = ctl.user("alice", "user").await;
    let id = ctl.launch(&alice, "app").await;
    let _cleanup = InstanceContainers(vec![id.clone()]);
    ctl.wait_instance(&alice, &id, "running", Duration::from_secs(60))
        .await;
    let base = format!("{}/i/{id}", ctl.api);
    let pid = ctl.pid().unwrap();
    let before = cairn_tests::procstat::sample(pid).unwrap().rss_kib;

    // Sample the controller's resident memory while the transfers run.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(s) = cairn_tests::procstat::sample(pid) {
                    peak.fetch_max(s.rss_kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Upload: a generated stream, never in memory on this side either.
    let block = bytes::Bytes::from(pattern()).slice(..251 * 1024);
    let chunks = futures::stream::unfold(0u64, move |off| {
        let block = block.clone();
        async move {
            if off >= TWO_GIB {
                return None;
            }
            // Every block starts at a multiple of 251, so it starts the pattern afresh.
            let len = (TWO_GIB - off).min(block.len() as u64) as usize;
            Some((
                Ok::<_, std::io::Error>(block.slice(..len)),
                off + len as u64,
            ))
        }
    });
    let resp = http()
        .post(format!("{base}/sink"))
        .bearer_auth(&alice)
        .header("content-length", TWO_GIB)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got, json!({"bytes": TWO_GIB, "ok": true}));

    // Download: counted and checked as it arrives.
    let resp = http()
        .get(format!("{base}/bytes?n={TWO_GIB}"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expect = pattern();
    let mut stream = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for piece in chunk.chunks(251 * 1024) {
            let start = (n % 251) as usize;
            assert_eq!(
                piece,
                &expect[start..start + piece.len()],
                "corrupt bytes near offset {n}"
            );
            n += piece.len() as u64;
        }
    }
    assert_eq!(n, TWO_GIB);
    sampler.abort();

    let grew_mib = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)
        / 1024;
    println!(
        "controller RSS before {} MiB, grew by at most {grew_mib} MiB while moving 4 GiB",
        before / 1024
    );
    assert!(
        grew_mib < 160,
        "the controller's memory grew by {grew_mib} MiB while streaming: it is buffering"
    );
}
