//! Users' persistent volumes (`/api/v1/volumes`): a volume and its snapshots.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Was (or is) the head.
    Saved,
    /// Saved by an instance that had lost the volume's lease (a relaunch
    /// elsewhere while its host was cut off) or started from an older head: kept
    /// beside the head, never made head by itself.
    Conflict,
    /// Would have emptied the volume or deleted too many of its files: kept aside
    /// until its owner or an admin makes it the head.
    Halted,
}

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    pub id: u64,
    pub status: SnapshotStatus,
    /// Whether it is the head (what the next launch restores).
    pub head: bool,
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub bytes: u64,
    pub files: u64,
    pub created_ms: u64,
    /// The instance that saved it, or the user who restored it as head.
    pub by: String,
    /// Its manifest (BLAKE3, hex).
    pub manifest: String,
}

/// A volume (`GET /api/v1/volumes[/NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeView {
    pub owner: String,
    pub name: String,
    pub created_ms: u64,
    pub generation: u64,
    /// Bytes of the head's files.
    pub bytes: u64,
    pub files: u64,
    /// The instance that may write it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use_by: Option<String>,
    /// Conflict and halted snapshots waiting for a decision.
    pub attention: usize,
    /// Oldest first.
    pub snapshots: Vec<SnapshotView>,
}

/// Body of `POST /api/v1/volumes/{name}/head`: make a snapshot the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHead {
    pub snapshot: u64,
}
