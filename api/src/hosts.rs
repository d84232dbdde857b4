//! Hosts as the API shows them: liveness state and its transitions, standing in the
//! pool, and the body of a drain request.
//!
//! The state machines that move these states live in the controller; these are the
//! states themselves, which the controller also stores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use cairn_shared::ids::HostId;
use cairn_shared::images::{PullPhase, PullProgress};
use cairn_shared::resources::{Capacity, HostFacts, Isolation, RuntimeFacts};

/// Whether a host is reachable.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Enrolled, but its agent has not connected yet.
    Joining,
    /// Connected and heartbeating.
    Active,
    /// No link, or heartbeats missed; may come back.
    Unreachable,
    /// Unreachable for longer than the lost threshold.
    Lost,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Joining => "joining",
            HostState::Active => "active",
            HostState::Unreachable => "unreachable",
            HostState::Lost => "lost",
        }
    }
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of liveness and why it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostTransition {
    pub at_ms: u64,
    pub from: HostState,
    pub to: HostState,
    pub reason: String,
}

/// Where a host stands in the pool: `{"state": "open"}`, `{"state": "draining",
/// "deadline_ms": …}`, …
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Standing {
    /// Takes new instances (if live).
    #[default]
    Open,
    /// Takes no new instances; running ones finish, or are stopped at the deadline.
    Draining { deadline_ms: Option<u64> },
    /// Drained: empty, taking nothing. Can be removed or opened again.
    Drained,
    /// Removed from the pool; its agent is refused from now on.
    Removed,
    /// Too many launches failed in a row; open again at `until_ms`.
    Quarantined { until_ms: u64 },
}

impl Standing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Standing::Open => "open",
            Standing::Draining { .. } => "draining",
            Standing::Drained => "drained",
            Standing::Removed => "removed",
            Standing::Quarantined { .. } => "quarantined",
        }
    }
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pool part of a host: its standing and launch-failure tracking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
pub struct PoolState {
    #[serde(default)]
    pub standing: Standing,
    /// Launch failures since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Quarantines in a row (sets the back-off).
    #[serde(default)]
    pub quarantines: u32,
    /// The last launch failure, for admins.
    #[serde(default)]
    pub last_failure: Option<String>,
}

impl PoolState {
    /// Whether the scheduler may place here (liveness permitting).
    pub fn open(&self) -> bool {
        self.standing == Standing::Open
    }
}

/// One change of a host's standing (`from` and `to` are [`Standing::as_str`] words).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct PoolNote {
    pub at_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// A host (`GET /api/v1/hosts[/ID]`, and the answer to drain, undrain and remove).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub id: HostId,
    pub hostname: String,
    pub state: HostState,
    pub state_since_ms: u64,
    /// Why the last liveness change happened.
    pub state_reason: Option<String>,
    pub last_seen_ms: u64,
    /// Whether the agent's connection is open now.
    pub connected: bool,
    pub enrolled_ms: u64,
    pub labels: BTreeMap<String, String>,
    pub facts: Option<HostFacts>,
    pub capacity: Option<Capacity>,
    pub runtime: Option<RuntimeFacts>,
    /// `pending`, `enforced`, or `{"failed": {"error": …}}`: instances go to a host
    /// whose isolation failed only in pools that allow it.
    #[serde(default)]
    pub isolation: Isolation,
    /// Expiry of the newest client certificate issued to the host.
    pub cert_not_after_unix: i64,
    pub remote_addr: Option<String>,
    /// Liveness changes, newest last.
    pub transitions: Vec<HostTransition>,
    pub pool: PoolState,
    /// Changes of standing, newest last.
    pub pool_history: Vec<PoolNote>,
    /// Image pulls under way or recently failed, from the last heartbeat.
    pub pulls: Vec<PullProgress>,
    /// Dataset versions the host holds ready (their manifests, BLAKE3 hex), from
    /// the last heartbeat.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Launches waiting for the host's container slots, from the last heartbeat
    /// (the scheduler sends new launches elsewhere while it is long).
    #[serde(default)]
    pub launch_queue: u32,
}

impl HostView {
    /// How many of the host's pulls failed for good.
    pub fn failed_pulls(&self) -> usize {
        self.pulls
            .iter()
            .filter(|p| matches!(p.phase, PullPhase::Failed { .. }))
            .count()
    }
}

/// Body of `POST /api/v1/hosts/{id}/drain`; an empty body means no deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Stop instances still running this long after the drain began (at most 30
    /// days).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}
