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

#[utoipa::path(
    post,
    path = "/api/v1/join-tokens",
    tag = "join-tokens",
    summary = "Create a join token: its secret is shown once (admins)",
    request_body = CreateToken,
    responses((status = 201, description = "the token", body = CreatedTokenView), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/join-tokens",
    tag = "join-tokens",
    summary = "Join tokens, without secrets (admins)",
    responses((status = 200, description = "tokens", body = Vec<JoinTokenView>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<JoinTokenView>>> {
    Ok(Json(s.list_join_tokens(&caller)?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/join-tokens/{id}",
    tag = "join-tokens",
    summary = "Revoke a join token (admins)",
    params(("id" = String, Path, description = "token id, 8 hex digits")),
    responses((status = 204, description = "revoked"), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn revoke(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.revoke_join_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
