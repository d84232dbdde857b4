//! `/api/v1/hosts`: list, read, and the pool requests drain, undrain, remove.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

use cairn_api::hosts::Drain;

use super::{ApiError, ApiResult};
use crate::hosts::HostView;
use crate::service::{Caller, Service};

pub async fn list(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Vec<HostView>>> {
    Ok(Json(s.list_hosts(&caller)?))
}

pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    Ok(Json(s.host(&caller, &id)?))
}

/// `POST /hosts/{id}/drain`; the body is optional (none: no deadline).
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

pub async fn undrain(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    Ok(Json(s.undrain_host(&caller, &id).await?))
}

pub async fn remove(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    Ok(Json(s.remove_host(&caller, &id).await?))
}
