//! End-to-end tests of enrolment, the agent link, heartbeats and the host registry,
//! with the controller and agents as separate processes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use cairn_shared::framing;
use cairn_shared::identity::{self, Ca};
use cairn_shared::ids::HostId;
use cairn_shared::protocol::{CloseCode, ALPN_AGENT, PROTOCOL_VERSION};
use cairn_tests::cluster::{stderr, wait_for, Agent, Controller, ControllerOptions};
use cairn_tests::rawlink;

/// Heartbeats every 500 ms, 3 missed → unreachable: 1.5 s plus one liveness tick.
const UNREACHABLE_BOUND: Duration = Duration::from_millis(1500 + 125 + 1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_enrol_heartbeat_survive_kill9_of_agent_and_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    let token = ctl.token("10m", 3);
    let mut agents: Vec<Agent> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| Agent::new(tmp.path(), n))
        .collect();
    let mut ids = vec![];
    for (i, a) in agents.iter_mut().enumerate() {
        let extra: &[&str] = if i == 0 {
            &["--label", "gpu=true", "--label", "zone=a"]
        } else {
            &[]
        };
        ids.push(a.join_ok(&ctl, &token, extra));
        a.start();
    }
    for id in &ids {
        ctl.wait_host_state(id, "active", Duration::from_secs(20))
            .await;
    }
    let hosts = ctl.hosts().await;
    assert_eq!(hosts.len(), 3);
    let h1 = ctl.get(&format!("/api/v1/hosts/{}", ids[0])).await.1;
    assert_eq!(h1["hostname"], "a1");
    assert_eq!(h1["labels"]["gpu"], "true");
    assert_eq!(h1["labels"]["zone"], "a");
    assert!(h1["capacity"]["cpus"].as_u64().unwrap() > 0, "{h1:#}");
    assert!(h1["capacity"]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(
        h1["capacity"]["state_disk"]["total_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Heartbeats keep arriving: last_seen advances.
    let seen0 = h1["last_seen_ms"].as_u64().unwrap();
    wait_for("a newer heartbeat", Duration::from_secs(5), || {
        let (ctl, id) = (&ctl, &ids[0]);
        async move {
            ctl.get(&format!("/api/v1/hosts/{id}")).await.1["last_seen_ms"]
                .as_u64()
                .unwrap_or(0)
                > seen0
        }
    })
    .await;

    // kill -9 one agent: unreachable within the threshold.
    agents[0].kill9();
    let killed_at = Instant::now();
    ctl.wait_host_state(&ids[0], "unreachable", Duration::from_secs(10))
        .await;
    let took = killed_at.elapsed();
    assert!(
        took <= UNREACHABLE_BOUND,
        "unreachable after {took:?}, bound {UNREACHABLE_BOUND:?}"
    );
    assert_eq!(ctl.host_state(&ids[1]).await, "active");

    // Restart it: active again, without a new token.
    agents[0].start();
    ctl.wait_host_state(&ids[0], "active", Duration::from_secs(20))
        .await;

    // kill -9 the controller; restart it: hosts, tokens and certificates intact.
    let ca_before = std::fs::read(ctl.dir.join("ca.crt")).unwrap();
    let server_before = std::fs::read(ctl.dir.join("controller.crt")).unwrap();
    ctl.kill9();
    ctl.start().await;
    assert_eq!(std::fs::read(ctl.dir.join("ca.crt")).unwrap(), ca_before);
    assert_eq!(
        std::fs::read(ctl.dir.join("controller.crt")).unwrap(),
        server_before
    );
    let hosts = ctl.hosts().await;
    let mut listed: Vec<String> = hosts
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);
    let (_, tokens) = ctl.get("/api/v1/join-tokens").await;
    let t = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| token.starts_with(t["id"].as_str().unwrap()))
        .expect("token kept");
    assert_eq!(t["uses"], 3);
    assert_eq!(t["used_by"].as_array().unwrap().len(), 3);
    // The token is used up, and stays so across the restart.
    let late = Agent::new(tmp.path(), "late");
    let out = late.join(&ctl, &token, &ctl.ca_sha256, &[]);
    assert!(
        stderr(&out).contains("is used up (3 of 3 uses)"),
        "{}",
        stderr(&out)
    );

    // Agents come back by themselves.
    for id in &ids {
        ctl.wait_host_state(id, "active", Duration::from_secs(40))
            .await;
    }
    let h1 = ctl.get(&format!("/api/v1/hosts/{}", ids[0])).await.1;
    let reasons: Vec<&str> = h1["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert!(
        reasons.starts_with(&["active", "unreachable", "active"]),
        "{reasons:?}"
    );

    // A graceful agent stop is recorded as such at once.
    let pid = agents[1].pid().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    ctl.wait_host_state(&ids[1], "unreachable", Duration::from_secs(5))
        .await;
    let h2 = ctl.get(&format!("/api/v1/hosts/{}", ids[1])).await.1;
    assert!(
        h2["state_reason"]
            .as_str()
            .unwrap()
            .contains("agent shutting down"),
        "{h2:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_refusals_say_exactly_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    // Wrong CA fingerprint: the agent refuses before sending the token.
    let token = ctl.token("10m", 1);
    let a = Agent::new(tmp.path(), "wrong-ca");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = a.join(&ctl, &token, &wrong, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to enrol: the controller at"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "presented a CA with fingerprint {}",
            ctl.ca_sha256
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("but --ca-sha256 is {wrong}")),
        "{err}"
    );
    assert!(!a.state_dir.join("agent.toml").exists());
    // ...and the token was not consumed.
    a.join_ok(&ctl, &token, &[]);

    // Token reused after a successful enrolment.
    let b = Agent::new(tmp.path(), "reuse");
    let out = b.join(&ctl, &token, &ctl.ca_sha256, &[]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("the controller refused the enrolment: the join token"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("is used up (1 of 1 uses)"),
        "{}",
        stderr(&out)
    );

    // Used up: two uses, a third host is refused.
    let two = ctl.token("10m", 2);
    Agent::new(tmp.path(), "u1").join_ok(&ctl, &two, &[]);
    Agent::new(tmp.path(), "u2").join_ok(&ctl, &two, &[]);
    let out = Agent::new(tmp.path(), "u3").join(&ctl, &two, &ctl.ca_sha256, &[]);
    assert!(
        stderr(&out).contains(
            "is used up (2 of 2 uses); create a new one with `cairn-controller token create`"
        ),
        "{}",
        stderr(&out)
    );

    // Expired.
    let short = ctl.token("1s", 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = Agent::new(tmp.path(), "late").join(&ctl, &short, &ctl.ca_sha256, &[]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s ago; create a new one"),
        "{}",
        stderr(&out)
    );

    // Unknown and malformed tokens.
    let out = Agent::new(tmp.path(), "x").join(
        &ctl,
        &format!("{}.{}", "0".repeat(8), "0".repeat(32)),
        &ctl.ca_sha256,
        &[],
    );
    assert!(
        stderr(&out).contains("the join token is not known to this controller"),
        "{}",
        stderr(&out)
    );
    let out = Agent::new(tmp.path(), "y").join(&ctl, "nonsense", &ctl.ca_sha256, &[]);
    assert!(
        stderr(&out).contains("the join token is malformed"),
        "{}",
        stderr(&out)
    );

    // Joining an enrolled state directory again needs --force.
    let out = a.join(&ctl, &ctl.token("1m", 1), &ctl.ca_sha256, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("is already enrolled as host h-"),
        "{}",
        stderr(&out)
    );

    // Bad labels are refused locally.
    let out = Agent::new(tmp.path(), "z").join(
        &ctl,
        &ctl.token("1m", 1),
        &ctl.ca_sha256,
        &["--label", "GPU"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // The controller is still healthy.
    assert_eq!(ctl.get_with("/healthz", None).await.0, 200);
}

/// Enrols an in-process identity (key + certificate) for raw protocol tests.
async fn enrol_identity(ctl: &Controller, dir: &std::path::Path) -> cairn_agent::state::AgentState {
    let opts = cairn_agent::enrol::JoinOptions {
        controller: ctl.link.to_string(),
        token: ctl.token("5m", 1),
        ca_sha256: identity::Fingerprint::parse(&ctl.ca_sha256).unwrap(),
        state_dir: dir.to_path_buf(),
        labels: Default::default(),
        hostname: "raw".into(),
        force: false,
    };
    cairn_agent::enrol::join(&opts).await.expect("enrol")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_are_closed_with_reasons_and_others_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    // A good agent that must stay active throughout.
    let mut good = Agent::new(tmp.path(), "good");
    let good_id = good.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    good.start();
    ctl.wait_host_state(&good_id, "active", Duration::from_secs(20))
        .await;

    let st = enrol_identity(&ctl, &tmp.path().join("raw")).await;
    let ep = rawlink::endpoint();

    // No client certificate.
    let anon = identity::anonymous_client_config(&st.ca_der, ALPN_AGENT).unwrap();
    let conn = rawlink::connect(&ep, ctl.link, anon)
        .await
        .expect("handshake without a certificate is allowed for enrolment");
    let hello_frame = framing::encode(
        &rawlink::hello(PROTOCOL_VERSION, "raw"),
        framing::MAX_FRAME_LEN,
    )
    .unwrap();
    let (code, reason) = rawlink::send_raw_and_wait_close(&conn, &hello_frame).await;
    assert_eq!(code, Some(CloseCode::Unauthenticated));
    assert_eq!(
        reason,
        "client certificate required: enrol this host with `cairn-agent join` first"
    );

    // A certificate from a different CA: the TLS handshake itself fails.
    let (other_ca, _) = Ca::generate("impostor", Duration::from_secs(3600)).unwrap();
    let (key, csr) = identity::new_key_and_csr("impostor").unwrap();
    let forged = other_ca
        .sign_host(&csr, &st.config.host_id, Duration::from_secs(3600))
        .unwrap();
    // (In TLS 1.3 the client finishes its side before the server has checked the
    // client certificate, so the refusal may arrive just after `connect` returns.)
    let err = match rawlink::connect(
        &ep,
        ctl.link,
        rawlink::client_with_cert(&st.ca_der, &forged, &key),
    )
    .await
    {
        Err(e) => e,
        Ok(conn) => {
            let e = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("the controller must close it");
            cairn_shared::protocol::describe_connection_error(&e)
        }
    };
    eprintln!("foreign certificate refused with: {err}");
    assert!(
        err.contains("handshake failed") && err.contains("48"),
        "{err}"
    );

    // A certificate from the right CA for a host the controller does not know (as
    // after a host is removed): signed here with the CA key from the data directory.
    let ca_key = std::fs::read_to_string(ctl.dir.join("ca.key")).unwrap();
    let real_ca = Ca::load(st.ca_der.clone(), &ca_key).unwrap();
    let ghost = HostId::generate();
    let (gkey, gcsr) = identity::new_key_and_csr("ghost").unwrap();
    let gcert = real_ca
        .sign_host(&gcsr, &ghost, Duration::from_secs(3600))
        .unwrap();
    let conn = rawlink::connect(
        &ep,
        ctl.link,
        rawlink::client_with_cert(&st.ca_der, &gcert, &gkey),
    )
    .await
    .unwrap();
    let (code, reason) = rawlink::send_raw_and_wait_close(&conn, &hello_frame).await;
    assert_eq!(code, Some(CloseCode::UnknownHost));
    assert_eq!(reason, format!("host {ghost} is not enrolled with this controller; enrol again with `cairn-agent join`"));

    let good_cfg = || rawlink::client_with_cert(&st.ca_der, &st.cert_der, &st.key_pem);

    // Protocol version mismatch.
    let conn = rawlink::connect(&ep, ctl.link, good_cfg()).await.unwrap();
    let frame = framing::encode(&rawlink::hello(99, "raw"), framing::MAX_FRAME_LEN).unwrap();
    let (code, reason) = rawlink::send_raw_and_wait_close(&conn, &frame).await;
    assert_eq!(code, Some(CloseCode::VersionMismatch));
    assert_eq!(reason, format!("protocol version mismatch: the controller speaks {PROTOCOL_VERSION}, the agent 99; upgrade the older side"));

    // A frame over the maximum size: refused from its header.
    let conn = rawlink::connect(&ep, ctl.link, good_cfg()).await.unwrap();
    let (code, reason) =
        rawlink::send_raw_and_wait_close(&conn, &(2u32 * 1024 * 1024).to_be_bytes()).await;
    assert_eq!(code, Some(CloseCode::FrameTooLarge));
    assert_eq!(
        reason,
        "bad hello: frame of 2097152 bytes exceeds the limit of 1048576 bytes"
    );

    // A garbled frame: the right version (one varint byte), then nonsense.
    let conn = rawlink::connect(&ep, ctl.link, good_cfg()).await.unwrap();
    let mut garbage = 8u32.to_be_bytes().to_vec();
    let version = u8::try_from(PROTOCOL_VERSION).expect("a one-byte varint");
    assert!(version < 0x80);
    garbage.extend_from_slice(&[version, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let (code, reason) = rawlink::send_raw_and_wait_close(&conn, &garbage).await;
    assert_eq!(code, Some(CloseCode::Garbled), "{reason}");
    assert!(reason.starts_with("bad hello: garbled frame"), "{reason}");

    // A valid hello, then an oversize heartbeat frame mid-session.
    let conn = rawlink::connect(&ep, ctl.link, good_cfg()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    framing::write(
        &mut send,
        &rawlink::hello(PROTOCOL_VERSION, "raw"),
        framing::MAX_FRAME_LEN,
    )
    .await
    .unwrap();
    let welcome: cairn_shared::protocol::Welcome = framing::read(&mut recv, framing::MAX_FRAME_LEN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(welcome.host_id, st.config.host_id);
    ctl.wait_host_state(st.config.host_id.as_str(), "active", Duration::from_secs(5))
        .await;
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    let (code, reason) =
        cairn_shared::protocol::application_close(&conn.close_reason().unwrap()).unwrap();
    assert_eq!(code, Some(CloseCode::FrameTooLarge));
    assert_eq!(
        reason,
        "frame of 4294967295 bytes exceeds the limit of 1048576 bytes"
    );
    ctl.wait_host_state(
        st.config.host_id.as_str(),
        "unreachable",
        Duration::from_secs(5),
    )
    .await;

    // Each refusal is in the controller's log with its reason.
    let log = ctl.log_text();
    for needle in [
        "client certificate required",
        "protocol version mismatch",
        "exceeds the limit",
        "garbled frame",
        "handshake failed",
    ] {
        assert!(log.contains(needle), "controller log lacks {needle:?}");
    }
    // The good agent never noticed.
    assert_eq!(ctl.host_state(&good_id).await, "active");
    let h = ctl.get(&format!("/api/v1/hosts/{good_id}")).await.1;
    assert_eq!(h["transitions"].as_array().unwrap().len(), 1, "{h:#}");
    assert!(good.try_wait().is_none(), "good agent exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_before_expiry_without_an_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = ControllerOptions {
        agent_cert_ttl: "30s",
        ..ControllerOptions::default()
    };
    let mut ctl = Controller::init(tmp.path(), &opts);
    ctl.start().await;
    let mut agent = Agent::new(tmp.path(), "renewer");
    let id = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    let first_cert = std::fs::read(agent.state_dir.join("agent.crt")).unwrap();
    let first_key = std::fs::read(agent.state_dir.join("agent.key")).unwrap();
    let first_info = identity::cert_info(
        &identity::parse_cert_pem(&String::from_utf8_lossy(&first_cert)).unwrap(),
    )
    .unwrap();
    agent.start();
    ctl.wait_host_state(&id, "active", Duration::from_secs(20))
        .await;

    // Renewal at two thirds of the life: about 22 s after issue.
    wait_for(
        "a renewed certificate on disk",
        Duration::from_secs(40),
        || {
            let p = agent.state_dir.join("agent.crt");
            let first = first_cert.clone();
            async move { std::fs::read(&p).map(|c| c != first).unwrap_or(false) }
        },
    )
    .await;
    assert_ne!(
        std::fs::read(agent.state_dir.join("agent.key")).unwrap(),
        first_key,
        "a renewal uses a new key"
    );
    let h = ctl.get(&format!("/api/v1/hosts/{id}")).await.1;
    assert!(
        h["cert_not_after_unix"].as_i64().unwrap() > first_info.not_after_unix,
        "{h:#}"
    );

    // Wait until the first certificate has expired, then restart the agent: it
    // connects with the renewed one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if first_info.not_after_unix >= now {
        tokio::time::sleep(Duration::from_secs(
            (first_info.not_after_unix - now + 1) as u64,
        ))
        .await;
    }
    agent.kill9();
    ctl.wait_host_state(&id, "unreachable", Duration::from_secs(10))
        .await;
    agent.start();
    ctl.wait_host_state(&id, "active", Duration::from_secs(20))
        .await;
    assert!(agent.log_text().contains("client certificate renewed"));
}
