//! Join tokens over the API: create (the only time a secret is shown), list, revoke.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::tokens::JoinToken;

/// Longest a join token may live: tokens are for bootstrapping, not credentials.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
pub const MAX_USES: u32 = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    #[serde(default = "default_uses")]
    pub uses: u32,
    #[serde(default)]
    pub description: String,
}

fn default_ttl() -> u64 {
    3600
}
fn default_uses() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedTokenView {
    pub token: String,
    pub id: String,
    pub expires_ms: u64,
    pub uses: u32,
    pub ca_sha256: String,
}

impl CreatedTokenView {
    /// The view of a freshly created token, with the CA fingerprint a joining host pins.
    pub fn new(
        created: crate::tokens::CreatedToken,
        ca: &cairn_shared::identity::Fingerprint,
    ) -> Self {
        CreatedTokenView {
            token: created.token,
            id: created.record.id,
            expires_ms: created.record.expires_ms,
            uses: created.record.max_uses,
            ca_sha256: ca.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub used_by: Vec<String>,
}

impl From<JoinToken> for TokenView {
    fn from(t: JoinToken) -> Self {
        TokenView {
            id: t.id,
            description: t.description,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            max_uses: t.max_uses,
            uses: t.uses,
            used_by: t.used_by.iter().map(|h| h.to_string()).collect(),
        }
    }
}

/// Checks a token request's bounds.
pub fn check(req: &CreateToken) -> Result<(), String> {
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(format!("ttl_secs must be between 1 and {MAX_TTL_SECS}"));
    }
    if req.uses == 0 || req.uses > MAX_USES {
        return Err(format!("uses must be between 1 and {MAX_USES}"));
    }
    if req.description.len() > 256 {
        return Err("description must be at most 256 bytes".into());
    }
    Ok(())
}

pub async fn create(
    State(app): State<Arc<App>>,
    _: Admin,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedTokenView>)> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check(&req).map_err(ApiError::bad_request)?;
    let created = app
        .tokens
        .create(
            req.ttl_secs * 1000,
            req.uses,
            req.description,
            cairn_shared::time::now_ms(),
        )
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenView::new(created, &app.pki.ca.fingerprint())),
    ))
}

pub async fn list(State(app): State<Arc<App>>, _: Admin) -> ApiResult<Json<Vec<TokenView>>> {
    let mut tokens: Vec<TokenView> = app
        .tokens
        .list()
        .map_err(ApiError::internal)?
        .into_iter()
        .map(Into::into)
        .collect();
    tokens.sort_by_key(|t| t.created_ms);
    Ok(Json(tokens))
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("a token id is 8 hex digits"));
    }
    if app.tokens.revoke(&id).await.map_err(ApiError::internal)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no join token {id}")))
    }
}
