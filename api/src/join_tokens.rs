//! Join tokens, which hosts enrol with: the request, the answer that shows the
//! secret once, and the listing.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use cairn_shared::ids::HostId;

/// Body of `POST /api/v1/join-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 3600 when absent.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// 1 when absent.
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

/// A freshly created join token, with the CA fingerprint a joining host pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedTokenView {
    pub token: String,
    pub id: String,
    pub expires_ms: u64,
    pub uses: u32,
    pub ca_sha256: String,
}

/// A join token without its secret (`GET /api/v1/join-tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    pub id: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    /// The hosts that enrolled with it.
    pub used_by: Vec<HostId>,
}
