//! The agent's end of the link: one mutually authenticated QUIC connection to the
//! controller, kept up forever.
//!
//! [`run`] dials, says Hello, and sends a heartbeat every interval the controller
//! names in its Welcome. When the connection drops it waits with exponential back-off
//! and full jitter, then dials again. Before the client certificate gets old it asks
//! the controller for a new one on a request stream of its own. Heartbeats list the
//! image pulls under way ([`crate::images::ImageManager::progress`]), and the image
//! manager is handed the live connection to fetch uploaded archives on.
//!
//! Some refusals are final: a controller that does not know this host (removed, or a
//! new CA) will not change its mind, so [`run`] returns [`LinkError::Rejected`] instead
//! of retrying forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::backoff::Backoff;
use cairn_shared::framing;
use cairn_shared::identity::{self, CONTROLLER_SERVER_NAME};
use cairn_shared::protocol::{
    application_close, describe_connection_error, AgentMsg, AgentRequest, AgentResponse, CloseCode,
    ControllerMsg, Heartbeat, Hello, Welcome, PROTOCOL_VERSION,
};
use cairn_shared::resources::Isolation;
use tokio_util::sync::CancellationToken;

use crate::datasets::DatasetCache;
use crate::facts::FactsSource;
use crate::images::ImageManager;
use crate::runtime::Workloads;
use crate::state::{AgentState, StateDir};
use cairn_shared::validate::Validate;
use cairn_shared::workload::{ControllerRequest, ControllerResponse, InstanceReport};

/// Settings of the link loop.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Where renewed certificates are saved; `None` keeps them in memory (hollow agents).
    pub state_dir: Option<StateDir>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Renew when less than this fraction of the certificate's lifetime remains.
    pub renew_fraction: f64,
    /// The protocol version put in the Hello. Always [`PROTOCOL_VERSION`] except in
    /// tests of version mismatch.
    pub protocol_version: u32,
    /// The instances of this host; `None` for an agent that only reports facts.
    pub workloads: Option<WorkloadsHandle>,
    /// The image manager whose pulls go into heartbeats and which fetches uploaded
    /// archives on the live connection. `None` uses the one the workloads name
    /// ([`crate::runtime::Workloads::images`]), if any.
    pub images: Option<Arc<ImageManager>>,
}

/// Shared handle to the supervisor, as the link sees it.
#[derive(Clone)]
pub struct WorkloadsHandle(pub Arc<dyn Workloads>);

impl std::fmt::Debug for WorkloadsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadsHandle")
    }
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            state_dir: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            renew_fraction: 1.0 / 3.0,
            protocol_version: PROTOCOL_VERSION,
            workloads: None,
            images: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the controller rejected this host for good ({code}): {reason}")]
    Rejected { code: &'static str, reason: String },
    #[error("{0}")]
    Setup(String),
}

/// How one connection attempt ended.
#[derive(Debug)]
enum SessionEnd {
    /// Shut down on request.
    Shutdown,
    /// Worth retrying after a back-off; `connected` tells whether the link was up.
    Retry { reason: String, connected: bool },
    /// Not worth retrying.
    Fatal(LinkError),
}

/// Keeps the link up until `shutdown` is cancelled.
pub async fn run<F: FactsSource>(
    state: AgentState,
    facts: Arc<F>,
    endpoint: Option<quinn::Endpoint>,
    opts: LinkOptions,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    use tracing::Instrument;
    let span = tracing::info_span!("link", host = %state.config.host_id);
    run_inner(state, facts, endpoint, opts, shutdown)
        .instrument(span)
        .await
}

