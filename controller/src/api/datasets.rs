//! Datasets and the chunk upload over the API. Pushing and removing are for admins;
//! reading for any signed-in user.
//!
//! * `POST /chunks/missing` `{ids}` (≤ 16384) — `{missing}`, the ids not stored.
//! * `POST /chunks` — a pack (`application/octet-stream`, ≤ 32 MiB) of frames
//!   `[32-byte id][u32 BE length][bytes]`; each is verified against its id, and a bad
//!   one refuses the pack with 400 naming it. `{stored, already}`.
//! * `POST /datasets/{name}/versions` — the encoded manifest, or (content type
//!   [`MANIFEST_DELTA`]) its delta from one the controller holds; 201 and the new
//!   version, or 200 with `unchanged: true` when it is the latest version's.
//! * `GET /datasets`, `GET /datasets/{name}`, `DELETE /datasets/{name}`.
//! * `GET /datasets/{name}/versions/{v}/manifest` — the encoded manifest (`v` a
//!   number or `latest`); `DELETE /datasets/{name}/versions/{v}`.
//!
//! Octet-stream bodies are read whole (they are bounded), each read waiting at most
//! the listener's idle timeout, so a client that stops sending mid-body lets go of
//! its request as an idle connection would.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use cairn_api::datasets::{
    CommitAnswer, DatasetRecord, DatasetVersionView, MissingAnswer, MissingQuery, PackAnswer,
    MANIFEST_DELTA, MAX_PACK_BYTES,
};
use futures::StreamExt;

use super::{body, ApiError, ApiResult};
use crate::service::{Caller, Kind, Service, ServiceError};

/// Reads a whole bounded body: refused up front when its declared length is over
/// `limit`, or as soon as more than `limit` bytes arrive; a read that waits longer
/// than `stall` ends the request.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    stall: Duration,
) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError(ServiceError::new(
            Kind::TooLarge,
            "too_large",
            format!("the body is over the limit of {limit} bytes"),
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|d| d > limit as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |d| d as usize).min(limit));
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(stall, stream.next())
            .await
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "the body stopped arriving for {} s; send it again",
                    stall.as_secs()
                ))
            })?;
        match next {
            None => break,
            Some(Ok(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Some(Err(e)) => {
                return Err(ApiError(ServiceError::new(
                    Kind::Invalid,
                    "body_interrupted",
                    format!("reading the body failed: {e}"),
                )))
            }
        }
    }
    Ok(buf.freeze())
}

