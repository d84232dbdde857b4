//! Prometheus metrics of the controller: what is recorded where, the one
//! process-wide recorder, and its rendering for `GET /metrics` (admins only; the
//! rule is the service's, [`crate::service::Service::metrics`]).
//!
//! Events are counted where they happen through the `metrics` facade: launches and
//! their outcomes in the instance manager, proxied bytes in the proxy's tunnels,
//! store commits in the store (through [`store_commit`]). Point-in-time numbers —
//! hosts by state and standing, instances by state, the launch queue, pulls in
//! flight — are set from the live state just before each scrape ([`refresh`]), so
//! a scrape never shows a number older than itself; the host gauges also follow
//! the registry's liveness tick.
//!
//! | name | kind | meaning |
//! | --- | --- | --- |
//! | `cairn_launches_total{outcome}` | counter | `accepted`: a launch was admitted and queued; `refused`: turned away at admission (a per-user or per-blueprint limit, a group quota: 409 `limit_reached`/`quota_exceeded`); `running`: a launch reached running; `failed`: a launch ended failed before running; `cancelled`: a launch was stopped before it ran. Every accepted launch ends as exactly one of running, failed, cancelled. |
//! | `cairn_launch_to_running_seconds` | histogram | from acceptance to running, per launch |
//! | `cairn_launch_queue_length` | gauge | launches waiting for a host (`queued`) |
//! | `cairn_instances{state}` | gauge | instances by state, terminal ones (`stopped`, `failed`) left out |
//! | `cairn_hosts{state,standing}` | gauge | hosts by liveness (`joining`, `active`, `unreachable`, `lost`) and pool standing (`open`, `draining`, `drained`, `removed`, `quarantined`); every pair is shown, 0 when empty |
//! | `cairn_image_pulls_in_flight` | gauge | image pulls the connected agents report under way (queued for a slot, pulling, loading an archive, waiting to retry) |
//! | `cairn_store_commit_seconds` | histogram | one durable commit (flush) of the controller's store |
//! | `cairn_proxy_requests_total` | counter | requests the proxy forwarded to an instance's app |
//! | `cairn_proxy_bytes_total{direction}` | counter | bytes through the proxy's tunnels: `up` towards the app, `down` from it (HTTP framing and WebSocket traffic included) |
//! | `cairn_proxy_open_tunnels` | gauge | tunnels (QUIC streams to an app) open now, idle keep-alive ones included |
//!
//! One recorder serves the whole process: a test process or `cairn-dev` may run
//! several controllers (and an agent) in one process, and the `metrics` facade has
//! one global recorder. It is installed once ([`install`]); if something else
//! installed a recorder first, `/metrics` says so instead of failing.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::hosts::HostState;
use crate::instances::InstanceState;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

pub const LAUNCHES: &str = "cairn_launches_total";
pub const LAUNCH_TO_RUNNING: &str = "cairn_launch_to_running_seconds";
pub const LAUNCH_QUEUE: &str = "cairn_launch_queue_length";
pub const INSTANCES: &str = "cairn_instances";
pub const HOSTS: &str = "cairn_hosts";
pub const IMAGE_PULLS: &str = "cairn_image_pulls_in_flight";
pub const STORE_COMMIT: &str = "cairn_store_commit_seconds";
pub const TICK: &str = "cairn_tick_seconds";
pub const PROXY_REQUESTS: &str = "cairn_proxy_requests_total";
pub const PROXY_BYTES: &str = "cairn_proxy_bytes_total";
pub const PROXY_TUNNELS: &str = "cairn_proxy_open_tunnels";

