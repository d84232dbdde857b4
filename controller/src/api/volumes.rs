//! `/api/v1/volumes`: a user's volumes and their snapshots. Admins name another
//! user with `?owner=NAME` (or list everyone's with `?all=true`).
//!
//! * `GET /volumes`, `GET /volumes/{name}`, `DELETE /volumes/{name}`.
//! * `POST /volumes/{name}/head` `{snapshot}` — make a snapshot the head.
//! * `GET /volumes/{name}/snapshots/{id}/tar` — the snapshot's files as a tar
//!   stream ([`crate::volumes::tar`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::volumes::{SetHead, VolumeView};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{body, ApiResult};
use crate::service::{Caller, Service};

/// Whose volumes: `owner` (admins), or everyone's with `all` (admins).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub all: bool,
}

#[utoipa::path(
    get,
    path = "/api/v1/volumes",
    tag = "volumes",
    summary = "The caller's volumes with their snapshots",
    params(OwnerQuery),
    responses((status = 200, description = "volumes", body = Vec<VolumeView>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Json<Vec<VolumeView>>> {
    Ok(Json(s.list_volumes(&caller, q.owner.as_deref(), q.all)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/volumes/{name}",
    tag = "volumes",
    summary = "One volume with its snapshots",
    params(("name" = String, Path, description = "volume name"), OwnerQuery),
    responses((status = 200, description = "the volume", body = VolumeView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(s.volume(&caller, q.owner.as_deref(), &name)?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/volumes/{name}",
    tag = "volumes",
    summary = "Delete a volume and all its snapshots (refused while an instance writes it)",
    params(("name" = String, Path, description = "volume name"), OwnerQuery),
    responses((status = 200, description = "the volume as it was", body = VolumeView), (status = 409, description = "`volume_in_use`", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn remove(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(
        s.remove_volume(&caller, q.owner.as_deref(), &name).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/volumes/{name}/head",
    tag = "volumes",
    summary = "Make a snapshot the head: restore an older one, confirm a halted one, take a conflict's files",
    params(("name" = String, Path, description = "volume name"), OwnerQuery),
    request_body = SetHead,
    responses((status = 200, description = "the volume", body = VolumeView), (status = 409, description = "`volume_in_use`, `over_quota`", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn set_head(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
    b: Result<Json<SetHead>, JsonRejection>,
) -> ApiResult<Json<VolumeView>> {
    let req = body(b)?;
    Ok(Json(
        s.set_volume_head(&caller, q.owner.as_deref(), &name, req.snapshot)
            .await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/volumes/{name}/snapshots/{id}/tar",
    tag = "volumes",
    summary = "A snapshot's files as a tar stream",
    params(("name" = String, Path, description = "volume name"), ("id" = u64, Path, description = "snapshot id"), OwnerQuery),
    responses((status = 200, description = "application/x-tar", content_type = "application/x-tar", body = Vec<u8>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn tar(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path((name, id)): Path<(String, u64)>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Response> {
    let download = s
        .snapshot_tar(&caller, q.owner.as_deref(), &name, id)
        .await?;
    Ok(download.into_response())
}

/// A snapshot download as an HTTP answer (the API's and the web UI's).
impl IntoResponse for crate::volumes::tar::TarDownload {
    fn into_response(self) -> Response {
        (
            [
                (header::CONTENT_TYPE, "application/x-tar".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", self.filename),
                ),
            ],
            Body::from_stream(self.stream),
        )
            .into_response()
    }
}
