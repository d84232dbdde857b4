//! Logging in, and one's API tokens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::users::Role;

/// Body of `POST /api/v1/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// What this token is for, e.g. "cli on laptop".
    #[serde(default)]
    pub description: String,
}

/// Answer of `POST /api/v1/login`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub token_id: String,
    pub user: String,
    pub role: Role,
    pub expires_ms: u64,
}

/// An API token, without its secret (`GET /api/v1/tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    pub id: String,
    pub user: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
}