/// A launch takes from a second (image present) to many minutes (a large pull,
/// datasets to fetch).
const LAUNCH_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// A store commit is an fsync (sled) or a consensus round trip (etcd): from a
/// fraction of a millisecond to seconds on a struggling disk.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// The controller's periodic pass over hosts and live instances: well under a
/// millisecond when little runs, and it must stay so as history piles up.
const TICK_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Any other `*_seconds` histogram of the process (an in-process agent's container
/// operations, say), so none falls back to a summary.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How a launch ended, or whether it was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
    Running,
    Failed,
    Cancelled,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Refused,
        Outcome::Running,
        Outcome::Failed,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::Running => "running",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

const HOST_STATES: [HostState; 4] = [
    HostState::Joining,
    HostState::Active,
    HostState::Unreachable,
    HostState::Lost,
];
const STANDINGS: [&str; 5] = ["open", "draining", "drained", "removed", "quarantined"];
const LIVE_INSTANCE_STATES: [InstanceState; 7] = [
    InstanceState::Queued,
    InstanceState::Scheduled,
    InstanceState::Preparing,
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Unreachable,
    InstanceState::Stopping,
];

/// The recorder's settings: real histograms (explicit buckets) for every
/// histogram, never summaries, so they aggregate across controllers.
pub fn builder() -> PrometheusBuilder {
    let rules: [(Matcher, &[f64]); 4] = [
        (Matcher::Full(LAUNCH_TO_RUNNING.into()), LAUNCH_BUCKETS),
        (Matcher::Full(STORE_COMMIT.into()), COMMIT_BUCKETS),
        (Matcher::Full(TICK.into()), TICK_BUCKETS),
        (Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS),
    ];
    rules
        .into_iter()
        .fold(PrometheusBuilder::new(), |b, (m, buckets)| {
            // Only an empty bucket list is refused, and none of these is empty.
            match b.set_buckets_for_metric(m, buckets) {
                Ok(b) => b,
                Err(e) => unreachable!("non-empty buckets refused: {e}"),
            }
        })
}

/// The process's exporter.
struct Exporter {
    handle: PrometheusHandle,
    /// Whether ours is the global recorder (false: another was installed first).
    global: bool,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Installs the recorder as the process's global one, once; later calls (another
/// controller in the same process) reuse it.
pub fn install() {
    exporter();
}

fn exporter() -> &'static Exporter {
    EXPORTER.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let global = match metrics::set_global_recorder(recorder) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!("another metrics recorder is installed in this process; /metrics shows nothing of its own");
                false
            }
        };
        if global {
            describe();
            // Histogram samples wait in the recorder until a render or an upkeep
            // folds them in: without scrapes, store commits would pile up.
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
        "# cairn: another metrics recorder was installed in this process first; its metrics are not shown here\n".into()
    }
}

/// Names, help texts, and the series that must show before their first event (a
/// dashboard tells "zero" from "not exported").
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        LAUNCHES,
        "Launches by outcome: accepted (admitted and queued), refused (a limit or quota), running, failed or cancelled (stopped before running)."
    );
    describe_histogram!(
        LAUNCH_TO_RUNNING,
        Unit::Seconds,
        "Time from a launch's acceptance to its instance running."
    );
    describe_gauge!(LAUNCH_QUEUE, "Launches waiting for a host.");
    describe_gauge!(
        INSTANCES,
        "Instances by state (stopped and failed ones left out)."
    );
    describe_gauge!(HOSTS, "Hosts by liveness state and pool standing.");
    describe_gauge!(
        IMAGE_PULLS,
        "Image pulls the connected agents report under way (queued, pulling, loading, retrying)."
    );
    describe_histogram!(
        STORE_COMMIT,
        Unit::Seconds,
        "Time of one durable commit of the controller's store."
    );
    describe_histogram!(
        TICK,
        Unit::Seconds,
        "Time of one pass of the controller's tick over hosts and live instances."
    );
    describe_counter!(
        PROXY_REQUESTS,
        "Requests the proxy forwarded to instances' apps."
    );
    describe_counter!(
        PROXY_BYTES,
        Unit::Bytes,
        "Bytes through the proxy's tunnels: up towards the apps, down from them."
    );
    describe_gauge!(
        PROXY_TUNNELS,
        "Tunnels to instances' apps open now (idle keep-alive ones included)."
    );
    for o in Outcome::ALL {
        metrics::counter!(LAUNCHES, "outcome" => o.as_str()).absolute(0);
    }
    // Registering a histogram is enough for it to show, with a count of 0.
    let _ = metrics::histogram!(LAUNCH_TO_RUNNING);
    let _ = metrics::histogram!(STORE_COMMIT);
    let _ = metrics::histogram!(TICK);
    metrics::counter!(PROXY_REQUESTS).absolute(0);
    for d in ["up", "down"] {
        metrics::counter!(PROXY_BYTES, "direction" => d).absolute(0);
    }
    metrics::gauge!(PROXY_TUNNELS).set(0.0);
    metrics::gauge!(IMAGE_PULLS).set(0.0);
    metrics::gauge!(LAUNCH_QUEUE).set(0.0);
}

