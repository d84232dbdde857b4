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
}

impl ScaleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleAction::Create => "create",
            ScaleAction::Undrain => "undrain",
            ScaleAction::Drain => "drain",
            ScaleAction::Remove => "remove",
            ScaleAction::Short => "short",
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
