//! Uploaded image archives over the API (admins): a resumable upload in the manner of
//! tus, and the committed archives.
//!
//! * `POST /images/uploads` `{size_bytes, blake3}` — 201 and a new upload, 200 and the
//!   unfinished upload of the same bytes (a re-run `push` resumes it), or 200 with
//!   `done: true` and the image when the archive is already committed.
//! * `PATCH /images/uploads/{id}` with `Upload-Offset: N` — appends the streamed body;
//!   `N` must be the upload's length (else 409 with the current `offset`).
//! * `GET`/`HEAD /images/uploads/{id}` — where the upload stands (`Upload-Offset`).
//! * `POST /images/uploads/{id}/commit` — verifies and commits; 201 and the image.
//! * `DELETE /images/uploads/{id}` — cancels an upload.
//! * `GET /images`, `GET /images/{archive}`, `DELETE /images/{archive}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_shared::images::ImageSource;
use serde::{Deserialize, Serialize};

use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::images::archives::{ArchivesError, Begin, ImageRecord, UploadStatus};

/// The header carrying an upload's offset, both ways.
pub const UPLOAD_OFFSET: &str = "upload-offset";

impl From<ArchivesError> for ApiError {
    fn from(e: ArchivesError) -> Self {
        use ArchivesError as E;
        let (status, code) = match &e {
            E::UploadNotFound(_) | E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::TooLarge { .. } | E::PastEnd { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            E::OffsetMismatch { .. } => (StatusCode::CONFLICT, "offset_mismatch"),
            E::Busy(_) => (StatusCode::CONFLICT, "busy"),
            E::Incomplete { .. } => (StatusCode::CONFLICT, "incomplete"),
            E::TooManyUploads(_) => (StatusCode::CONFLICT, "limit_reached"),
            E::HashMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "hash_mismatch"),
            E::Inspect(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive"),
            E::Body { .. } => (StatusCode::BAD_REQUEST, "body_interrupted"),
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                tracing::error!(error = %e, "image upload: disk full");
                return ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    "the controller's disk is full; remove unused images (`cairn images rm`) or free space, then push again",
                );
            }
            E::Io { .. } | E::Store(_) => return ApiError::internal(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The answer about an upload: where it stands, or (`done`) the committed image.
#[derive(Debug, Serialize)]
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

fn with_offset(status: StatusCode, offset: u64, body: impl Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    resp
}

/// Body of `POST /images/uploads`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    pub size_bytes: u64,
    pub blake3: String,
}

pub async fn create_upload(
    State(app): State<Arc<App>>,
    Admin(p): Admin,
    b: Result<Json<CreateUpload>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = b.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = cairn_shared::time::now_ms();
    let begun = app
        .archives
        .begin(&req.blake3, req.size_bytes, p.name(), now)?;
    app.store.flush().await.map_err(ApiError::internal)?;
    Ok(match begun {
        Begin::Created(s) => with_offset(StatusCode::CREATED, s.offset, UploadAnswer::from(s)),
        Begin::Resumed(s) => {
            tracing::info!(upload = %s.id, offset = s.offset, size_bytes = s.size_bytes, "image upload resumed");
            with_offset(StatusCode::OK, s.offset, UploadAnswer::from(s))
        }
        Begin::Committed(r) => with_offset(StatusCode::OK, r.size_bytes, UploadAnswer::from(r)),
    })
}

pub async fn upload_status(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = app.archives.status(&id)?;
    Ok(with_offset(StatusCode::OK, s.offset, UploadAnswer::from(s)))
}

/// The error body of an offset conflict: the usual error, and the offset to go on
/// from (also in the `Upload-Offset` header).
#[derive(Serialize)]
struct Conflict {
    error: ConflictDetail,
    offset: u64,
}

#[derive(Serialize)]
struct ConflictDetail {
    code: &'static str,
    message: String,
}

/// `PATCH /images/uploads/{id}`: the body is streamed to disk as it arrives.
pub async fn append(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let offset = headers
        .get(UPLOAD_OFFSET)
        .ok_or_else(|| {
            ApiError::bad_request(
                "the Upload-Offset header is required: the byte of the archive this body starts at",
            )
        })?
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("Upload-Offset must be a whole number of bytes"))?;
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("invalid Content-Length"))?,
        ),
    };
    let result = app
        .archives
        .append(
            &id,
            offset,
            declared,
            body.into_data_stream(),
            cairn_shared::time::now_ms(),
        )
        .await;
    match result {
        Ok(s) => Ok(with_offset(StatusCode::OK, s.offset, UploadAnswer::from(s))),
        Err(e @ ArchivesError::OffsetMismatch { current, .. }) => Ok(with_offset(
            StatusCode::CONFLICT,
            current,
            Conflict {
                error: ConflictDetail {
                    code: "offset_mismatch",
                    message: e.to_string(),
                },
                offset: current,
            },
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn commit(
    State(app): State<Arc<App>>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ImageRecord>)> {
    let (rec, new) = app
        .archives
        .commit(&id, p.name(), cairn_shared::time::now_ms())
        .await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(rec)))
}

pub async fn cancel_upload(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.archives.cancel(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(State(app): State<Arc<App>>, _: Admin) -> ApiResult<Json<Vec<ImageRecord>>> {
    Ok(Json(app.archives.list()?))
}

fn not_found(archive: &str) -> ApiError {
    ApiError::from(ArchivesError::NotFound(archive.chars().take(80).collect()))
}

pub async fn get(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(archive): Path<String>,
) -> ApiResult<Json<ImageRecord>> {
    app.archives
        .get(&archive)
        .map(Json)
        .ok_or_else(|| not_found(&archive))
}

/// Refused while an enabled blueprint runs the archive: new instances of it would
/// find nothing to fetch.
pub async fn remove(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(archive): Path<String>,
) -> ApiResult<Json<ImageRecord>> {
    if app.archives.get(&archive).is_none() {
        return Err(not_found(&archive));
    }
    let users: Vec<String> = app
        .blueprints
        .list()
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|b| b.spec.enabled)
        .filter(|b| {
            b.spec.resolved.as_ref().is_some_and(|r| {
                matches!(&r.source, ImageSource::Controller { archive: a, .. } if *a == archive)
            })
        })
        .map(|b| b.spec.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!(
                "image archive {archive} is used by enabled blueprint(s) {}; disable them or point them at another image first",
                users.join(", ")
            ),
        ));
    }
    let rec = app.archives.remove(&archive)?;
    app.store.flush().await.map_err(ApiError::internal)?;
    Ok(Json(rec))
}
