//! Uploaded image archives (`cairn images push`): the committed archive, and the
//! resumable upload (in the manner of tus) that brings it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A committed archive (`GET /api/v1/images[/ARCHIVE]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageRecord {
    /// BLAKE3 of the archive, lowercase hex: its name on disk and on the link.
    pub archive: String,
    pub size_bytes: u64,
    /// `sha256:<hex of the image config>`: what Docker calls the image after loading.
    pub image_id: String,
    /// The archive's `RepoTags`; empty for an image saved by id.
    pub tags: Vec<String>,
    pub uploaded_ms: u64,
    pub uploaded_by: String,
}

/// Body of `POST /api/v1/images/uploads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    pub size_bytes: u64,
    /// BLAKE3 of the whole archive, lowercase hex.
    pub blake3: String,
}

/// The answer about an upload: where it stands, or (`done`) the committed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadAnswer {
    /// Absent when `done`: the archive is already committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub blake3: String,
    pub size_bytes: u64,
    /// Bytes received so far: where the next `PATCH` starts.
    pub offset: u64,
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
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
