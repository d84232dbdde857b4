//! `/api/v1/login`, `logout`, `me`, and one's API tokens.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::session::Login;

use super::{body, ApiResult, ClientAddr};
use crate::service::views::{ApiTokenView, LoginResponse};
use crate::service::{Caller, Service};
use cairn_api::users::Principal;

/// `POST /api/v1/login`: trades a user name and password for an API token.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "session",
    summary = "Trade a user name and password for an API token (throttled)",
    request_body = Login,
    responses((status = 200, description = "the token", body = LoginResponse), (status = 429, description = "too many failed logins; retry_after_secs says when", body = cairn_api::error::ErrorBody), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn login(
    State(s): State<Arc<Service>>,
    ClientAddr(client): ClientAddr,
    b: Result<Json<Login>, JsonRejection>,
) -> ApiResult<Json<LoginResponse>> {
    let req = body(b)?;
    Ok(Json(
        s.login(&req.user, &req.password, &req.description, client)
            .await?,
    ))
}

/// `POST /api/v1/logout`: revokes the token used for this request.
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "session",
    summary = "Revoke the token of this request",
    responses((status = 204, description = "revoked"), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn logout(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<StatusCode> {
    s.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "session",
    summary = "Who the token stands for",
    responses((status = 200, description = "the caller", body = Principal), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn me(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Principal>> {
    Ok(Json(s.me(&caller)?))
}

/// `GET /api/v1/tokens`: one's own tokens (an admin sees everyone's).
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "session",
    summary = "One's API tokens (admins: everyone's)",
    responses((status = 200, description = "tokens", body = Vec<ApiTokenView>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list_tokens(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiTokenView>>> {
    Ok(Json(s.list_tokens(&caller)?))
}

/// `DELETE /api/v1/tokens/{id}`.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "session",
    summary = "Revoke one of one's API tokens",
    params(("id" = String, Path, description = "token id")),
    responses((status = 204, description = "revoked"), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn revoke_token(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