async fn run_inner<F: FactsSource>(
    mut state: AgentState,
    facts: Arc<F>,
    endpoint: Option<quinn::Endpoint>,
    opts: LinkOptions,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut own_endpoint = None;
    loop {
        let end = match crate::enrol::resolve(&state.config.controller).await {
            Err(e) => SessionEnd::Retry {
                reason: e.to_string(),
                connected: false,
            },
            Ok(addr) => {
                let ep = match (&endpoint, &own_endpoint) {
                    (Some(e), _) => e.clone(),
                    (None, Some(e)) => Clone::clone(e),
                    (None, None) => {
                        let e = crate::enrol::client_endpoint(addr).map_err(|e| {
                            LinkError::Setup(format!("cannot open a UDP socket: {e}"))
                        })?;
                        own_endpoint = Some(e.clone());
                        e
                    }
                };
                session(&ep, addr, &mut state, facts.as_ref(), &opts, &shutdown).await
            }
        };
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Fatal(e) => {
                tracing::error!(error = %e, "giving up");
                return Err(e);
            }
            SessionEnd::Retry { reason, connected } => {
                if connected {
                    backoff.reset();
                }
                let delay = backoff.next_delay(&mut rand::rng());
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "link down");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    if let Some(ep) = own_endpoint {
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    Ok(())
}

fn classify(err: &quinn::ConnectionError, connected: bool) -> SessionEnd {
    let reason = describe_connection_error(err);
    match application_close(err) {
        Some((Some(code @ (CloseCode::UnknownHost | CloseCode::Unauthenticated)), r)) => {
            SessionEnd::Fatal(LinkError::Rejected {
                code: code.as_str(),
                reason: r,
            })
        }
        Some((Some(CloseCode::VersionMismatch), r)) => {
            tracing::error!(reason = %r, "protocol version mismatch; will keep retrying in case the controller is upgraded");
            SessionEnd::Retry { reason, connected }
        }
        _ => SessionEnd::Retry { reason, connected },
    }
}

async fn session<F: FactsSource>(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    state: &mut AgentState,
    facts: &F,
    opts: &LinkOptions,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let client = match identity::agent_client_config(&state.ca_der, &state.cert_der, &state.key_pem)
    {
        Ok(c) => c,
        Err(e) => {
            return SessionEnd::Fatal(LinkError::Setup(format!(
                "bad identity in the state directory: {e}"
            )))
        }
    };
    let connecting = match endpoint.connect_with(client, addr, CONTROLLER_SERVER_NAME) {
        Ok(c) => c,
        Err(e) => {
            return SessionEnd::Retry {
                reason: format!("cannot dial {addr}: {e}"),
                connected: false,
            }
        }
    };
    let conn = tokio::select! {
        c = tokio::time::timeout(Duration::from_secs(15), connecting) => match c {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return classify(&e, false),
            Err(_) => return SessionEnd::Retry { reason: format!("no answer from {addr} within 15 s"), connected: false },
        },
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let end = converse(&conn, state, facts, opts, shutdown).await;
    if matches!(end, SessionEnd::Shutdown) {
        conn.close(CloseCode::Normal.into(), b"agent shutting down");
    }
    end
}

async fn converse<F: FactsSource>(
    conn: &quinn::Connection,
    state: &mut AgentState,
    facts: &F,
    opts: &LinkOptions,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let lost =
        |conn: &quinn::Connection, connected: bool, fallback: String| match conn.close_reason() {
            Some(e) => classify(&e, connected),
            None => SessionEnd::Retry {
                reason: fallback,
                connected,
            },
        };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return classify(&e, false),
    };
    let mut host_facts = facts.host_facts();
    if let Some(name) = &state.config.hostname {
        host_facts.hostname = name.clone();
    }
    let mut isolation = isolation_of(&opts.workloads);
    let hello = Hello {
        protocol_version: opts.protocol_version,
        facts: host_facts,
        capacity: facts.capacity().await,
        runtime: facts.runtime().await,
        isolation: isolation.clone(),
    };
    if let Err(e) = framing::write(&mut send, &hello, framing::MAX_FRAME_LEN).await {
        return lost(conn, false, format!("sending hello: {e}"));
    }
    let welcome = match tokio::time::timeout(
        Duration::from_secs(15),
        framing::read::<_, Welcome>(&mut recv, framing::MAX_FRAME_LEN),
    )
    .await
    {
        Ok(Ok(Some(w))) => w,
        Ok(Ok(None)) => return lost(conn, false, "controller closed the control stream".into()),
        Ok(Err(e)) => {
            // The controller closes the connection with a reason; wait a moment for it.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return lost(conn, false, format!("reading welcome: {e}"));
        }
        Err(_) => return lost(conn, false, "no welcome within 15 s".into()),
    };
    let skew_ms = welcome.controller_time_ms as i64 - cairn_shared::time::now_ms() as i64;
    if skew_ms.abs() > 60_000 {
        tracing::warn!(skew_ms, "this host's clock differs from the controller's by more than a minute; certificates may be refused");
    }
    tracing::info!(
        heartbeat_ms = welcome.heartbeat_interval_ms,
        "connected to controller"
    );
    // Ready for systemd (`Type=notify`) once the link is up; the status line
    // says so on later reconnections too. Without NOTIFY_SOCKET this does nothing.
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("connected to the controller"),
        ],
    );

    // From now on archive fetches go over this connection; the guard takes it back
    // whichever way the conversation ends.
    let images = opts
        .images
        .clone()
        .or_else(|| opts.workloads.as_ref().and_then(|w| w.0.images()));
    if let Some(i) = &images {
        i.set_connection(Some(conn.clone()));
    }
    let datasets = opts.workloads.as_ref().and_then(|w| w.0.datasets());
    if let Some(d) = &datasets {
        d.set_connection(Some(conn.clone()));
    }
    crate::metrics::link_up(true);
    let _connection_guard = ConnectionGuard(images.clone(), datasets.clone());
    let mut readied = datasets.as_ref().map(|d| d.readied());

    let interval = Duration::from_millis(welcome.heartbeat_interval_ms.clamp(100, 600_000));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the Hello counted as the first report
    let mut renew_check = tokio::time::interval(
        Duration::from_secs(3600)
            .min(interval * 12)
            .max(Duration::from_secs(1)),
    );
    let mut seq = 0u64;

    // The control stream is read by a task of its own: a frame read is not
    // cancel-safe, so it must not sit in the select below.
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::channel::<Result<ControllerMsg, String>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let r = framing::read::<_, ControllerMsg>(&mut recv, framing::MAX_FRAME_LEN).await;
            let end = !matches!(r, Ok(Some(_)));
            let item = match r {
                Ok(Some(m)) => Ok(m),
                Ok(None) => Err("controller closed the control stream".to_string()),
                Err(e) => Err(format!("control stream: {e}")),
            };
            if msg_tx.send(item).await.is_err() || end {
                break;
            }
        }
    });
    let _reader_guard = AbortOnDrop(reader);

    let workloads = opts.workloads.clone();
    if let Some(w) = &workloads {
        let full = AgentMsg::Instances {
            full: true,
            reports: w.0.snapshot(),
        };
        if let Err(e) = framing::write(&mut send, &full, framing::MAX_FRAME_LEN).await {
            return lost(conn, true, format!("sending instance reports: {e}"));
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            _ = renew_check.tick() => {
                if let Err(e) = maybe_renew(conn, state, opts).await {
                    tracing::warn!(error = %e, "certificate renewal failed; will retry");
                }
            }
            _ = ticker.tick() => {
                seq += 1;
                isolation = isolation_of(&workloads);
                let hb = heartbeat(seq, facts, &images, &datasets, isolation.clone(), launch_queue_of(&workloads)).await;
                if let Err(e) = framing::write(&mut send, &hb, framing::MAX_FRAME_LEN).await {
                    return lost(conn, true, format!("sending heartbeat: {e}"));
                }
            }
            _ = dataset_readied(&mut readied) => {
                // A version just became ready: say so now, not a heartbeat later.
                seq += 1;
                let hb = heartbeat(seq, facts, &images, &datasets, isolation.clone(), launch_queue_of(&workloads)).await;
                if let Err(e) = framing::write(&mut send, &hb, framing::MAX_FRAME_LEN).await {
                    return lost(conn, true, format!("sending heartbeat: {e}"));
                }
            }
            _ = wait_changed(&workloads) => {
                if let Some(w) = &workloads {
                    for m in report_messages(w.0.drain()) {
                        if let Err(e) = framing::write(&mut send, &m, framing::MAX_FRAME_LEN).await {
                            return lost(conn, true, format!("sending instance reports: {e}"));
                        }
                    }
                }
                // The controller places instances by isolation: a change (the runtime
                // prepared after the Hello) goes out now, not a heartbeat later.
                if isolation_of(&workloads) != isolation {
                    seq += 1;
                    isolation = isolation_of(&workloads);
                    let hb = heartbeat(seq, facts, &images, &datasets, isolation.clone(), launch_queue_of(&workloads)).await;
                    if let Err(e) = framing::write(&mut send, &hb, framing::MAX_FRAME_LEN).await {
                        return lost(conn, true, format!("sending heartbeat: {e}"));
                    }
                }
            }
            stream = conn.accept_bi() => match stream {
                Ok((s, r)) => {
                    let w = workloads.clone();
                    tokio::spawn(async move { serve_request(w, s, r).await });
                }
                Err(e) => return classify(&e, true),
            },
            msg = msg_rx.recv() => match msg {
                Some(Ok(ControllerMsg::Noop)) => {}
                Some(Ok(ControllerMsg::Desired(update))) => {
                    if let Err(e) = update.validate() {
                        tracing::warn!(error = %e, "ignoring invalid desired state");
                        continue;
                    }
                    let applied = workloads.as_ref().map(|w| w.0.apply(update)).unwrap_or(true);
                    if !applied {
                        tracing::info!("missed a desired-state version; asking for the full set");
                        if let Err(e) = framing::write(&mut send, &AgentMsg::ResyncDesired, framing::MAX_FRAME_LEN).await {
                            return lost(conn, true, format!("asking for resync: {e}"));
                        }
                    }
                }
                Some(Err(reason)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
                    return lost(conn, true, reason);
                }
                None => return lost(conn, true, "control stream reader ended".into()),
            },
        }
    }
}

