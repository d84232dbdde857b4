//! `GET /api/v1/hosts` and `GET /api/v1/hosts/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use cairn_shared::ids::HostId;

use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::hosts::HostView;

pub async fn list(State(app): State<Arc<App>>, _: Admin) -> Json<Vec<HostView>> {
    Json(app.registry.list())
}

pub async fn get(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    let id = HostId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.registry
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no host {id}")))
}