/// A version in a path: a number from 1, or `latest`.
fn version_of(v: &str) -> ApiResult<Option<u32>> {
    if v == "latest" {
        return Ok(None);
    }
    match v.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(ApiError::bad_request(format!(
            "{:?} is not a version: a number from 1, or 'latest'",
            v.chars().take(40).collect::<String>()
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/chunks/missing",
    tag = "datasets",
    summary = "Which chunks the controller lacks (admins)",
    request_body = MissingQuery,
    responses((status = 200, description = "the ids not stored, in the order asked", body = MissingAnswer), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn missing(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<MissingQuery>, JsonRejection>,
) -> ApiResult<Json<MissingAnswer>> {
    let q = body(b)?;
    Ok(Json(s.missing_chunks(&caller, &q.ids).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/chunks",
    tag = "datasets",
    summary = "Store a pack of chunks (admins)",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "frames of [32-byte id][u32 big-endian length][bytes], at most 32 MiB"),
    responses((status = 200, description = "stored", body = PackAnswer), (status = 400, description = "a frame is malformed or a chunk does not match its id (named in the message and in `fields`); nothing of it was stored", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn pack(
    State(s): State<Arc<Service>>,
    caller: Caller,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Json<PackAnswer>> {
    // Who may push is checked before a byte of the body is read.
    s.may_push(&caller)?;
    let bytes = read_body(&headers, b, MAX_PACK_BYTES, s.body_stall()).await?;
    Ok(Json(s.store_pack(&caller, bytes).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/datasets/{name}/versions",
    tag = "datasets",
    summary = "Commit a manifest as the next version of a dataset (admins)",
    params(("name" = String, Path, description = "dataset name")),
    request_body(description = "the encoded manifest (application/octet-stream), or its delta from a manifest the controller holds (application/vnd.cairn.manifest-delta, cairn_shared::chunks::delta)", content(
        (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/vnd.cairn.manifest-delta")
    )),
    responses((status = 201, description = "the new version", body = CommitAnswer), (status = 200, description = "the manifest is the latest version's: nothing created", body = CommitAnswer), (status = 409, description = "`chunks_missing`: upload them first; `base_unknown`: the delta's base is not here, send the whole manifest", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn commit(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<(StatusCode, Json<CommitAnswer>)> {
    s.may_push(&caller)?;
    let limit = crate::datasets::max_manifest_bytes();
    let delta = headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == MANIFEST_DELTA.as_bytes());
    let bytes = read_body(&headers, b, limit, s.body_stall()).await?;
    let a = if delta {
        s.commit_dataset_delta(&caller, &name, &bytes).await?
    } else {
        s.commit_dataset(&caller, &name, &bytes).await?
    };
    let status = if a.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(a)))
}

#[utoipa::path(
    get,
    path = "/api/v1/datasets",
    tag = "datasets",
    summary = "Every dataset with its versions",
    responses((status = 200, description = "datasets", body = Vec<DatasetRecord>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<DatasetRecord>>> {
    Ok(Json(s.list_datasets(&caller)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/datasets/{name}",
    tag = "datasets",
    summary = "One dataset with its versions",
    params(("name" = String, Path, description = "dataset name")),
    responses((status = 200, description = "the dataset", body = DatasetRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<DatasetRecord>> {
    Ok(Json(s.dataset(&caller, &name)?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/datasets/{name}",
    tag = "datasets",
    summary = "Remove a dataset and every version (admins)",
    params(("name" = String, Path, description = "dataset name")),
    responses((status = 200, description = "the removed versions", body = Vec<DatasetVersionView>), (status = 409, description = "`dataset_in_use`: an instance not yet ended mounts it or an enabled blueprint names it (listed in the message)", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn remove(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<DatasetVersionView>>> {
    Ok(Json(s.remove_dataset(&caller, &name, None).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/datasets/{name}/versions/{version}",
    tag = "datasets",
    summary = "Remove one version of a dataset (admins)",
    params(("name" = String, Path, description = "dataset name"), ("version" = u32, Path, description = "version number")),
    responses((status = 200, description = "the removed version", body = Vec<DatasetVersionView>), (status = 409, description = "`dataset_in_use`: an instance not yet ended mounts it or an enabled blueprint pins it (listed in the message)", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn remove_version(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Vec<DatasetVersionView>>> {
    let Some(v) = version_of(&version)? else {
        return Err(ApiError::bad_request(
            "name the version to remove by its number (NAME@3); to remove the whole dataset, DELETE /api/v1/datasets/NAME",
        ));
    };
    Ok(Json(s.remove_dataset(&caller, &name, Some(v)).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/datasets/{name}/versions/{version}/manifest",
    tag = "datasets",
    summary = "The encoded manifest of a version",
    params(("name" = String, Path, description = "dataset name"), ("version" = String, Path, description = "a version number, or `latest`")),
    responses((status = 200, description = "the manifest (postcard); `X-Cairn-Version` names the version", content_type = "application/octet-stream", body = Vec<u8>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn manifest(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let v = version_of(&version)?;
    let (view, bytes) = s.dataset_manifest(&caller, &name, v).await?;
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
    resp.headers_mut()
        .insert("x-cairn-version", HeaderValue::from(view.version));
    resp.headers_mut().insert(
        "x-cairn-manifest",
        HeaderValue::from_str(&view.manifest).map_err(ServiceError::internal)?,
    );
    Ok(resp)
}
