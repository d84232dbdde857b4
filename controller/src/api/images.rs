//! Pushed image archives over the API (admins).
//!
//! * `POST /images?archive=BLAKE3` with the encoded one-file manifest as an
//!   `application/octet-stream` body — commits an archive whose chunks were sent
//!   (`POST /chunks/missing`, `POST /chunks`): 201 and the image, 200 if it was
//!   committed before, 409 `chunks_missing` saying how many chunks are still to send,
//!   422 when the bytes do not make the hash or not a `docker save` archive.
//! * `GET /images`, `GET /images/{archive}`, `DELETE /images/{archive}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cairn_api::images::CommitImage;

use super::{ApiError, ApiResult};
use crate::service::{Caller, Service};
use cairn_api::images::ImageRecord;

/// The archive's bytes never pass here: only its manifest, read after the caller is
/// known to be an admin, bounded by [`cairn_api::images::MAX_IMAGE_MANIFEST_BYTES`]
/// and by a stall timeout.
#[utoipa::path(
    post,
    path = "/api/v1/images",
    tag = "images",
    summary = "Commit an image archive sent as chunks (admins)",
    params(CommitImage),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the encoded manifest listing the archive as one file"),
    responses((status = 201, description = "the new image", body = ImageRecord), (status = 200, description = "committed before", body = ImageRecord), (status = 409, description = "chunks_missing: send the chunks the manifest lists first", body = cairn_api::error::ErrorBody), (status = 422, description = "hash_mismatch or invalid_archive: the error says why", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn commit(
    State(s): State<Arc<Service>>,
    caller: Caller,
    q: Result<Query<CommitImage>, QueryRejection>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<(StatusCode, Json<ImageRecord>)> {
    s.may_push(&caller)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let manifest = super::datasets::read_body(
        &headers,
        b,
        cairn_api::images::MAX_IMAGE_MANIFEST_BYTES,
        s.body_stall(),
    )
    .await?;
    let (rec, new) = s.commit_image(&caller, &manifest, &q.archive).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(rec)))
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
