//! Accounts as the API shows them, their roles, and the caller of a request.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account, without its password hash (`GET /api/v1/users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Self-registered and waiting for approval: cannot log in yet.
    #[serde(default)]
    pub pending: bool,
    /// The group whose join code the registrant gave; its managers may approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_group: Option<String>,
    /// When the account stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Deletion was asked for: the account and its files go at this time,
    /// unless the request is withdrawn first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_ms: Option<u64>,
}

/// The caller of an API request (`GET /api/v1/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    /// `None` for the bootstrap admin token from `init`, which belongs to no account.
    pub user: Option<String>,
    pub role: Role,
    /// The API token used, if it was a login token (so logout can revoke it).
    pub token_id: Option<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The name instances and tokens are recorded under.
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("admin")
    }
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    /// `user` when absent.
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::User
}

/// Body of `POST /api/v1/register`: self sign-up, where the site allows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    pub email: String,
    pub password: String,
    /// A group's join code: the group's managers may approve the account, which
    /// then joins the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub user: User,
    /// What happens next, for the person who registered.
    pub message: String,
}

/// Body of `POST /api/v1/users/{name}/expiry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Expiry {
    /// Milliseconds since the epoch; `null` for never.
    pub expires_ms: Option<u64>,
}
