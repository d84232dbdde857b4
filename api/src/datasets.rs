//! Datasets (`cairn datasets push`): named trees pushed as content-defined chunks
//! and a manifest; every push that changes something is a new immutable version.
//!
//! A push asks which chunks the controller lacks (`POST /chunks/missing`), sends
//! those in packs (`POST /chunks`), then commits the manifest
//! (`POST /datasets/{name}/versions`). Ids are BLAKE3 hashes, lowercase hex.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Content type of a manifest sent as a delta from one the controller holds
/// (`cairn_shared::chunks::delta::Delta`, postcard), on `POST
/// /api/v1/datasets/{name}/versions`.
pub const MANIFEST_DELTA: &str = "application/vnd.cairn.manifest-delta";

/// Most ids one `POST /api/v1/chunks/missing` may ask about.
pub const MAX_MISSING_QUERY: usize = 16384;
/// Largest body of `POST /api/v1/chunks` (a pack of chunks).
pub const MAX_PACK_BYTES: usize = 32 * 1024 * 1024;
/// A pack frame's header: the 32-byte id, then the length as a big-endian u32.
pub const PACK_FRAME_HEADER: usize = 36;

/// One version of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetVersionView {
    pub name: String,
    pub version: u32,
    /// The manifest's id (BLAKE3 of its encoding), hex.
    pub manifest: String,
    /// Bytes of all files.
    pub bytes: u64,
    pub files: u64,
    pub created_ms: u64,
    pub pushed_by: String,
}

/// A dataset and its versions, oldest first (`GET /api/v1/datasets[/NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetRecord {
    pub name: String,
    pub created_ms: u64,
    pub versions: Vec<DatasetVersionView>,
}

impl DatasetRecord {
    pub fn latest(&self) -> Option<&DatasetVersionView> {
        self.versions.last()
    }
}

/// The answer to a commit: the new version, or (`unchanged`) the latest version,
/// whose manifest is the one committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommitAnswer {
    pub version: DatasetVersionView,
    pub unchanged: bool,
}

/// Body of `POST /api/v1/chunks/missing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MissingQuery {
    /// At most 16384 chunk ids, hex.
    pub ids: Vec<String>,
}

/// Which of the asked ids the controller lacks, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MissingAnswer {
    pub missing: Vec<String>,
}

/// What a pack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackAnswer {
    /// Chunks written now.
    pub stored: u64,
    /// Chunks that were already here.
    pub already: u64,
}
