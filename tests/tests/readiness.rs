//! Readiness for systemd's `Type=notify` units: the controller says `READY=1`
//! once its store is open and both listeners are bound (its status names their
//! addresses) and `STOPPING=1` when asked to stop; the agent says `READY=1` once
//! its link to the controller is up, when the controller already counts the
//! host as active. systemd's side of the socket is played by a datagram socket,
//! as `NOTIFY_SOCKET` gives one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use tokio::net::UnixDatagram;

use cairn_tests::cluster::{Agent, Controller, ControllerOptions};

/// The next notification on `sock`, as text.
async fn next(sock: &UnixDatagram, what: &str) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no notification from the {what} within 30 s"))
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_agent_tell_systemd_when_they_are_ready_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl_sock_path = tmp.path().join("controller.notify");
    let ctl_sock = UnixDatagram::bind(&ctl_sock_path).unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start_with_env(&[("NOTIFY_SOCKET", ctl_sock_path.as_os_str())])
        .await;
    let ready = next(&ctl_sock, "controller").await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let api = ctl.api.trim_start_matches("http://");
    assert!(
        ready.contains(&format!(
            "STATUS=serving the API on {api} and agents on {}",
            ctl.link
        )),
        "{ready}"
    );

    let agent_sock_path = tmp.path().join("agent.notify");
    let agent_sock = UnixDatagram::bind(&agent_sock_path).unwrap();
    let mut agent = Agent::new(tmp.path(), "notify-host");
    let host = agent.join_ok(&ctl, &ctl.token("5m", 1), &[]);
    agent.start_with_env(&[("NOTIFY_SOCKET", agent_sock_path.as_os_str())]);
    let ready = next(&agent_sock, "agent").await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains("STATUS=connected to the controller"),
        "{ready}"
    );
    // Ready means connected: the controller has the host already.
    assert_eq!(ctl.host_state(&host).await, "active");

    // SIGTERM: the controller says it is stopping before it drains.
    let status = ctl.terminate();
    assert!(status.success(), "{status:?}");
    let stopping = next(&ctl_sock, "controller").await;
    assert_eq!(stopping.trim(), "STOPPING=1");
    agent.kill9();
}