/// Queued reports as messages the controller accepts: at most
/// [`MAX_DESIRED`](cairn_shared::workload::MAX_DESIRED) each. A host stopping
/// thousands of instances at once queues more than that between two sends, and
/// one oversized message would be refused as garbled and cost the link.
fn report_messages(reports: Vec<InstanceReport>) -> Vec<AgentMsg> {
    reports
        .chunks(cairn_shared::workload::MAX_DESIRED)
        .map(|c| AgentMsg::Instances {
            full: false,
            reports: c.to_vec(),
        })
        .collect()
}

/// Launches waiting for the host's container slots; none without a supervisor.
fn launch_queue_of(workloads: &Option<WorkloadsHandle>) -> u32 {
    workloads.as_ref().map_or(0, |w| w.0.launch_queue())
}

/// The supervisor's isolation; an agent without one runs nothing, so has none.
fn isolation_of(workloads: &Option<WorkloadsHandle>) -> Isolation {
    workloads
        .as_ref()
        .map(|w| w.0.isolation())
        .unwrap_or_default()
}

async fn heartbeat<F: FactsSource>(
    seq: u64,
    facts: &F,
    images: &Option<Arc<ImageManager>>,
    datasets: &Option<Arc<DatasetCache>>,
    isolation: Isolation,
    launch_queue: u32,
) -> AgentMsg {
    AgentMsg::Heartbeat(Heartbeat {
        seq,
        capacity: facts.capacity().await,
        runtime: facts.runtime().await,
        pulls: images.as_ref().map(|i| i.progress()).unwrap_or_default(),
        isolation,
        datasets: datasets.as_ref().map(|d| d.ready()).unwrap_or_default(),
        launch_queue,
    })
}

