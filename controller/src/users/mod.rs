//! Who may use the API: local accounts, their API tokens, and the principal a request
//! acts as.
//!
//! * [`accounts`] — users with argon2 password hashes, roles, and a disabled flag.
//! * [`api_tokens`] — bearer tokens created by login, revocable, stored hashed.
//! * [`throttle`] — delays and lock-outs after failed logins.
//! * [`Principal`] — the authenticated caller, attached to each API request.

pub mod accounts;
pub mod api_tokens;
pub mod throttle;

use serde::{Deserialize, Serialize};

pub use accounts::{Accounts, AccountsError, Role, User};
pub use api_tokens::{ApiTokenRecord, ApiTokens};
pub use throttle::{LoginThrottle, Throttled};

/// The caller of an API request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
