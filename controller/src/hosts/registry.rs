//! The table of hosts: records, live connections, persistence.
//!
//! Every change of state is written to the store and flushed before anything depends
//! on it. Heartbeats only refresh capacity and last-seen; those are written in batches
//! ([`Registry::flush_dirty`]) because writing every heartbeat of a thousand hosts
//! buys nothing — after a restart the liveness thresholds, not a last-seen a few
//! seconds fresher, decide what happens to a silent host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cairn_shared::ids::HostId;
use cairn_shared::protocol::CloseCode;
use cairn_shared::resources::{Capacity, HostFacts, Isolation, RuntimeFacts};
use serde::{Deserialize, Serialize};

use super::pool::{PoolAction, PoolEvent, PoolMachine, PoolRefusal, PoolState, QuarantinePolicy};
use super::state::{Event, HostState, Liveness, Thresholds, Transition};
use crate::store::{Store, StoreError, Tree};

/// How many transitions a record keeps for display.
const HISTORY: usize = 32;

/// A host as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub id: HostId,
    pub hostname: String,
    pub enrolled_ms: u64,
    /// Id of the join token used to enrol.
    pub join_token: String,
    pub liveness: Liveness,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub facts: Option<HostFacts>,
    #[serde(default)]
    pub capacity: Option<Capacity>,
    #[serde(default)]
    pub runtime: Option<RuntimeFacts>,
    /// Whether the agent fences instances in, as it last said.
    #[serde(default)]
    pub isolation: Isolation,
    /// Expiry of the newest client certificate issued to this host.
    pub cert_not_after_unix: i64,
    #[serde(default)]
    pub remote_addr: Option<String>,
    /// Standing in the pool: open, draining, drained, removed, quarantined.
    #[serde(default)]
    pub pool: PoolState,
    /// Changes of standing, newest last.
    #[serde(default)]
    pub pool_history: Vec<PoolNote>,
    /// Image pulls under way or recently failed, from the last heartbeat. Not
    /// stored: they mean nothing once the agent is gone.
    #[serde(skip)]
    pub pulls: Vec<cairn_shared::images::PullProgress>,
    /// Dataset versions (manifests) the agent holds ready, from the last heartbeat,
    /// for the scheduler's data-locality bonus and the pre-fetch plan. Not stored:
    /// the next heartbeat says it again.
    #[serde(skip)]
    pub datasets: Vec<cairn_shared::chunks::ChunkId>,
    /// Launches waiting in the agent's queue for container operations, from the
    /// last heartbeat, for the scheduler's busy-host penalty. Not stored.
    #[serde(skip)]
    pub launch_queue: u32,
}

/// A change of standing, and the host as the API shows it, are the API model's.
pub use cairn_api::hosts::{HostView, PoolNote};

impl Entry {
    fn note(&mut self, actions: &[PoolAction], now_ms: u64) {
        for a in actions {
            if let PoolAction::Changed { from, to, reason } = a {
                tracing::info!(host = %self.record.id, from, to, %reason, "host standing changed");
                self.record.pool_history.push(PoolNote {
                    at_ms: now_ms,
                    from: from.to_string(),
                    to: to.to_string(),
                    reason: reason.clone(),
                });
            }
        }
        let extra = self.record.pool_history.len().saturating_sub(HISTORY);
        self.record.pool_history.drain(..extra);
    }
}

impl HostRecord {
    pub fn new(
        id: HostId,
        hostname: String,
        join_token: String,
        cert_not_after_unix: i64,
        now_ms: u64,
    ) -> Self {
        HostRecord {
            id,
            hostname,
            enrolled_ms: now_ms,
            join_token,
            liveness: Liveness::enrolled(now_ms),
            transitions: vec![],
            labels: Default::default(),
            facts: None,
            capacity: None,
            runtime: None,
            isolation: Isolation::Pending,
            cert_not_after_unix,
            remote_addr: None,
            pool: PoolState::default(),
            pool_history: vec![],
            pulls: vec![],
            datasets: vec![],
            launch_queue: 0,
        }
    }

    fn record(&mut self, t: Transition) {
        tracing::info!(host = %self.id, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "host state changed");
        self.transitions.push(t);
        if self.transitions.len() > HISTORY {
            let extra = self.transitions.len() - HISTORY;
            self.transitions.drain(..extra);
        }
    }
}

