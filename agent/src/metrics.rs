//! Prometheus metrics of the agent, and the small HTTP endpoint that serves them
//! (`cairn-agent run --metrics-listen ADDR`, off by default).
//!
//! The endpoint has no authentication: bind it to loopback or to a private network
//! that only the monitoring system reaches. It answers `GET /metrics` and nothing
//! else, one request per connection, with a time limit per connection and a bound
//! on connections at once, so a stuck or greedy client cannot hold the agent.
//!
//! | name | kind | meaning |
//! | --- | --- | --- |
//! | `cairn_agent_link_up` | gauge | 1 while the link to the controller is up (welcomed), else 0 |
//! | `cairn_agent_containers{state}` | gauge | Cairn's containers on this host, as the last reconcile pass listed them: `created`, `running`, `exited` |
//! | `cairn_agent_image_pulls_in_flight` | gauge | image pulls (or archive fetches) started and not finished; pre-pulls queued for a slot are not counted |
//! | `cairn_agent_container_ops_seconds{op,outcome}` | histogram | Docker calls of a launch: `op` = `create` or `start`, `outcome` = `ok` or `error` |
//! | `cairn_agent_volume_sync_bytes_total{direction}` | counter | volume bytes on the wire: `up` saved to the controller (chunks and deltas), `down` fetched to restore |
//!
//! The `metrics` facade has one recorder per process. When the agent runs inside
//! another program that installed one first (`cairn-dev` runs a controller in the
//! same process), its metrics go to that recorder and show on that program's
//! endpoint; the names differ from the controller's.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const LINK_UP: &str = "cairn_agent_link_up";
pub const CONTAINERS: &str = "cairn_agent_containers";
pub const IMAGE_PULLS: &str = "cairn_agent_image_pulls_in_flight";
pub const CONTAINER_OPS: &str = "cairn_agent_container_ops_seconds";
pub const VOLUME_SYNC_BYTES: &str = "cairn_agent_volume_sync_bytes_total";

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long one connection may take, request and answer together.
const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// How long a client may take to send its request's head.
const HEADER_TIME: Duration = Duration::from_secs(5);

/// Creating a container is quick; starting one may wait for a slow engine.
const OPS_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The recorder's settings: the histograms are real histograms, not summaries.
pub fn builder() -> PrometheusBuilder {
    match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CONTAINER_OPS.into()), OPS_BUCKETS)
    {
        Ok(b) => b,
        // Only an empty bucket list is refused.
        Err(e) => unreachable!("non-empty buckets refused: {e}"),
    }
}

/// The process's exporter.
struct Exporter {
    handle: PrometheusHandle,
    /// Whether ours is the global recorder (false: another was installed first).
    global: bool,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Installs the recorder as the process's global one, once.
pub fn install() {
    exporter();
}

fn exporter() -> &'static Exporter {
    EXPORTER.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let global = metrics::set_global_recorder(recorder).is_ok();
        if global {
            describe();
            // Histogram samples wait in the recorder until a render or an upkeep
            // folds them in.
            let upkeep = handle.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
            {
                tracing::warn!(error = %e, "no metrics upkeep thread; histograms are folded at scrapes only");
            }
        } else {
            tracing::warn!("another metrics recorder is installed in this process; the agent's metrics go there");
        }
        Exporter { handle, global }
    })
}

/// The process's metrics in the text exposition format.
pub fn render() -> String {
    let e = exporter();
    if e.global {
        e.handle.render()
    } else {
        "# cairn-agent: another metrics recorder was installed in this process first; the agent's metrics are there\n".into()
    }
}

/// Names, help texts, and the series that must show before their first event.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(LINK_UP, "1 while the link to the controller is up.");
    describe_gauge!(
        CONTAINERS,
        "Cairn's containers on this host by state, as last listed."
    );
    describe_gauge!(IMAGE_PULLS, "Image pulls started and not finished.");
    describe_histogram!(
        CONTAINER_OPS,
        Unit::Seconds,
        "Docker calls of a launch (create, start) by outcome."
    );
    describe_counter!(
        VOLUME_SYNC_BYTES,
        Unit::Bytes,
        "Volume bytes on the wire: up saved to the controller, down fetched to restore."
    );
    metrics::gauge!(LINK_UP).set(0.0);
    metrics::gauge!(IMAGE_PULLS).set(0.0);
    for d in ["up", "down"] {
        metrics::counter!(VOLUME_SYNC_BYTES, "direction" => d).absolute(0);
    }
}

/// The link to the controller came up (`true`) or went down.
pub fn link_up(up: bool) {
    metrics::gauge!(LINK_UP).set(if up { 1.0 } else { 0.0 });
}

/// The containers a reconcile pass listed, by state.
pub fn containers(created: usize, running: usize, exited: usize) {
    for (state, n) in [
        ("created", created),
        ("running", running),
        ("exited", exited),
    ] {
        metrics::gauge!(CONTAINERS, "state" => state).set(n as f64);
    }
}

/// Counts one pull in flight for as long as it lives.
#[derive(Debug)]
pub struct PullInFlight(());

impl PullInFlight {
    pub fn start() -> Self {
        metrics::gauge!(IMAGE_PULLS).increment(1.0);
        PullInFlight(())
    }
}

impl Drop for PullInFlight {
    fn drop(&mut self) {
        metrics::gauge!(IMAGE_PULLS).decrement(1.0);
    }
}

/// One Docker call of a launch (`create` or `start`) took `elapsed`.
pub fn container_op(op: &'static str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(CONTAINER_OPS, "op" => op, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// Volume bytes sent to the controller (`up`) or fetched from it (`down`).
pub fn volume_bytes(direction: &'static str, n: u64) {
    metrics::counter!(VOLUME_SYNC_BYTES, "direction" => direction).increment(n);
}

/// Binds the metrics endpoint (at start, so a bad address fails the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    install();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: too many connections; closing one");
            continue;
        };
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(|req| async move {
                        Ok::<_, std::convert::Infallible>(answer(&req))
                    }),
                );
            match tokio::time::timeout(CONNECTION_TIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed")
                }
                Err(_) => tracing::debug!(%peer, "metrics endpoint: connection timed out"),
            }
            drop(permit);
        });
    }
}

/// The answer to one request.
fn answer<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_histograms_are_histograms() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            container_op("create", true, Duration::from_millis(30));
            link_up(true);
            containers(0, 2, 1);
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE cairn_agent_container_ops_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "cairn_agent_container_ops_seconds_bucket{op=\"create\",outcome=\"ok\",le=\"0.05\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("cairn_agent_link_up 1"), "{text}");
        assert!(
            text.contains("cairn_agent_containers{state=\"running\"} 2"),
            "{text}"
        );
        assert!(text.contains("# HELP cairn_agent_link_up"), "{text}");
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_nothing_else() {
        let listener = bind(([127, 0, 0, 1], 0).into()).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, stop.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
        let other = get("/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        stop.cancel();
        server.await.expect("server task");
    }
}
