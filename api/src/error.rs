//! The body of every API error: `{"error": {"code": "...", "message": "..."}}`, with
//! `fields` when a request body had invalid fields. `code` is for programs, `message`
//! for people.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One problem with one field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `not_found`, `invalid_request`, `limit_reached`...
    pub code: String,
    /// For people.
    pub message: String,
    /// Field-level problems of an invalid request body; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
    /// When a throttled request may be tried again (also in `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// The error body of an upload offset conflict (`409 offset_mismatch` on `PATCH
/// /images/uploads/{id}`): the usual error, and the offset to go on from (also in the
/// `Upload-Offset` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OffsetConflict {
    pub error: ErrorDetail,
    pub offset: u64,
}
