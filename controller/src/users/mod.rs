//! Who may use the API: local accounts, their API tokens, and the principal a request
//! acts as.
//!
//! * [`accounts`] — users with argon2 password hashes, roles, and a disabled flag.
//! * [`api_tokens`] — bearer tokens created by login, revocable, stored hashed.
//! * [`throttle`] — delays and lock-outs after failed logins.
//! * [`oidc`] — login through an OpenID Connect provider.
//! * [`front_proxy`] — login by a trusted front proxy's header.
//! * [`reconcile`] — expired accounts' instances stop; due deletions happen.
//! * [`Principal`] — the authenticated caller, attached to each API request.

pub mod accounts;
pub mod api_tokens;
pub mod front_proxy;
pub mod oidc;
pub mod reconcile;
pub mod throttle;

pub use accounts::{Accounts, AccountsError, PendingApproval, Role, Standing, User};
pub use api_tokens::{ApiTokenRecord, ApiTokens};
pub use throttle::{LoginThrottle, Throttled};

/// The caller of an API request: the API model's type (it is what `/me` answers).
pub use cairn_api::users::Principal;
