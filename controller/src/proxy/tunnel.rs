//! Byte tunnels to instances over their agent's QUIC connection, and the connector
//! that lets hyper's pooled HTTP client use them.
//!
//! A tunnel is one bidirectional QUIC stream: the controller sends a
//! [`ControllerRequest::Tunnel`] frame, the agent connects to the instance's app and
//! answers [`ControllerResponse::TunnelOpen`], and the stream carries raw bytes from
//! then on. The connector names instances by URI authority (`http://i-…/`), so hyper's
//! pool keeps idle keep-alive connections per instance.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_shared::framing;
use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{ControllerRequest, ControllerResponse};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::app::App;

/// How long opening a tunnel may take, the agent's connect to the app included.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("not an instance address: {0}")]
    BadTarget(String),
    #[error("instance {0} is not placed on a host")]
    NotPlaced(InstanceId),
    #[error("the host of instance {0} is not connected")]
    HostUnreachable(InstanceId),
    #[error("the agent refused the tunnel: {0}")]
    Refused(String),
    #[error("link error: {0}")]
    Link(String),
    #[error("the agent did not open the tunnel within {} s", OPEN_TIMEOUT.as_secs())]
    Timeout,
}

/// One open tunnel: the two halves of a QUIC stream as one byte stream. It adds
/// the bytes it carries to the proxy's counters as they pass — one atomic add on a
/// handle looked up once, so the counters never lag behind an idle keep-alive
/// connection — and counts itself among the open tunnels while it lives.
#[derive(Debug)]
pub struct Tunnel(tokio::io::Join<quinn::RecvStream, quinn::SendStream>);

impl Tunnel {
    fn new(io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>) -> Self {
        crate::metrics::proxy_tunnel(true);
        Tunnel(io)
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        crate::metrics::proxy_tunnel(false);
    }
}

/// Opens a tunnel to `instance`'s app through its agent.
pub async fn open(app: &App, instance: &InstanceId) -> Result<Tunnel, TunnelError> {
    let host = app
        .instances
        .location(instance)
        .ok_or_else(|| TunnelError::NotPlaced(instance.clone()))?;
    let conn = app
        .registry
        .connection(&host)
        .ok_or_else(|| TunnelError::HostUnreachable(instance.clone()))?;
    let open = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| TunnelError::Link(e.to_string()))?;
        let req = ControllerRequest::Tunnel {
            instance: instance.clone(),
        };
        framing::write(&mut send, &req, 64 * 1024)
            .await
            .map_err(|e| TunnelError::Link(e.to_string()))?;
        // `read` takes exactly one frame, so nothing of the tunnelled bytes is lost.
        match framing::read::<_, ControllerResponse>(&mut recv, 64 * 1024).await {
            Ok(Some(ControllerResponse::TunnelOpen)) => {
                Ok(Tunnel::new(tokio::io::join(recv, send)))
            }
            Ok(Some(ControllerResponse::Error { message })) => Err(TunnelError::Refused(message)),
            Ok(Some(other)) => Err(TunnelError::Link(format!(
                "unexpected answer to a tunnel request: {other:?}"
            ))),
            Ok(None) => Err(TunnelError::Link("the agent closed the stream".into())),
            Err(e) => Err(TunnelError::Link(e.to_string())),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, open)
        .await
        .map_err(|_| TunnelError::Timeout)?
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            crate::metrics::proxy_bytes(0, (buf.filled().len() - before) as u64);
        }
        r
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            crate::metrics::proxy_bytes(n as u64, 0);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for Tunnel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// hyper's connector: the URI's host is an instance id.
#[derive(Clone)]
pub struct Connector(pub Arc<App>);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl tower::Service<axum::http::Uri> for Connector {
    type Response = TokioIo<Tunnel>;
    type Error = TunnelError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: axum::http::Uri) -> Self::Future {
        let app = self.0.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let id = InstanceId::parse(host).map_err(|_| TunnelError::BadTarget(host.into()))?;
            Ok(TokioIo::new(open(&app, &id).await?))
        })
    }
}
