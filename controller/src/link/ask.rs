//! Requests the controller sends an agent, each on a QUIC stream of its own so it
//! never waits behind the control stream or a tunnel: one frame out, one back,
//! bounded in size and time.

use std::time::Duration;

use cairn_shared::framing;
use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{ControllerRequest, ControllerResponse};

/// How long an agent has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Most log lines asked for at once.
pub const MAX_LOG_LINES: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("the agent did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Agent(String),
    #[error("the link to the agent failed: {0}")]
    Link(String),
}

/// The last `tail` lines of an instance's output.
pub async fn logs(
    conn: &quinn::Connection,
    instance: &InstanceId,
    tail: u32,
) -> Result<String, AskError> {
    let req = ControllerRequest::Logs {
        instance: instance.clone(),
        tail: tail.min(MAX_LOG_LINES),
    };
    match ask(conn, &req).await? {
        ControllerResponse::Logs { text } => Ok(text),
        ControllerResponse::Error { message } => Err(AskError::Agent(message)),
        ControllerResponse::TunnelOpen => Err(AskError::Agent(
            "the agent answered a logs request with a tunnel".into(),
        )),
    }
}

async fn ask(
    conn: &quinn::Connection,
    req: &ControllerRequest,
) -> Result<ControllerResponse, AskError> {
    let exchange = async {
        let link = |e: &dyn std::fmt::Display| AskError::Link(e.to_string());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link(&e))?;
        framing::write(&mut send, req, 64 * 1024)
            .await
            .map_err(|e| link(&e))?;
        // Finishing only tells the agent no more frames follow; an error here
        // means the stream is already gone, which the read reports.
        let _ = send.finish();
        framing::read::<_, ControllerResponse>(&mut recv, framing::MAX_FRAME_LEN)
            .await
            .map_err(|e| link(&e))?
            .ok_or_else(|| AskError::Link("the agent closed the stream".into()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| AskError::Timeout)?
}
