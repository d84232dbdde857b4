//! `/api/v1/users`: accounts (admins): create, list, disable, enable.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::users::{NewUser, User};

use super::{body, ApiResult};
use crate::service::{Caller, Service};

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    summary = "Accounts (admins)",
    responses((status = 200, description = "accounts", body = Vec<User>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn list(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(s.list_users(&caller)?))
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    summary = "Create an account (admins)",
    request_body = NewUser,
    responses((status = 201, description = "the account", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn create(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let req = body(b)?;
    let u = s
        .create_user(&caller, &req.name, &req.password, req.role)
        .await?;
    Ok((StatusCode::CREATED, Json(u)))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/disable",
    tag = "users",
    summary = "Disable an account (admins; not one's own)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the account", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn disable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.set_user_disabled(&caller, &name, true).await?))
}

/// `POST /api/v1/users/{name}/unlock`: lifts a login lock-out or delay.
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/unlock",
    tag = "users",
    summary = "Lift the failed-login delay or lock-out (admins)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 204, description = "lifted"), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn unlock(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.unlock_login(&caller, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/enable",
    tag = "users",
    summary = "Enable an account (admins)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the account", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn enable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.set_user_disabled(&caller, &name, false).await?))
}
