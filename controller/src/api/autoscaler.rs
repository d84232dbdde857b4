//! `/api/v1/autoscaler`: what the queue waits for, and the recent decisions.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::ApiResult;
use crate::service::views::AutoscalerView;
use crate::service::{Caller, Service};

pub async fn autoscaler(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<AutoscalerView>> {
    Ok(Json(s.autoscaler(&caller)?))
}