/// Handles of the metrics recorded on busy paths, looked up once (after the
/// recorder is installed, so they are bound to it).
struct Handles {
    launches: [Counter; 5],
    launch_to_running: Histogram,
    store_commit: Histogram,
    tick: Histogram,
    proxy_requests: Counter,
    proxy_up: Counter,
    proxy_down: Counter,
    proxy_tunnels: Gauge,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn handles() -> &'static Handles {
    HANDLES.get_or_init(|| {
        install();
        Handles {
            launches: Outcome::ALL.map(|o| metrics::counter!(LAUNCHES, "outcome" => o.as_str())),
            launch_to_running: metrics::histogram!(LAUNCH_TO_RUNNING),
            store_commit: metrics::histogram!(STORE_COMMIT),
            tick: metrics::histogram!(TICK),
            proxy_requests: metrics::counter!(PROXY_REQUESTS),
            proxy_up: metrics::counter!(PROXY_BYTES, "direction" => "up"),
            proxy_down: metrics::counter!(PROXY_BYTES, "direction" => "down"),
            proxy_tunnels: metrics::gauge!(PROXY_TUNNELS),
        }
    })
}

fn launches(o: Outcome) -> &'static Counter {
    // `ALL` lists the outcomes in declaration order.
    &handles().launches[o as usize]
}

/// One durable commit of the store took `elapsed` (the store calls this after each
/// flush).
pub fn store_commit(elapsed: Duration) {
    handles().store_commit.record(elapsed.as_secs_f64());
}

/// One pass of the controller's tick (host liveness and live instances) took
/// `elapsed`.
pub fn tick(elapsed: Duration) {
    handles().tick.record(elapsed.as_secs_f64());
}

/// A launch was admitted and queued.
pub fn launch_accepted() {
    launches(Outcome::Accepted).increment(1);
}

/// A launch was turned away by a limit or a quota.
pub fn launch_refused() {
    launches(Outcome::Refused).increment(1);
}

/// An instance went from `was` to `now`, `age` after its launch was accepted:
/// counts the launches that ended (running, failed, cancelled). Later changes of a
/// running instance (unreachable and back) are not launches.
pub fn instance_changed(was: InstanceState, now: InstanceState, age: Duration) {
    let launching = matches!(
        was,
        InstanceState::Queued
            | InstanceState::Scheduled
            | InstanceState::Preparing
            | InstanceState::Starting
    );
    if !launching {
        return;
    }
    match now {
        InstanceState::Running => {
            launches(Outcome::Running).increment(1);
            handles().launch_to_running.record(age.as_secs_f64());
        }
        InstanceState::Failed => launches(Outcome::Failed).increment(1),
        InstanceState::Stopping | InstanceState::Stopped => {
            launches(Outcome::Cancelled).increment(1)
        }
        _ => {}
    }
}

/// A request was forwarded to an instance's app.
pub fn proxy_request() {
    handles().proxy_requests.increment(1);
}

/// Bytes a tunnel carried since it last reported: `up` to the app, `down` from it.
pub fn proxy_bytes(up: u64, down: u64) {
    let h = handles();
    if up > 0 {
        h.proxy_up.increment(up);
    }
    if down > 0 {
        h.proxy_down.increment(down);
    }
}

/// A tunnel opened (`true`) or closed.
pub fn proxy_tunnel(open: bool) {
    let g = &handles().proxy_tunnels;
    if open {
        g.increment(1.0);
    } else {
        g.decrement(1.0);
    }
}

