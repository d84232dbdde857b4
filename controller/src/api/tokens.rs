//! `/api/v1/join-tokens`: create (the only time a secret is shown), list, revoke.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{body, ApiResult};
use crate::service::join_tokens::CreateToken;
use crate::service::views::{CreatedTokenView, JoinTokenView};
use crate::service::{Caller, Service};

pub async fn create(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<CreateToken>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedTokenView>)> {
    let req = body(b)?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_join_token(&caller, &req).await?),
    ))
}

pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<JoinTokenView>>> {
    Ok(Json(s.list_join_tokens(&caller)?))
}

pub async fn revoke(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.revoke_join_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