/// Takes the isolation a host reports; logs and returns whether it changed.
fn note_isolation(r: &mut HostRecord, isolation: Isolation) -> bool {
    if r.isolation == isolation {
        return false;
    }
    match &isolation {
        Isolation::Failed { error } => {
            tracing::warn!(host = %r.id, %error, "host reports that its instances are not isolated; only pools with allow_unisolated place instances there")
        }
        other => tracing::info!(host = %r.id, isolation = ?other, "host isolation changed"),
    }
    r.isolation = isolation;
    true
}

impl From<&HostRecord> for HostView {
    fn from(r: &HostRecord) -> Self {
        HostView {
            id: r.id.clone(),
            hostname: r.hostname.clone(),
            state: r.liveness.state,
            state_since_ms: r.liveness.since_ms,
            state_reason: r.transitions.last().map(|t| t.reason.clone()),
            last_seen_ms: r.liveness.last_seen_ms,
            connected: r.liveness.connected,
            enrolled_ms: r.enrolled_ms,
            labels: r.labels.clone(),
            facts: r.facts.clone(),
            capacity: r.capacity.clone(),
            runtime: r.runtime.clone(),
            isolation: r.isolation.clone(),
            cert_not_after_unix: r.cert_not_after_unix,
            remote_addr: r.remote_addr.clone(),
            transitions: r.transitions.clone(),
            pool: r.pool.clone(),
            pool_history: r.pool_history.clone(),
            pulls: r.pulls.clone(),
            datasets: r.datasets.iter().map(|m| m.to_hex()).collect(),
            launch_queue: r.launch_queue,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("host {0} is not enrolled with this controller")]
    UnknownHost(HostId),
    #[error(transparent)]
    Refused(#[from] PoolRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sends messages down a host's control stream (a writer task owns the stream).
pub type ControlSender = tokio::sync::mpsc::UnboundedSender<cairn_shared::protocol::ControllerMsg>;

/// Whether a heartbeat's runtime facts show the same images (what placement and the
/// pre-pull plan read) as the record's.
fn same_images(old: Option<&RuntimeFacts>, new: &RuntimeFacts) -> bool {
    match (old, new) {
        (Some(RuntimeFacts::Docker(a)), RuntimeFacts::Docker(b)) => {
            a.images == b.images && a.image_count == b.image_count
        }
        (Some(RuntimeFacts::Unavailable { .. }), RuntimeFacts::Unavailable { .. }) => true,
        _ => false,
    }
}

struct Entry {
    record: HostRecord,
    /// The live connection and its generation number.
    conn: Option<(u64, quinn::Connection, ControlSender)>,
    dirty: bool,
}

/// The hosts of this controller.
pub struct Registry {
    hosts: Mutex<HashMap<HostId, Entry>>,
    store: Store,
    thresholds: Thresholds,
    quarantine: QuarantinePolicy,
    generation: AtomicU64,
    /// Bumped by every change the scheduler and the pre-pull plans see (a host
    /// joining, connecting, changing state, standing, capacity, images or datasets),
    /// not by heartbeats that only say a host is alive: an idle pool costs the tick
    /// nothing ([`Registry::shape`]).
    shape: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Loads every host from the store. No host has a connection yet.
    pub fn load(store: Store, thresholds: Thresholds) -> Result<Self, StoreError> {
        let records: Vec<HostRecord> = store.all(Tree::Hosts)?;
        // A heartbeat that said only "alive" is not written (see `heartbeat`), so the
        // stored last-seen time may be old. A restarted controller has heard nobody
        // yet: hosts are unreachable at the first tick (as they always were) until
        // they dial again, but the time to `lost` counts from now, not from a
        // heartbeat long ago.
        let started_ms = cairn_shared::time::now_ms();
        let heard = started_ms.saturating_sub(thresholds.unreachable_after_ms.saturating_add(1));
        let hosts = records
            .into_iter()
            .map(|mut record| {
                record.liveness.last_seen_ms = record.liveness.last_seen_ms.max(heard);
                (
                    record.id.clone(),
                    Entry {
                        record,
                        conn: None,
                        dirty: false,
                    },
                )
            })
            .collect();
        Ok(Registry {
            hosts: Mutex::new(hosts),
            store,
            thresholds,
            quarantine: QuarantinePolicy::default(),
            generation: AtomicU64::new(1),
            shape: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Entry>> {
        // A panic while holding the lock leaves the map consistent (every mutation is
        // a whole-field assignment), so a poisoned lock is still usable.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// The shape generation: unchanged means every host looks to the scheduler as it
    /// did (see the field).
    pub fn shape(&self) -> u64 {
        self.shape.load(Ordering::SeqCst)
    }

    fn reshaped(&self) {
        self.shape.fetch_add(1, Ordering::SeqCst);
    }

    /// Adds a newly enrolled host, durably.
    pub async fn enrolled(&self, record: HostRecord) -> Result<(), RegistryError> {
        self.store.put(Tree::Hosts, record.id.as_str(), &record)?;
        self.lock().insert(
            record.id.clone(),
            Entry {
                record,
                conn: None,
                dirty: false,
            },
        );
        self.reshaped();
        self.store.flush().await?;
        Ok(())
    }

    /// Whether a host is enrolled.
    pub fn contains(&self, id: &HostId) -> bool {
        self.lock().contains_key(id)
    }

    /// Records an accepted Hello on `conn`; returns the connection's generation. A
    /// previous connection of the same host is closed as replaced.
    pub async fn connected(
        &self,
        id: &HostId,
        conn: quinn::Connection,
        tx: ControlSender,
        hello: cairn_shared::protocol::Hello,
        now_ms: u64,
    ) -> Result<u64, RegistryError> {
        let cairn_shared::protocol::Hello {
            facts,
            capacity,
            runtime,
            isolation,
            ..
        } = hello;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut hosts = self.lock();
            let entry = hosts
                .get_mut(id)
                .ok_or_else(|| RegistryError::UnknownHost(id.clone()))?;
            if let Some((_, old, _)) = entry.conn.take() {
                old.close(
                    CloseCode::Replaced.into(),
                    b"replaced by a newer connection of the same host",
                );
            }
            let r = &mut entry.record;
            r.remote_addr = Some(conn.remote_address().to_string());
            r.hostname = facts.hostname.clone();
            r.labels = facts.labels.clone();
            r.facts = Some(facts);
            r.capacity = Some(capacity);
            r.runtime = Some(runtime);
            note_isolation(r, isolation);
            r.pulls = vec![];
            r.datasets = vec![];
            r.launch_queue = 0;
            if let Some(t) = r
                .liveness
                .apply(&Event::Connected, now_ms, &self.thresholds)
            {
                r.record(t);
            }
            entry.conn = Some((generation, conn, tx));
            entry.dirty = false;
            self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
        }
        self.reshaped();
        self.store.flush().await?;
        Ok(generation)
    }

    /// Records a heartbeat on connection `generation`.
    pub async fn heartbeat(
        &self,
        id: &HostId,
        generation: u64,
        heartbeat: cairn_shared::protocol::Heartbeat,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let cairn_shared::protocol::Heartbeat {
            capacity,
            runtime,
            pulls,
            isolation,
            mut datasets,
            launch_queue,
            ..
        } = heartbeat;
        // The link bounds the list; sorted and deduplicated here so the view is stable.
        datasets.truncate(cairn_shared::protocol::MAX_CACHED_DATASETS);
        datasets.sort_unstable();
        datasets.dedup();
        let changed = {
            let mut hosts = self.lock();
            let entry = hosts
                .get_mut(id)
                .ok_or_else(|| RegistryError::UnknownHost(id.clone()))?;
            if entry.conn.as_ref().map(|(g, _, _)| *g) != Some(generation) {
                // A late heartbeat from a replaced connection: ignore it.
                return Ok(());
            }
            let r = &mut entry.record;
            // What the scheduler and the plans see; free memory, load, pulls and
            // the container list change with every heartbeat and are not part of it.
            let looks_different = r.capacity.as_ref().is_none_or(|c| {
                (c.cpus, c.memory_total_bytes) != (capacity.cpus, capacity.memory_total_bytes)
            }) || !same_images(r.runtime.as_ref(), &runtime)
                || r.datasets != datasets;
            r.capacity = Some(capacity);
            r.runtime = Some(runtime);
            r.pulls = pulls;
            r.datasets = datasets;
            // The queue steers placement (a snapshot refresh) but is not worth a write.
            let queue_changed = r.launch_queue != launch_queue;
            r.launch_queue = launch_queue;
            // A change of isolation decides placement: written now, like a
            // transition, not with the next batch.
            let isolation_changed = note_isolation(r, isolation);
            let t = r
                .liveness
                .apply(&Event::Heartbeat, now_ms, &self.thresholds);
            // Only what looks different is written with the next batch: a heartbeat
            // that says "alive" costs no write (liveness' last-seen time is reset
            // when the controller starts; see `load`).
            entry.dirty |= looks_different;
            let transitioned = t.is_some();
            if let Some(t) = t {
                entry.record.record(t);
            }
            if looks_different || queue_changed || transitioned || isolation_changed {
                self.reshaped();
            }
            if transitioned || isolation_changed {
                entry.dirty = false;
                self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
            }
            transitioned || isolation_changed
        };
        if changed {
            self.store.flush().await?;
        }
        Ok(())
    }

    /// Records the end of connection `generation` (ignored if a newer one replaced it).
    pub async fn disconnected(
        &self,
        id: &HostId,
        generation: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        {
            let mut hosts = self.lock();
            let Some(entry) = hosts.get_mut(id) else {
                return Ok(());
            };
            if entry.conn.as_ref().map(|(g, _, _)| *g) != Some(generation) {
                return Ok(());
            }
            entry.conn = None;
            let ev = Event::Disconnected {
                reason: reason.to_owned(),
            };
            if let Some(t) = entry.record.liveness.apply(&ev, now_ms, &self.thresholds) {
                entry.record.record(t);
            }
            entry.dirty = false;
            self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
        }
        self.reshaped();
        self.store.flush().await?;
        Ok(())
    }

    /// Advances every host's liveness to `now_ms`; returns the transitions made.
    pub async fn tick(&self, now_ms: u64) -> Result<Vec<(HostId, Transition)>, RegistryError> {
        let mut made = vec![];
        {
            let mut hosts = self.lock();
            for (id, entry) in hosts.iter_mut() {
                if let Some(t) = entry
                    .record
                    .liveness
                    .apply(&Event::Tick, now_ms, &self.thresholds)
                {
                    entry.record.record(t.clone());
                    entry.dirty = false;
                    self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
                    made.push((id.clone(), t));
                }
            }
        }
        if !made.is_empty() {
            self.reshaped();
            self.store.flush().await?;
        }
        self.publish_metrics();
        Ok(made)
    }

    /// Sets the host gauges (`cairn_hosts` by state and standing, pulls in flight
    /// on connected hosts) from the table as it is now.
    pub fn publish_metrics(&self) {
        use cairn_shared::images::PullPhase;
        let mut counts: HashMap<(HostState, &'static str), usize> = HashMap::new();
        let mut pulls = 0;
        for e in self.lock().values() {
            let key = (e.record.liveness.state, e.record.pool.standing.as_str());
            *counts.entry(key).or_default() += 1;
            if e.conn.is_some() {
                pulls += e
                    .record
                    .pulls
                    .iter()
                    .filter(|p| !matches!(p.phase, PullPhase::Failed { .. }))
                    .count();
            }
        }
        crate::metrics::hosts(&counts, pulls);
    }

    /// Writes records changed only by heartbeats.
    pub fn flush_dirty(&self) -> Result<usize, RegistryError> {
        let mut n = 0;
        let mut hosts = self.lock();
        for (id, entry) in hosts.iter_mut().filter(|(_, e)| e.dirty) {
            self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
            entry.dirty = false;
            n += 1;
        }
        Ok(n)
    }

    pub async fn cert_renewed(
        &self,
        id: &HostId,
        not_after_unix: i64,
    ) -> Result<(), RegistryError> {
        {
            let mut hosts = self.lock();
            let entry = hosts
                .get_mut(id)
                .ok_or_else(|| RegistryError::UnknownHost(id.clone()))?;
            entry.record.cert_not_after_unix = not_after_unix;
            self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Queues a message for a host's control stream; false if it is not connected.
    pub fn send(&self, id: &HostId, msg: cairn_shared::protocol::ControllerMsg) -> bool {
        self.lock()
            .get(id)
            .and_then(|e| e.conn.as_ref())
            .is_some_and(|(_, _, tx)| tx.send(msg).is_ok())
    }

    /// The live connection of a host, for requests to its agent.
    pub fn connection(&self, id: &HostId) -> Option<quinn::Connection> {
        self.lock()
            .get(id)
            .and_then(|e| e.conn.as_ref())
            .map(|(_, c, _)| c.clone())
    }

    /// Closes a host's connection, if it has one, with a close code and reason its
    /// agent logs.
    pub fn disconnect(&self, id: &HostId, code: CloseCode, reason: &str) {
        if let Some(conn) = self.connection(id) {
            conn.close(code.into(), reason.as_bytes());
        }
    }

    pub fn list(&self) -> Vec<HostView> {
        let hosts = self.lock();
        let mut out: Vec<HostView> = hosts.values().map(|e| HostView::from(&e.record)).collect();
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.id.cmp(&b.id)));
        out
    }

    pub fn get(&self, id: &HostId) -> Option<HostView> {
        self.lock().get(id).map(|e| HostView::from(&e.record))
    }

    pub fn count_by_state(&self) -> HashMap<HostState, usize> {
        let mut m = HashMap::new();
        for e in self.lock().values() {
            *m.entry(e.record.liveness.state).or_default() += 1;
        }
        m
    }

    /// Applies a pool event to one host: an admin request (`admin`, refusals
    /// returned) or an observation (launch results). Returns what the caller must do.
    pub async fn pool_event(
        &self,
        id: &HostId,
        event: PoolEvent,
        admin: bool,
        now_ms: u64,
    ) -> Result<Vec<PoolAction>, RegistryError> {
        let actions = {
            let mut hosts = self.lock();
            let entry = hosts
                .get_mut(id)
                .ok_or_else(|| RegistryError::UnknownHost(id.clone()))?;
            let before = entry.record.pool.clone();
            let actions = if admin {
                entry.record.pool.request(event, now_ms, &self.quarantine)?
            } else {
                entry.record.pool.apply(event, now_ms, &self.quarantine)
            };
            if entry.record.pool != before {
                entry.note(&actions, now_ms);
                self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
                self.reshaped();
            }
            actions
        };
        self.store.flush().await?;
        Ok(actions)
    }

    /// Advances every host's standing to `now_ms` (quarantines ending, drains
    /// finishing); `instances` counts what still holds a place on each host.
    pub async fn pool_tick(
        &self,
        now_ms: u64,
        instances: &HashMap<HostId, u32>,
    ) -> Result<Vec<(HostId, PoolAction)>, RegistryError> {
        let mut out = vec![];
        {
            let mut hosts = self.lock();
            for (id, entry) in hosts.iter_mut() {
                let n = instances.get(id).copied().unwrap_or(0);
                let before = entry.record.pool.clone();
                let actions = entry.record.pool.apply(
                    PoolEvent::Tick { instances: n },
                    now_ms,
                    &self.quarantine,
                );
                if entry.record.pool != before {
                    entry.note(&actions, now_ms);
                    self.store.put(Tree::Hosts, id.as_str(), &entry.record)?;
                    self.reshaped();
                }
                out.extend(actions.into_iter().map(|a| (id.clone(), a)));
            }
        }
        if out
            .iter()
            .any(|(_, a)| matches!(a, PoolAction::Changed { .. }))
        {
            self.store.flush().await?;
        }
        Ok(out)
    }

    /// Whether a host was removed from the pool (its agent is refused).
    pub fn is_removed(&self, id: &HostId) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|e| e.record.pool.standing == super::pool::Standing::Removed)
    }

    /// Closes every live connection (controller shutdown).
    pub fn close_all(&self, code: CloseCode, reason: &str) {
        for e in self.lock().values_mut() {
            if let Some((_, c, _)) = e.conn.take() {
                c.close(code.into(), reason.as_bytes());
            }
        }
        self.reshaped();
    }

    /// Each host's liveness state, without copying its record (the tick's view).
    pub fn states(&self) -> HashMap<HostId, HostState> {
        self.lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.record.liveness.state))
            .collect()
    }
}
