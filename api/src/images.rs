//! Uploaded image archives (`cairn images push`): the committed archive, and the
//! commit that makes one from chunks already sent.
//!
//! A push cuts the archive into content-defined chunks, asks which the controller
//! lacks (`POST /api/v1/chunks/missing`), sends those (`POST /api/v1/chunks`), then
//! commits a one-file manifest of them (`POST /api/v1/images?archive=…`), so two
//! versions of an image that share base layers share their chunks, on the wire and
//! on the controller.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Largest encoded manifest `POST /api/v1/images` accepts (a 20 GiB archive at the
/// default chunk size lists about 330 000 chunks, about 13 MiB).
pub const MAX_IMAGE_MANIFEST_BYTES: usize = 64 * 1024 * 1024;

/// A committed archive (`GET /api/v1/images[/ARCHIVE]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageRecord {
    /// BLAKE3 of the whole archive, lowercase hex: its name on the link, and what
    /// agents verify after fetching it.
    pub archive: String,
    /// The id (BLAKE3, hex) of the one-file manifest listing the archive's chunks
    /// in the chunk store.
    #[serde(default)]
    pub manifest: String,
    pub size_bytes: u64,
    /// `sha256:<hex of the image config>`: what Docker calls the image after loading.
    pub image_id: String,
    /// The archive's `RepoTags`; empty for an image saved by id.
    pub tags: Vec<String>,
    pub uploaded_ms: u64,
    pub uploaded_by: String,
}

/// Query of `POST /api/v1/images` (the body is the encoded manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CommitImage {
    /// BLAKE3 of the whole archive, lowercase hex: checked against the bytes the
    /// manifest's chunks make.
    pub archive: String,
}
