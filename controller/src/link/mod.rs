//! The controller's end of the agent link: a QUIC endpoint that accepts enrolments
//! ([`enrol`]) and mutually authenticated agent sessions ([`session`]).
//!
//! Each connection runs in its own task. Whatever one connection does — a garbled
//! frame, a wrong version, a flood of streams — ends that connection with a logged
//! reason and nothing else.

pub mod ask;
pub mod chunks;
pub mod enrol;
pub mod session;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use cairn_shared::identity::negotiated_alpn;
use cairn_shared::protocol::{CloseCode, ALPN_AGENT, ALPN_ENROL};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;

/// How long a peer may take to open its first stream and send its first frame.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(app: Arc<App>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let app = app.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(reason = %cairn_shared::protocol::describe_connection_error(&e), "handshake failed");
                        return;
                    }
                };
                match negotiated_alpn(&conn).as_deref() {
                    Some(ALPN_ENROL) => enrol::serve(app, conn).await,
                    Some(ALPN_AGENT) => session::serve(app, conn).await,
                    _ => conn.close(CloseCode::ProtocolViolation.into(), b"unknown application protocol"),
                }
            }
            .instrument(tracing::info_span!("conn", %remote)),
        );
    }
}

/// Closes a connection and logs why, at warn level: these are the "clear logged
/// reasons" an operator reads when an agent cannot connect.
pub(crate) fn refuse(conn: &quinn::Connection, code: CloseCode, reason: &str) {
    tracing::warn!(code = code.as_str(), %reason, "closing connection");
    conn.close(code.into(), reason.as_bytes());
}

/// Waits for the peer's first stream and the first frame on it. On failure the
/// connection is closed with a reason naming `what` (or was already gone), and `None`
/// is returned.
pub(crate) async fn first_frame(
    conn: &quinn::Connection,
    max: u32,
    what: &str,
) -> Option<(quinn::SendStream, quinn::RecvStream, Vec<u8>)> {
    let (send, mut recv) = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = cairn_shared::protocol::describe_connection_error(&e);
            tracing::info!(%reason, "peer left before its {what}");
            return None;
        }
        Err(_) => {
            refuse(
                conn,
                CloseCode::ProtocolViolation,
                &format!("no {what} within 10 s"),
            );
            return None;
        }
    };
    let read = cairn_shared::framing::read_payload(&mut recv, max);
    match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read).await {
        Ok(Ok(Some(p))) => Some((send, recv, p)),
        Ok(Ok(None)) => {
            refuse(
                conn,
                CloseCode::ProtocolViolation,
                &format!("stream closed before the {what}"),
            );
            None
        }
        Ok(Err(e)) => {
            refuse(conn, e.close_code(), &format!("bad {what}: {e}"));
            None
        }
        Err(_) => {
            refuse(
                conn,
                CloseCode::ProtocolViolation,
                &format!("no {what} within 10 s"),
            );
            None
        }
    }
}
