//! The HTTP listener of the API, the web UI and the proxy: accepts TCP connections
//! (TLS-wrapped when configured) and serves the router on each, within limits that
//! keep slow or idle clients from holding the door open.
//!
//! * **First request head**: a new connection must complete its TLS handshake and
//!   its first request head within `header_read_timeout` of being accepted, or it is
//!   closed. Half a header sent and then silence (slowloris) costs the controller
//!   nothing beyond that.
//! * **Keep-alive idle**: between requests a connection may wait `idle_timeout` for
//!   the next request head (hyper's header timer, which runs from the end of one
//!   response to the complete head of the next).
//! * **Connection cap**: at most `max_connections` connections are open at once,
//!   WebSockets handed to the proxy included (the slot travels with the socket).
//!   At the cap the listener stops accepting, as nginx (`worker_connections`),
//!   HAProxy (`maxconn`) and Go's `LimitListener` do: new connections wait in the
//!   kernel's listen backlog and are served as soon as a slot frees, rather than
//!   being refused while a burst passes; beyond the backlog the kernel pushes back.
//!   Reaching the cap is logged once per burst.
//!
//! Every request carries `ConnectInfo<SocketAddr>` with the client's address, for
//! plain HTTP and HTTPS alike. Shutdown stops accepting, lets in-flight requests
//! finish (up to 10 s) and closes idle connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;

/// How long in-flight requests may run on after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);
/// A cap reached again within this long of the last report belongs to the same burst.
const BURST_QUIET: Duration = Duration::from_secs(60);

/// The listener's limits, from the `[api]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&ApiConfig> for Limits {
    fn from(c: &ApiConfig) -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            max_connections: usize::try_from(c.max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut cap = CapReport::default();
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                cap.reached(limits.max_connections);
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let deadline = Instant::now() + limits.header_read_timeout;
        let _ = tcp.set_nodelay(true);
        let tcp = Slotted {
            io: tcp,
            _slot: permit,
        };
        let (tls, router, shutdown) = (tls.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, peer, router, limits, deadline, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            serve_connection(s, peer, router, limits, deadline, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake within the header timeout")
                        }
                    }
                }
            }
        });
    }
}

/// Logs reaching the connection cap once per burst: again only after
/// [`BURST_QUIET`] without reaching it, with how often it was reached meanwhile.
#[derive(Debug, Default)]
struct CapReport {
    last: Option<Instant>,
    since: u64,
}

impl CapReport {
    fn reached(&mut self, cap: usize) {
        self.since += 1;
        let quiet = self.last.is_none_or(|t| t.elapsed() >= BURST_QUIET);
        if quiet {
            tracing::warn!(
                max_connections = cap,
                times = self.since,
                "connection cap reached: new connections wait in the listen backlog until one closes (raise api.max_connections if this is normal load)"
            );
            self.since = 0;
        }
        self.last = Some(Instant::now());
    }
}

/// Serves one connection: the first complete request head by `deadline`, later
/// ones within the idle timeout, until the client leaves or `shutdown`.
async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    deadline: Instant,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Called by the service for every request: its head is complete by then.
    let headed = Arc::new(Notify::new());
    let svc = {
        let headed = headed.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            headed.notify_one();
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(req.map(axum::body::Body::new)).await
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's header timer runs from the end of one response to the complete
        // head of the next: the keep-alive idle limit. The first head has the
        // shorter deadline below.
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut first_head = true;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = headed.notified(), if first_head => first_head = false,
            _ = tokio::time::sleep_until(deadline), if first_head => {
                tracing::debug!(%peer, "no complete request head within the header timeout; closing");
                return;
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN, conn).await;
                return;
            }
        }
    }
}

/// A connection holding one of the listener's slots until it is dropped, wherever
/// it goes (hyper hands upgraded connections to the proxy).
struct Slotted<S> {
    io: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Slotted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slotted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
