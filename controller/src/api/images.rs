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
use cairn_api::error::{ErrorDetail, OffsetConflict};
use cairn_api::images::{CreateUpload, UploadAnswer};
use serde::Serialize;

use super::{body, ApiError, ApiResult};
use crate::service::images::Appended;
use crate::service::{Caller, Service};
use cairn_api::images::ImageRecord;

/// The header carrying an upload's offset, both ways.
pub const UPLOAD_OFFSET: &str = "upload-offset";

fn with_offset(status: StatusCode, offset: u64, body: impl Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    resp
}

#[utoipa::path(
    post,
    path = "/api/v1/images/uploads",
    tag = "images",
    summary = "Begin (or resume) an image archive upload (admins)",
    request_body = CreateUpload,
    responses((status = 201, description = "a new upload", body = UploadAnswer), (status = 200, description = "the unfinished upload of the same bytes, or the committed image", body = UploadAnswer), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn create_upload(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<CreateUpload>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(b)?;
    let (answer, created) = s.begin_upload(&caller, req.size_bytes, &req.blake3).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_offset(status, answer.offset, answer))
}

#[utoipa::path(
    get,
    path = "/api/v1/images/uploads/{id}",
    tag = "images",
    summary = "Where an upload stands (admins)",
    params(("id" = String, Path, description = "upload id")),
    responses((status = 200, description = "the upload", body = UploadAnswer), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn upload_status(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let a = s.upload_status(&caller, &id)?;
    Ok(with_offset(StatusCode::OK, a.offset, a))
}

/// `PATCH /images/uploads/{id}`: the body is streamed to disk as it arrives.
#[utoipa::path(
    patch,
    path = "/api/v1/images/uploads/{id}",
    tag = "images",
    summary = "Append bytes at Upload-Offset (admins)",
    params(("id" = String, Path, description = "upload id"), ("upload-offset" = u64, Header, description = "the byte of the archive this body starts at")),
    request_body = Vec<u8>,
    responses((status = 200, description = "the upload", body = UploadAnswer), (status = 409, description = "the offset is not the upload's", body = cairn_api::error::OffsetConflict), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn append(
    State(s): State<Arc<Service>>,
    caller: Caller,
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
    match s
        .append_upload(&caller, &id, offset, declared, body.into_data_stream())
        .await?
    {
        Appended::Stored(a) => Ok(with_offset(StatusCode::OK, a.offset, a)),
        Appended::OffsetMismatch { current, message } => Ok(with_offset(
            StatusCode::CONFLICT,
            current,
            OffsetConflict {
                error: ErrorDetail {
                    code: "offset_mismatch".into(),
                    message,
                    fields: vec![],
                    retry_after_secs: None,
                },
                offset: current,
            },
        )),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/images/uploads/{id}/commit",
    tag = "images",
    summary = "Verify and commit an upload (admins)",
    params(("id" = String, Path, description = "upload id")),
    responses((status = 201, description = "the new image", body = ImageRecord), (status = 200, description = "committed before", body = ImageRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn commit(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ImageRecord>)> {
    let (rec, new) = s.commit_upload(&caller, &id).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(rec)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/images/uploads/{id}",
    tag = "images",
    summary = "Cancel an upload (admins)",
    params(("id" = String, Path, description = "upload id")),
    responses((status = 204, description = "cancelled"), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn cancel_upload(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.cancel_upload(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/images",
    tag = "images",
    summary = "Committed image archives (admins)",
    responses((status = 200, description = "images", body = Vec<ImageRecord>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<ImageRecord>>> {
    Ok(Json(s.list_images(&caller)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/images/{archive}",
    tag = "images",
    summary = "One image archive (admins)",
    params(("archive" = String, Path, description = "BLAKE3 of the archive, hex")),
    responses((status = 200, description = "the image", body = ImageRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(archive): Path<String>,
) -> ApiResult<Json<ImageRecord>> {
    Ok(Json(s.image(&caller, &archive)?))
}

/// Refused while an enabled blueprint runs the archive.
#[utoipa::path(
    delete,
    path = "/api/v1/images/{archive}",
    tag = "images",
    summary = "Remove an archive no enabled blueprint runs (admins)",
    params(("archive" = String, Path, description = "BLAKE3 of the archive, hex")),
    responses((status = 200, description = "the removed image", body = ImageRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn remove(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(archive): Path<String>,
) -> ApiResult<Json<ImageRecord>> {
    Ok(Json(s.remove_image(&caller, &archive).await?))
}
