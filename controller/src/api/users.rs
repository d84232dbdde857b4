//! `/api/v1/users`: accounts (admins): create, list, disable, enable.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::users::{NewUser, User};

use super::{body, ApiResult};
use crate::service::{Caller, Service};

pub async fn list(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(s.list_users(&caller)?))
}

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

pub async fn disable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.set_user_disabled(&caller, &name, true).await?))
}

/// `POST /api/v1/users/{name}/unlock`: lifts a login lock-out or delay.
pub async fn unlock(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.unlock_login(&caller, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn enable(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(s.set_user_disabled(&caller, &name, false).await?))
}
