//! `/api/v1/autoscaler`: what the queue waits for, and the recent decisions.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::ApiResult;
use crate::service::views::AutoscalerView;
use crate::service::{Caller, Service};

#[utoipa::path(
    get,
    path = "/api/v1/autoscaler",
    tag = "hosts",
    summary = "What the queue waits for, and the autoscaler's decisions (admins)",
    responses((status = 200, description = "waiting and decisions", body = AutoscalerView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn autoscaler(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<AutoscalerView>> {
    Ok(Json(s.autoscaler(&caller)?))
}
