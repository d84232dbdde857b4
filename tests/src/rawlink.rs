//! A link client driven by hand, to send what a real agent never would: wrong
//! versions, oversize and garbled frames, missing or foreign certificates.

use std::net::SocketAddr;
use std::time::Duration;

use cairn_shared::identity::{self, CONTROLLER_SERVER_NAME};
use cairn_shared::protocol::{application_close, CloseCode};

/// The smallest valid Hello: speaking `version`, named `hostname`, no Docker.
pub fn hello(version: u32, hostname: &str) -> cairn_shared::protocol::Hello {
    use cairn_shared::resources::{Capacity, HostFacts, RuntimeFacts};
    cairn_shared::protocol::Hello {
        protocol_version: version,
        facts: HostFacts {
            hostname: hostname.into(),
            ..Default::default()
        },
        capacity: Capacity {
            cpus: 1,
            memory_total_bytes: 1,
            memory_available_bytes: 1,
            ..Default::default()
        },
        runtime: RuntimeFacts::Unavailable {
            error: "none".into(),
        },
        isolation: Default::default(),
    }
}

/// A client endpoint on loopback.
pub fn endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint")
}

/// Connects with `config`; returns the connection or the handshake error text.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, String> {
    let connecting = ep
        .connect_with(config, addr, CONTROLLER_SERVER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(cairn_shared::protocol::describe_connection_error(&e)),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Opens the control stream, sends `bytes` raw, and waits for the controller to close
/// the connection; returns the close code and reason.
pub async fn send_raw_and_wait_close(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> (Option<CloseCode>, String) {
    if let Ok((mut send, _recv)) = conn.open_bi().await {
        let _ = send.write_all(bytes).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await;
    }
    let err = conn
        .close_reason()
        .expect("the controller should have closed the connection");
    application_close(&err).unwrap_or((
        None,
        cairn_shared::protocol::describe_connection_error(&err),
    ))
}

/// A client configuration presenting `cert_der`/`key_pem` and trusting `ca_der`.
pub fn client_with_cert(ca_der: &[u8], cert_der: &[u8], key_pem: &str) -> quinn::ClientConfig {
    identity::agent_client_config(ca_der, cert_der, key_pem).expect("client config")
}
