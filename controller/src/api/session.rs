//! Logging in and out, who am I, and one's API tokens.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, Caller};
use crate::app::App;
use crate::users::{Principal, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// What this token is for, e.g. "cli on laptop".
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize)]
pub struct LoginResponse {
    pub token: String,
    pub token_id: String,
    pub user: String,
    pub role: Role,
    pub expires_ms: u64,
}

/// `POST /api/v1/login`: trades a user name and password for an API token.
pub async fn login(
    State(app): State<Arc<App>>,
    body: Result<Json<Login>, JsonRejection>,
) -> ApiResult<Json<LoginResponse>> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if req.password.len() > 1024 || req.user.len() > 64 {
        return Err(ApiError::bad_request("user name or password too long"));
    }
    let user = app
        .accounts
        .authenticate(&req.user, &req.password)
        .await
        .map_err(ApiError::internal)?;
    let Some(user) = user else {
        tracing::info!(user = %req.user.chars().take(64).collect::<String>(), "login failed");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "login_failed",
            "wrong user name or password, or the account is disabled",
        ));
    };
    let (token, rec) = app
        .api_tokens
        .issue(&user.name, &req.description, cairn_shared::time::now_ms())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(user = %user.name, token = %rec.id, "login");
    Ok(Json(LoginResponse {
        token,
        token_id: rec.id,
        user: user.name,
        role: user.role,
        expires_ms: rec.expires_ms,
    }))
}

/// `POST /api/v1/logout`: revokes the token used for this request.
pub async fn logout(State(app): State<Arc<App>>, Caller(p): Caller) -> ApiResult<StatusCode> {
    match p.token_id {
        Some(id) => {
            app.api_tokens.revoke(&id).await.map_err(ApiError::internal)?;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::bad_request("the bootstrap admin token cannot be logged out; rotate it with `cairn-controller init --force`")),
    }
}

pub async fn me(Caller(p): Caller) -> Json<Principal> {
    Json(p)
}

#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
}

/// `GET /api/v1/tokens`: one's own tokens (an admin sees everyone's).
pub async fn list_tokens(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<TokenView>>> {
    let filter = if p.is_admin() { None } else { Some(p.name()) };
    let tokens = app
        .api_tokens
        .list_for(filter)
        .map_err(ApiError::internal)?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenView {
                id: t.id,
                user: t.user,
                description: t.description,
                created_ms: t.created_ms,
                expires_ms: t.expires_ms,
                revoked: t.revoked,
            })
            .collect(),
    ))
}

/// `DELETE /api/v1/tokens/{id}`: revokes one of one's tokens (admins: any). Someone
/// else's token answers 404, as if it did not exist.
pub async fn revoke_token(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let rec = app.api_tokens.get(&id).map_err(ApiError::internal)?;
    match rec {
        Some(r) if p.is_admin() || r.user == p.name() => {
            app.api_tokens
                .revoke(&id)
                .await
                .map_err(ApiError::internal)?;
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(ApiError::not_found(format!("no token {id}"))),
    }
}
