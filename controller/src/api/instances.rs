//! `/api/v1/instances`: launch, list, read, stop, extend, logs.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cairn_api::instances::{Extend, Launch, ListQuery, LogsQuery};

use super::{body, ApiResult};
use crate::service::views::InstanceView;
use crate::service::{Caller, Service};

#[utoipa::path(
    post,
    path = "/api/v1/instances",
    tag = "instances",
    summary = "Launch an instance of a blueprint",
    request_body = Launch,
    responses((status = 201, description = "the new instance", body = InstanceView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn launch(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<Launch>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    let req = body(b)?;
    let i = s
        .launch_with(&caller, &req.blueprint, req.volume.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(i)))
}

#[utoipa::path(
    get,
    path = "/api/v1/instances",
    tag = "instances",
    summary = "The caller's instances (admins: everyone's with all=true)",
    params(ListQuery),
    responses((status = 200, description = "newest first", body = Vec<InstanceView>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<InstanceView>>> {
    Ok(Json(s.list_instances(&caller, q.all)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}",
    tag = "instances",
    summary = "One instance",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, description = "the instance", body = InstanceView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    Ok(Json(s.instance(&caller, &id)?))
}

/// `DELETE`: stops and removes; repeating it is harmless.
#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}",
    tag = "instances",
    summary = "Stop an instance (idempotent)",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, description = "stopping or stopped", body = InstanceView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn stop(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    Ok((StatusCode::ACCEPTED, Json(s.stop(&caller, &id).await?)))
}

#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/extend",
    tag = "instances",
    summary = "Give an instance more time (admins)",
    params(("id" = String, Path, description = "instance id")),
    request_body = Extend,
    responses((status = 200, description = "the instance", body = InstanceView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn extend(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Json<Extend>, JsonRejection>,
) -> ApiResult<Json<InstanceView>> {
    let req = body(b)?;
    Ok(Json(s.extend(&caller, &id, req.seconds).await?))
}

/// The instance's recent output, fetched from its agent now.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/logs",
    tag = "instances",
    summary = "An instance's recent output, fetched from its agent",
    params(("id" = String, Path, description = "instance id"), LogsQuery),
    responses((status = 200, description = "plain text", body = String), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn logs(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<impl IntoResponse> {
    let text = s.logs(&caller, &id, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}
