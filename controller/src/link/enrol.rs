//! Enrolment: a new host presents a join token and a certificate request, and leaves
//! with a host id and a client certificate signed by the CA.

use std::sync::Arc;
use std::time::Duration;

use cairn_shared::framing::{self, FrameError};
use cairn_shared::identity;
use cairn_shared::ids::HostId;
use cairn_shared::protocol::{
    peek_version, CloseCode, EnrolRequest, EnrolResponse, RefusalCode, PROTOCOL_VERSION,
};
use cairn_shared::validate::Validate;

use super::first_frame;
use crate::app::App;
use crate::hosts::HostRecord;
use crate::tokens::ConsumeError;

/// Enrolment requests are small: a token and a CSR.
const MAX_ENROL_FRAME: u32 = 64 * 1024;

pub async fn serve(app: Arc<App>, conn: quinn::Connection) {
    let Some((mut send, _recv, payload)) =
        first_frame(&conn, MAX_ENROL_FRAME, "enrolment request").await
    else {
        return;
    };
    let response = decide(&app, &payload, conn.remote_address()).await;
    let refused = matches!(response, EnrolResponse::Refused { .. });
    if let Err(e) = framing::write(&mut send, &response, MAX_ENROL_FRAME).await {
        tracing::warn!(error = %e, "could not send the enrolment response");
        return;
    }
    let _ = send.finish();
    // Let the agent read the answer and close; closing first could drop it in flight.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    if refused {
        conn.close(CloseCode::EnrolRefused.into(), b"enrolment refused");
    }
}

fn refusal(code: RefusalCode, message: impl Into<String>) -> EnrolResponse {
    let message = message.into();
    tracing::warn!(?code, %message, "enrolment refused");
    EnrolResponse::Refused { code, message }
}

async fn decide(app: &App, payload: &[u8], remote: std::net::SocketAddr) -> EnrolResponse {
    match peek_version(payload) {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return refusal(
                RefusalCode::VersionMismatch,
                format!("protocol version mismatch: the controller speaks {PROTOCOL_VERSION}, this agent {v}; install a cairn-agent that matches the controller"),
            )
        }
        None => return refusal(RefusalCode::BadRequest, "garbled enrolment request"),
    }
    let req: EnrolRequest = match postcard::from_bytes(payload) {
        Ok(r) => r,
        Err(e) => {
            return refusal(
                RefusalCode::BadRequest,
                format!("garbled enrolment request: {}", FrameError::from(e)),
            )
        }
    };
    if let Err(e) = req.validate() {
        return refusal(
            RefusalCode::BadRequest,
            format!("invalid enrolment request: {e}"),
        );
    }
    let now = cairn_shared::time::now_ms();
    let host_id = HostId::generate();
    // Sign before consuming the token: a bad CSR must not burn a use.
    let ttl = Duration::from_secs(app.config.certificates.agent_cert_ttl_secs);
    let cert_der = match app.pki.ca.sign_host(&req.csr_der, &host_id, ttl) {
        Ok(c) => c,
        Err(e) => {
            return refusal(
                RefusalCode::BadRequest,
                format!("certificate request rejected: {e}"),
            )
        }
    };
    let token = match app.tokens.consume(&req.token, &host_id, now).await {
        Ok(t) => t,
        Err(ConsumeError::Refused(r)) => return refusal(r.code(), r.to_string()),
        Err(ConsumeError::Store(e)) => {
            tracing::error!(error = %e, "token store failed during enrolment");
            return refusal(
                RefusalCode::Internal,
                "the controller could not record the enrolment; see its log",
            );
        }
    };
    let not_after = identity::cert_info(&cert_der)
        .map(|i| i.not_after_unix)
        .unwrap_or_default();
    let hostname: String = req.hostname.chars().filter(|c| !c.is_control()).collect();
    let record = HostRecord::new(
        host_id.clone(),
        hostname.clone(),
        token.id.clone(),
        not_after,
        now,
    );
    if let Err(e) = app.registry.enrolled(record).await {
        tracing::error!(error = %e, "could not store the new host");
        return refusal(
            RefusalCode::Internal,
            "the controller could not record the enrolment; see its log",
        );
    }
    tracing::info!(host = %host_id, %hostname, %remote, token = %token.id, "host enrolled");
    EnrolResponse::Accepted {
        host_id,
        cert_der,
        ca_der: app.pki.ca.cert_der().to_vec(),
    }
}
