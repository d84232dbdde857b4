//! `/api/v1/users`: accounts (admins): create, list, disable, enable; sign-up,
//! approval, expiry and deletion requests.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::users::{Expiry, NewUser, Registered, Registration, User};

use super::{body, ApiResult, ClientAddr};
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

/// `POST /api/v1/register`: self sign-up, where the site takes it.
#[utoipa::path(
    post,
    path = "/api/v1/register",
    tag = "users",
    summary = "Sign up (where `[registration] open`); the account may wait for approval",
    request_body = Registration,
    responses((status = 201, description = "the account, and what happens next", body = Registered), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn register(
    State(s): State<Arc<Service>>,
    ClientAddr(client): ClientAddr,
    b: Result<Json<Registration>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    let req = body(b)?;
    Ok((StatusCode::CREATED, Json(s.register(&req, client).await?)))
}

#[utoipa::path(
    get,
    path = "/api/v1/registrations",
    tag = "users",
    summary = "Registrations waiting for the caller's approval (admins: all; managers: their groups')",
    responses((status = 200, description = "pending accounts", body = Vec<User>), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn pending(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(s.pending_users(&caller)?))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/approve",
    tag = "users",
    summary = "Approve a registration (admins; managers of the group it came with)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the account", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn approve(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.approve_user(&caller, &name).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/reject",
    tag = "users",
    summary = "Reject a registration: the account goes (admins; managers of the group it came with)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the account as it was", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn reject(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.reject_user(&caller, &name).await?))
}

#[utoipa::path(
    put,
    path = "/api/v1/users/{name}/expiry",
    tag = "users",
    summary = "Set or clear when an account stops working (admins)",
    params(("name" = String, Path, description = "user name")),
    request_body = Expiry,
    responses((status = 200, description = "the account", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn expiry(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<Expiry>, JsonRejection>,
) -> ApiResult<Json<User>> {
    let req = body(b)?;
    Ok(Json(
        s.set_user_expiry(&caller, &name, req.expires_ms).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/deletion",
    tag = "users",
    summary = "Ask for an account's deletion, with its files, after the grace period (the account itself, or admins)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the account, with when it goes", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn request_deletion(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.request_deletion(&caller, &name).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}/deletion",
    tag = "users",
    summary = "Withdraw a deletion request (the account itself, or admins)",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the account", body = User), (status = "4XX", description = "refused: the error body says why", body = cairn_api::error::ErrorBody))
)]
pub async fn cancel_deletion(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.cancel_deletion(&caller, &name).await?))
}
