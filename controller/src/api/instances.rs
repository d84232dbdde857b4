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

pub async fn launch(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<Launch>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    let req = body(b)?;
    let i = s.launch(&caller, &req.blueprint).await?;
    Ok((StatusCode::CREATED, Json(i)))
}

pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<InstanceView>>> {
    Ok(Json(s.list_instances(&caller, q.all)?))
}

pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    Ok(Json(s.instance(&caller, &id)?))
}

/// `DELETE`: stops and removes; repeating it is harmless.
pub async fn stop(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    Ok((StatusCode::ACCEPTED, Json(s.stop(&caller, &id).await?)))
}

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
pub async fn logs(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<impl IntoResponse> {
    let text = s.logs(&caller, &id, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}
