//! `GET /api/v1/autoscaler`: what the launch queue waits for per pool, and the
//! autoscaler's recent decisions with their reasons.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use cairn_shared::ids::HostId;

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AutoscalerView {
    /// Per pool name (`(no matching pool)` for requests no pool can take).
    pub waiting: BTreeMap<String, Waiting>,
    /// Newest first.
    pub decisions: Vec<Decision>,
    /// Servers a cloud provider is creating or created, until their host is
    /// `active` (and while it is, until the server is deleted).
    #[serde(default)]
    pub servers: Vec<ServerInFlight>,
    /// Per pool with a cloud provider: its failures and back-off.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderHealth>,
}

/// Where a server asked of a cloud provider stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerPhase {
    /// Created; the cloud has not reported it running yet.
    Spawning,
    /// Running; its agent has not enrolled yet.
    Joining,
    /// Its agent enrolled: a host of the pool.
    Active,
}

/// A server a cloud provider created for a pool. Never carries its join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerInFlight {
    pub pool: String,
    /// The cloud's server id.
    pub id: String,
    pub name: String,
    pub phase: ServerPhase,
    /// The cloud's status word (`BUILD`, `ACTIVE`, ...).
    pub status: String,
    pub created_ms: u64,
    pub active_ms: Option<u64>,
    pub joined_ms: Option<u64>,
    /// Deleted as failed if not `active` by then.
    pub deadline_ms: u64,
    pub host: Option<HostId>,
}

/// A cloud provider's record for one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProviderHealth {
    pub provider: String,
    /// Failures since the last host joined.
    pub failures_in_a_row: u32,
    /// Every failure since the controller started.
    pub failures: u64,
    pub last_error: Option<String>,
    /// No server is created before this (back-off); 0 if not holding.
    pub backoff_until_ms: u64,
}

/// What waits in the queue for one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Waiting {
    /// Requests waiting.
    pub waiting: usize,
    /// What they need in all.
    pub memory_bytes: u64,
    pub millicpus: u64,
}

/// What the autoscaler did to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScaleAction {
    /// Ask the provider for `count` more hosts.
    Create,
    /// Open a draining host again instead of creating one.
    Undrain,
    /// Drain an idle host before removing it.
    Drain,
    /// Remove a drained host and destroy it.
    Remove,
    /// The pool needs `count` more hosts its provider cannot create (a static
    /// pool): a note for an operator, with the provider's words as the outcome.
    Short,
    /// A server the provider created never became a host: deleted, its console
    /// log's end in the outcome.
    Failed,
}

impl ScaleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleAction::Create => "create",
            ScaleAction::Undrain => "undrain",
            ScaleAction::Drain => "drain",
            ScaleAction::Remove => "remove",
            ScaleAction::Short => "short",
            ScaleAction::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ScaleAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Decision {
    pub at_ms: u64,
    pub pool: String,
    pub action: ScaleAction,
    /// The host acted on (undrain, drain, remove).
    pub host: Option<HostId>,
    /// Hosts asked for (create).
    pub count: Option<u32>,
    pub reason: String,
    /// What carrying it out gave: `ok` or the error.
    pub outcome: String,
}
