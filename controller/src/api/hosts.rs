//! `/api/v1/hosts`: list, read, and the pool requests drain, undrain, remove.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

use cairn_api::hosts::Drain;

use super::{ApiError, ApiResult};
use crate::service::{Caller, Service};
use cairn_api::hosts::HostView;

#[utoipa::path(
    get,
    path = "/api/v1/hosts",
    tag = "hosts",
    summary = "Every host (admins)",
    responses((status = 200, description = "hosts", body = Vec<HostView>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Vec<HostView>>> {
    Ok(Json(s.list_hosts(&caller)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/hosts/{id}",
    tag = "hosts",
    summary = "One host (admins)",
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "the host", body = HostView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    Ok(Json(s.host(&caller, &id)?))
}

/// `POST /hosts/{id}/drain`; the body is optional (none: no deadline).
#[utoipa::path(
    post,
    path = "/api/v1/hosts/{id}/drain",
    tag = "hosts",
    summary = "Drain a host (admins)",
    params(("id" = String, Path, description = "host id")),
    request_body = Drain,
    responses((status = 200, description = "the host", body = HostView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn drain(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<HostView>> {
    let req: Drain = if body.iter().all(u8::is_ascii_whitespace) {
        Drain::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid drain request: {e}")))?
    };
    Ok(Json(s.drain_host(&caller, &id, req.deadline_secs).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/hosts/{id}/undrain",
    tag = "hosts",
    summary = "Open a draining or drained host again (admins)",
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "the host", body = HostView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn undrain(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    Ok(Json(s.undrain_host(&caller, &id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/hosts/{id}",
    tag = "hosts",
    summary = "Remove a drained host (admins)",
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "the host", body = HostView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn remove(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    Ok(Json(s.remove_host(&caller, &id).await?))
}