/// Sets `cairn_hosts` from counts per (state, standing name) and the pulls in
/// flight; every known pair is set, so a pair that empties shows 0 rather than its
/// last value.
pub fn hosts(counts: &HashMap<(HostState, &'static str), usize>, pulls_in_flight: usize) {
    install();
    for state in HOST_STATES {
        for standing in STANDINGS {
            let n = counts.get(&(state, standing)).copied().unwrap_or(0);
            metrics::gauge!(HOSTS, "state" => state.as_str(), "standing" => standing).set(n as f64);
        }
    }
    // A state or standing added later and not listed above still shows.
    for ((state, standing), n) in counts {
        if !HOST_STATES.contains(state) || !STANDINGS.contains(standing) {
            metrics::gauge!(HOSTS, "state" => state.as_str(), "standing" => *standing)
                .set(*n as f64);
        }
    }
    metrics::gauge!(IMAGE_PULLS).set(pulls_in_flight as f64);
}

/// Sets `cairn_instances` and the queue length from the instance manager's counts.
pub fn instances(by_state: &std::collections::BTreeMap<InstanceState, usize>, queued: usize) {
    install();
    for state in LIVE_INSTANCE_STATES {
        let n = by_state.get(&state).copied().unwrap_or(0);
        metrics::gauge!(INSTANCES, "state" => state.as_str()).set(n as f64);
    }
    for (state, n) in by_state {
        if !state.is_terminal() && !LIVE_INSTANCE_STATES.contains(state) {
            metrics::gauge!(INSTANCES, "state" => state.as_str()).set(*n as f64);
        }
    }
    metrics::gauge!(LAUNCH_QUEUE).set(queued as f64);
}

/// Brings the point-in-time gauges up to date from `app`'s live state (before a
/// scrape).
pub fn refresh(app: &crate::app::App) {
    app.registry.publish_metrics();
    let (by_state, queued) = app.instances.gauges();
    instances(&by_state, queued);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_has_help_type_and_real_histogram_buckets() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            metrics::counter!(LAUNCHES, "outcome" => "running").increment(2);
            metrics::histogram!(LAUNCH_TO_RUNNING).record(3.0);
            metrics::histogram!(STORE_COMMIT).record(0.002);
            metrics::histogram!("cairn_other_seconds").record(0.2);
        });
        let text = handle.render();
        assert!(
            text.contains("# HELP cairn_launches_total Launches by outcome"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cairn_launches_total counter"),
            "{text}"
        );
        assert!(
            text.contains("cairn_launches_total{outcome=\"running\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("cairn_launches_total{outcome=\"refused\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cairn_launch_to_running_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("cairn_launch_to_running_seconds_bucket{le=\"2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("cairn_launch_to_running_seconds_bucket{le=\"5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cairn_launch_to_running_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cairn_launch_to_running_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("cairn_store_commit_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        // The fallback keeps every other `_seconds` histogram a histogram.
        assert!(
            text.contains("# TYPE cairn_other_seconds histogram"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "no summaries: {text}");
    }

    /// The value of series `series` (name and labels as rendered) in `text`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_global_recorder_counts_launches_and_shows_store_commits() {
        // Other tests of this process may launch too: counts only grow.
        let before = render();
        let running = "cairn_launches_total{outcome=\"running\"}";
        let count = "cairn_launch_to_running_seconds_count";
        instance_changed(
            InstanceState::Starting,
            InstanceState::Running,
            Duration::from_secs(4),
        );
        store_commit(Duration::from_millis(3));
        let after = render();
        assert!(
            value(&after, running).unwrap_or(0.0) >= value(&before, running).unwrap_or(0.0) + 1.0,
            "{after}"
        );
        assert!(value(&after, count).unwrap_or(0.0) >= 1.0, "{after}");
        assert!(
            value(&after, "cairn_store_commit_seconds_count").unwrap_or(0.0) >= 1.0,
            "{after}"
        );
    }
}
