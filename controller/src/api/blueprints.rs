//! `/api/v1/blueprints`: the catalogue, create, edit (a new revision each time),
//! enable/disable, refresh (resolve the image's tag again), revision history.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{body, ApiResult};
use crate::blueprints::catalog::Revision;
use crate::blueprints::{BlueprintInput, BlueprintRecord};
use crate::service::views::Refreshed;
use crate::service::{Caller, Service};

pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<BlueprintRecord>>> {
    Ok(Json(s.list_blueprints(&caller)?))
}

pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    Ok(Json(s.blueprint(&caller, &name)?))
}

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

pub async fn update(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<BlueprintInput>, JsonRejection>,
) -> ApiResult<Json<BlueprintRecord>> {
    let input = body(b)?;
    Ok(Json(s.update_blueprint(&caller, &name, &input).await?))
}

pub async fn enable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    Ok(Json(s.set_blueprint_enabled(&caller, &name, true).await?))
}

pub async fn disable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    Ok(Json(s.set_blueprint_enabled(&caller, &name, false).await?))
}

pub async fn refresh(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Refreshed>> {
    Ok(Json(s.refresh_blueprint(&caller, &name).await?))
}

pub async fn revisions(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Revision>>> {
    Ok(Json(s.blueprint_revisions(&caller, &name)?))
}