/// Resolves when the supervisor has queued reports (never, without one). Dropping it
/// unresolved loses nothing: tokio hands an unconsumed notification on.
async fn dataset_readied(readied: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let ok = match readied {
        Some(r) => r.changed().await.is_ok(),
        None => false,
    };
    if !ok {
        // No cache, or it is gone: nothing will ever be readied.
        std::future::pending::<()>().await;
    }
}

async fn wait_changed(workloads: &Option<WorkloadsHandle>) {
    match workloads {
        Some(w) => w.0.changed().notified().await,
        None => std::future::pending().await,
    }
}

/// Tells the image manager and the dataset cache (and the metrics) the connection
/// is gone when dropped.
struct ConnectionGuard(Option<Arc<ImageManager>>, Option<Arc<DatasetCache>>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        crate::metrics::link_up(false);
        if let Some(i) = &self.0 {
            i.set_connection(None);
        }
        if let Some(d) = &self.1 {
            d.set_connection(None);
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the agent waits for an instance's app to accept a tunnel connection.
const TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one request the controller opened a stream for.
async fn serve_request(
    workloads: Option<WorkloadsHandle>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req = match framing::read::<_, ControllerRequest>(&mut recv, 64 * 1024).await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let resp = match (req, workloads) {
        (ControllerRequest::Logs { instance, tail }, Some(w)) => {
            match w.0.logs(instance, tail.min(100_000)).await {
                Ok(text) => ControllerResponse::Logs { text },
                Err(message) => ControllerResponse::Error { message },
            }
        }
        (ControllerRequest::Tunnel { instance }, Some(w)) => {
            use tracing::Instrument;
            let span = tracing::debug_span!("tunnel", %instance);
            return tunnel(&w, instance, send, recv).instrument(span).await;
        }
        (_, None) => ControllerResponse::Error {
            message: "this agent runs no instances".into(),
        },
    };
    if framing::write(&mut send, &resp, framing::MAX_FRAME_LEN)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

/// Connects a proxy stream to a running instance's app and copies bytes both ways
/// until both directions are finished.
async fn tunnel(
    workloads: &WorkloadsHandle,
    instance: cairn_shared::ids::InstanceId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let refuse = |message: String| ControllerResponse::Error { message };
    let tcp = match workloads.0.app_address(&instance) {
        None => Err(refuse(format!(
            "instance {instance} is not running on this host"
        ))),
        Some(addr) => {
            match tokio::time::timeout(TUNNEL_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(refuse(format!("cannot connect to the app at {addr}: {e}"))),
                Err(_) => Err(refuse(format!(
                    "the app at {addr} did not accept a connection within {} s",
                    TUNNEL_CONNECT_TIMEOUT.as_secs()
                ))),
            }
        }
    };
    let mut tcp = match tcp {
        Ok(s) => s,
        Err(resp) => {
            if framing::write(&mut send, &resp, framing::MAX_FRAME_LEN)
                .await
                .is_ok()
            {
                let _ = send.finish();
            }
            return;
        }
    };
    // Small writes (WebSocket frames, keystrokes in a terminal) must not wait for
    // Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    if framing::write(
        &mut send,
        &ControllerResponse::TunnelOpen,
        framing::MAX_FRAME_LEN,
    )
    .await
    .is_err()
    {
        return;
    }
    let mut quic = tokio::io::join(recv, send);
    match tokio::io::copy_bidirectional(&mut quic, &mut tcp).await {
        Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel ended"),
    }
}

/// Renews the client certificate if less than `renew_fraction` of its life is left.
async fn maybe_renew(
    conn: &quinn::Connection,
    state: &mut AgentState,
    opts: &LinkOptions,
) -> Result<(), String> {
    let now = (cairn_shared::time::now_ms() / 1000) as i64;
    let Some((remaining, lifetime)) = state.cert_remaining(now) else {
        return Err("cannot read the current certificate".into());
    };
    if remaining as f64 > lifetime as f64 * opts.renew_fraction {
        return Ok(());
    }
    tracing::info!(remaining_s = remaining, "renewing client certificate");
    let hostname = state.config.host_id.to_string();
    let (key_pem, csr_der) = identity::new_key_and_csr(&hostname).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| describe_connection_error(&e))?;
    framing::write(
        &mut send,
        &AgentRequest::RenewCertificate { csr_der },
        64 * 1024,
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        framing::read::<_, AgentResponse>(&mut recv, 64 * 1024),
    )
    .await
    .map_err(|_| "no answer within 30 s".to_string())?
    .map_err(|e| e.to_string())?
    .ok_or("the controller closed the stream without an answer")?;
    match resp {
        AgentResponse::Refused { message, .. } => Err(format!("refused: {message}")),
        AgentResponse::ImageStream { .. }
        | AgentResponse::Manifest { .. }
        | AgentResponse::ManifestDelta { .. }
        | AgentResponse::Chunks => Err("the controller answered with a data stream".into()),
        AgentResponse::Missing { .. }
        | AgentResponse::Stored { .. }
        | AgentResponse::Signatures { .. }
        | AgentResponse::Committed(_) => Err("the controller answered another request".into()),
        AgentResponse::Certificate { cert_der } => {
            if identity::host_id_of(&cert_der).ok().as_ref() != Some(&state.config.host_id)
                || !identity::cert_matches_key(&cert_der, &key_pem)
            {
                return Err(
                    "the controller returned a certificate that does not match the request".into(),
                );
            }
            let mut next = state.clone();
            next.cert_der = cert_der;
            next.key_pem = key_pem;
            if let Some(dir) = &opts.state_dir {
                next.save_cert(dir).map_err(|e| e.to_string())?;
            }
            *state = next;
            let not_after = state
                .cert_remaining(now)
                .map(|(r, _)| r)
                .unwrap_or_default();
            tracing::info!(valid_for_s = not_after, "client certificate renewed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_shared::workload::InstancePhase;

    #[test]
    fn many_reports_go_out_as_several_messages_the_controller_accepts() {
        let report = |_| InstanceReport {
            id: cairn_shared::ids::InstanceId::generate(),
            phase: InstancePhase::Starting,
        };
        assert!(report_messages(vec![]).is_empty());
        let msgs = report_messages((0..10_000).map(report).collect());
        let sizes: Vec<usize> = msgs
            .iter()
            .map(|m| match m {
                AgentMsg::Instances { full, reports } => {
                    assert!(!full);
                    reports.len()
                }
                other => panic!("not reports: {other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![4096, 4096, 1808]);
        for m in &msgs {
            m.validate().unwrap();
        }
    }
}
