//! Account management (admins only): create, list, disable, enable.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::users::{AccountsError, Role, User};

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::BadName | AccountsError::BadPassword => {
                ApiError::bad_request(e.to_string())
            }
            AccountsError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            AccountsError::NotFound(_) => ApiError::not_found(e.to_string()),
            AccountsError::Hash(_) | AccountsError::Store(_) => ApiError::internal(e),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::User
}

pub async fn list(State(app): State<Arc<App>>, _: Admin) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(
        app.accounts
            .list()
            .map_err(ApiError::internal)?
            .iter()
            .map(User::public)
            .collect(),
    ))
}

pub async fn create(
    State(app): State<Arc<App>>,
    Admin(by): Admin,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let user = app
        .accounts
        .create(
            &req.name,
            &req.password,
            req.role,
            cairn_shared::time::now_ms(),
        )
        .await?;
    tracing::info!(user = %user.name, role = ?user.role, by = %by.name(), "user created");
    Ok((StatusCode::CREATED, Json(user.public())))
}

pub async fn disable(
    State(app): State<Arc<App>>,
    Admin(by): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    let user = app.accounts.set_disabled(&name, true).await?;
    tracing::info!(user = %name, by = %by.name(), "user disabled");
    Ok(Json(user.public()))
}

pub async fn enable(
    State(app): State<Arc<App>>,
    Admin(by): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    let user = app.accounts.set_disabled(&name, false).await?;
    tracing::info!(user = %name, by = %by.name(), "user enabled");
    Ok(Json(user.public()))
}
