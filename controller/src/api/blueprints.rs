//! `/api/v1/blueprints`: the catalogue, create, edit (a new revision each time),
//! enable/disable, refresh (resolve the image's tag again), revision history.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{body, ApiResult};
use crate::service::views::Refreshed;
use crate::service::{Caller, Service};
use cairn_api::blueprints::{BlueprintInput, BlueprintRecord, Revision};

#[utoipa::path(
    get,
    path = "/api/v1/blueprints",
    tag = "blueprints",
    summary = "The catalogue (admins: disabled ones too)",
    responses((status = 200, description = "blueprints", body = Vec<BlueprintRecord>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<BlueprintRecord>>> {
    Ok(Json(s.list_blueprints(&caller)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/blueprints/{name}",
    tag = "blueprints",
    summary = "One blueprint",
    params(("name" = String, Path, description = "blueprint name")),
    responses((status = 200, description = "the blueprint", body = BlueprintRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    Ok(Json(s.blueprint(&caller, &name)?))
}

#[utoipa::path(
    post,
    path = "/api/v1/blueprints",
    tag = "blueprints",
    summary = "Create a blueprint (admins)",
    request_body = BlueprintInput,
    responses((status = 201, description = "revision 1", body = BlueprintRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn create(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<BlueprintInput>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<BlueprintRecord>)> {
    let input = body(b)?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_blueprint(&caller, &input).await?),
    ))
}

#[utoipa::path(
    put,
    path = "/api/v1/blueprints/{name}",
    tag = "blueprints",
    summary = "Edit a blueprint: a new revision (admins)",
    params(("name" = String, Path, description = "blueprint name")),
    request_body = BlueprintInput,
    responses((status = 200, description = "the new revision", body = BlueprintRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn update(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<BlueprintInput>, JsonRejection>,
) -> ApiResult<Json<BlueprintRecord>> {
    let input = body(b)?;
    Ok(Json(s.update_blueprint(&caller, &name, &input).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/blueprints/{name}/enable",
    tag = "blueprints",
    summary = "Enable a blueprint (admins)",
    params(("name" = String, Path, description = "blueprint name")),
    responses((status = 200, description = "the new revision", body = BlueprintRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn enable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    Ok(Json(s.set_blueprint_enabled(&caller, &name, true).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/blueprints/{name}/disable",
    tag = "blueprints",
    summary = "Disable a blueprint (admins)",
    params(("name" = String, Path, description = "blueprint name")),
    responses((status = 200, description = "the new revision", body = BlueprintRecord), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn disable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    Ok(Json(s.set_blueprint_enabled(&caller, &name, false).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/blueprints/{name}/refresh",
    tag = "blueprints",
    summary = "Resolve the image's tag again (admins)",
    params(("name" = String, Path, description = "blueprint name")),
    responses((status = 200, description = "changed or not", body = Refreshed), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn refresh(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Refreshed>> {
    Ok(Json(s.refresh_blueprint(&caller, &name).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/blueprints/{name}/revisions",
    tag = "blueprints",
    summary = "Revision history (admins)",
    params(("name" = String, Path, description = "blueprint name")),
    responses((status = 200, description = "oldest first", body = Vec<Revision>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn revisions(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Revision>>> {
    Ok(Json(s.blueprint_revisions(&caller, &name)?))
}
