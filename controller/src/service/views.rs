//! What operations answer with: the API's JSON shapes, built here once so the
//! REST API and the web pages show the same facts (time left, app kind, queue
//! position, secrets only to the owner).

use cairn_shared::ids::InstanceId;
use serde::{Deserialize, Serialize};

use crate::blueprints::AppKind;
use crate::blueprints::BlueprintRecord;
use crate::images::archives::{ImageRecord, UploadStatus};
use crate::instances::state::Transition;
use crate::instances::InstanceState;
use crate::users::Role;

#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub kind: Option<AppKind>,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: InstanceId,
    pub owner: String,
    pub blueprint: String,
    pub revision: u32,
    pub state: InstanceState,
    pub state_reason: Option<String>,
    pub host: Option<String>,
    pub address: Option<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Seconds until the lifetime runs out (0 once past).
    pub time_left_secs: u64,
    pub transitions: Vec<Transition>,
    pub app: AppView,
    /// Place in the launch queue (1 = next) while it waits for capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoginResponse {
    pub token: String,
    pub token_id: String,
    pub user: String,
    pub role: Role,
    pub expires_ms: u64,
}

/// One of a user's API tokens (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
}

/// A join token just made: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedTokenView {
    pub token: String,
    pub id: String,
    pub expires_ms: u64,
    pub uses: u32,
    pub ca_sha256: String,
}

/// A join token as listed.
#[derive(Debug, Clone, Serialize)]
pub struct JoinTokenView {
    pub id: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub used_by: Vec<String>,
}

/// The answer to a refresh.
#[derive(Debug, Clone, Serialize)]
pub struct Refreshed {
    /// Whether the image now resolves to something else (and a new revision was
    /// saved).
    pub changed: bool,
    pub blueprint: BlueprintRecord,
}

/// The answer about an upload: where it stands, or (`done`) the committed image.
#[derive(Debug, Clone, Serialize)]
pub struct UploadAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub blake3: String,
    pub size_bytes: u64,
    pub offset: u64,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
}

impl From<UploadStatus> for UploadAnswer {
    fn from(s: UploadStatus) -> Self {
        UploadAnswer {
            id: Some(s.id),
            blake3: s.blake3,
            size_bytes: s.size_bytes,
            offset: s.offset,
            done: false,
            image: None,
        }
    }
}

impl From<ImageRecord> for UploadAnswer {
    fn from(r: ImageRecord) -> Self {
        UploadAnswer {
            id: None,
            blake3: r.archive.clone(),
            size_bytes: r.size_bytes,
            offset: r.size_bytes,
            done: true,
            image: Some(r),
        }
    }
}

/// `/healthz`: liveness for anyone; the counts only for admins.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    /// `writable`: a write was made durable just now.
    pub store: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<std::collections::HashMap<crate::hosts::HostState, usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<std::collections::BTreeMap<InstanceState, usize>>,
}

/// What the launch queue waits for in one pool.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub waiting: usize,
    pub memory_bytes: u64,
    pub millicpus: u64,
}

/// `GET /api/v1/autoscaler`.
#[derive(Debug, Clone, Serialize)]
pub struct AutoscalerView {
    pub waiting: std::collections::BTreeMap<String, Waiting>,
    pub decisions: Vec<crate::autoscaler::LoggedDecision>,
}
