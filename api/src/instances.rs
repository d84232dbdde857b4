//! Instances: their lifecycle states, the view the API shows, and the request bodies
//! of launch and extend.
//!
//! ```text
//! queued → scheduled → preparing → starting → running → stopping → stopped
//!    └──────────┴───────────┴───────────┴──────────┴──────→ failed (with a reason)
//!                                          running ⇄ unreachable (host lost, back)
//! ```

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use cairn_shared::ids::{HostId, InstanceId};

use crate::blueprints::AppKind;

/// Where an instance is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Queued,
    Scheduled,
    Preparing,
    Starting,
    Running,
    /// Its host passed the lost threshold while it ran: it may still be running
    /// there (its files unsaved since the last checkpoint). It resumes as running
    /// when the host returns, unless its owner relaunched it elsewhere.
    Unreachable,
    Stopping,
    Stopped,
    Failed,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Queued => "queued",
            InstanceState::Scheduled => "scheduled",
            InstanceState::Preparing => "preparing",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Unreachable => "unreachable",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
        }
    }

    /// No further transitions.
    pub fn is_terminal(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Failed)
    }

    /// Done for: it will not become `running` any more.
    pub fn is_over(self) -> bool {
        self == InstanceState::Stopping || self.is_terminal()
    }

    /// Holds a place on a host (counts against its reserved capacity).
    pub fn holds_host(self) -> bool {
        matches!(
            self,
            InstanceState::Scheduled
                | InstanceState::Preparing
                | InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Unreachable
                | InstanceState::Stopping
        )
    }

    /// The host should be running it: it holds a place and is not being stopped.
    pub fn desired_on_host(self) -> bool {
        self.holds_host() && self != InstanceState::Stopping
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step in an instance's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    pub state: InstanceState,
    pub at_ms: u64,
    pub reason: Option<String>,
}

/// How to reach the app inside an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppView {
    /// `None` when the blueprint revision is gone.
    pub kind: Option<AppKind>,
    /// A path on the controller (`/i/ID/`).
    pub url: String,
    /// Jupyter's token; shown only to the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// RStudio's password; shown only to the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// An instance (`/api/v1/instances[/ID]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: InstanceId,
    pub owner: String,
    pub blueprint: String,
    pub revision: u32,
    pub state: InstanceState,
    pub state_reason: Option<String>,
    pub host: Option<HostId>,
    /// `IP:PORT` of the app on the host's Cairn network, once running.
    pub address: Option<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Seconds until the lifetime runs out (0 once past), by the controller's clock.
    pub time_left_secs: u64,
    pub transitions: Vec<Transition>,
    pub app: AppView,
    /// Place in the launch queue (1 = next) while it waits for capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// The dataset versions it mounts, fixed when it was launched.
    #[serde(default)]
    pub datasets: Vec<InstanceDataset>,
    /// The user's volume it writes (`NAME`), if its blueprint keeps files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The group it was launched through (whose quotas it counts against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its last request or WebSocket message through the proxy, either way
    /// (pings do not count); absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_ms: Option<u64>,
    /// When it will be stopped for idleness unless used, once that is near.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop_ms: Option<u64>,
}

/// A dataset version an instance mounts (read-only), as resolved at launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceDataset {
    pub name: String,
    pub version: u32,
    /// Absolute path inside the container.
    pub path: String,
    /// Bytes of the version's files.
    pub bytes: u64,
    /// The version's manifest (BLAKE3, hex).
    pub manifest: String,
}

impl std::fmt::Display for InstanceDataset {
    /// `NAME@VERSION → PATH`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} \u{2192} {}", self.name, self.version, self.path)
    }
}

/// Body of `POST /api/v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    pub blueprint: String,
    /// The volume to restore and save (default: one named after the blueprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

/// Body of `POST /api/v1/instances/{id}/extend` (admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    /// From 1 to 2592000 (30 days).
    pub seconds: u64,
}

/// Query of `GET /api/v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Admins: everyone's instances, not only their own.
    #[serde(default)]
    pub all: bool,
}

/// Query of `GET /api/v1/instances/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Lines from the end; 200 when absent, at most 100000.
    #[serde(default = "default_tail")]
    pub tail: u32,
}

fn default_tail() -> u32 {
    200
}

impl Default for LogsQuery {
    fn default() -> Self {
        LogsQuery {
            tail: default_tail(),
        }
    }
}
