//! The service layer: every user or admin action as one typed operation that takes
//! the [`Caller`] and returns a typed result or a [`ServiceError`]. The doors (REST
//! handlers in `api/`, web pages in `web/`, the offline `cairn-controller token`
//! commands) only parse, call one operation and render; every rule — who may do
//! what, bounds, limits — lives here, once, beside its unit tests.
//!
//! * [`instances`] — launch, list, read, stop, extend, logs.
//! * [`blueprints`] — the catalogue, create, edit, enable/disable, refresh, history.
//! * [`users`] — accounts (admins).
//! * [`registration`] — sign-up, approval, expiry, deletion requests.
//! * [`groups`] — groups, their people and join codes, usage, the audit log.
//! * [`session`] — login (throttled), logout, who am I, one's API tokens.
//! * [`hosts`] — the host pool: list, drain, undrain, remove; the autoscaler's log.
//! * [`join_tokens`] — tokens that let a host enrol.
//! * [`images`] — uploaded image archives.
//! * [`datasets`] — datasets: chunk uploads, commits of versions, reading, removal.
//! * [`health`] — liveness for anyone, counts for admins.
//! * [`metrics`] — the Prometheus metrics, for admins.
//!
//! Below this layer sit the managers and pure cores (`instances/`, `scheduler/`,
//! `hosts/`, `blueprints/`…) and the store.

pub mod blueprints;
mod caller;
pub mod datasets;
mod error;
pub mod groups;
pub mod health;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod join_tokens;
pub mod metrics;
pub mod packages;
pub mod registration;
pub mod session;
pub mod users;
pub mod views;
pub mod volumes;

use std::sync::Arc;

pub use caller::Caller;
pub use error::{Kind, ServiceError, ServiceResult};

use crate::app::App;
use crate::auth;
use crate::users::{Principal, Role};

/// The operations of a running controller.
#[derive(Debug)]
pub struct Service {
    app: Arc<App>,
    /// Serialises the writes that decide whether an uploaded image archive is in
    /// use (blueprint saves) with its removal, so a blueprint cannot start using an
    /// archive between the in-use check and the delete.
    image_use: tokio::sync::Mutex<()>,
    /// Failed logins per account and per client address.
    throttle: crate::users::LoginThrottle,
    /// The OpenID Connect provider users may log in with, if one is configured.
    oidc: Option<crate::users::oidc::Oidc>,
    /// The trusted front proxies' networks (`[auth.front_proxy]`), checked at
    /// start.
    proxy_nets: Vec<ipnet::IpNet>,
}

fn now() -> u64 {
    cairn_shared::time::now_ms()
}

impl Service {
    pub fn new(app: Arc<App>) -> Arc<Self> {
        Arc::new(Service {
            image_use: tokio::sync::Mutex::new(()),
            throttle: crate::users::LoginThrottle::default(),
            oidc: app.config.auth.oidc.clone().and_then(|c| {
                crate::users::oidc::Oidc::new(c)
                    .map_err(|e| tracing::error!(error = %e, "OpenID Connect login is off"))
                    .ok()
            }),
            proxy_nets: app
                .config
                .auth
                .front_proxy
                .as_ref()
                .and_then(|p| p.trusted_nets().ok())
                .unwrap_or_default(),
            app,
        })
    }

    /// Whether browsers reach the controller over HTTPS (the session cookie is then
    /// `Secure`, and proxied apps are told the scheme).
    pub fn serves_https(&self) -> bool {
        self.app.config.api.serves_https() || self.app.config.api.behind_tls_proxy
    }

    /// The caller a token stands for: the bootstrap admin token from `init`, or a
    /// login token of an enabled account. Anything else is unauthenticated.
    pub fn authenticate(&self, token: &str) -> ServiceResult<Caller> {
        self.principal_of(token)?.map(Caller::of).ok_or_else(|| {
            ServiceError::unauthenticated("invalid, expired or revoked token, or disabled account")
        })
    }

    fn principal_of(&self, token: &str) -> ServiceResult<Option<Principal>> {
        let app = &self.app;
        if auth::matches_digest(token, &app.config.auth.admin_token_sha256) {
            return Ok(Some(Principal {
                user: None,
                role: Role::Admin,
                token_id: None,
            }));
        }
        let Some(rec) = app.api_tokens.check(token, now())? else {
            return Ok(None);
        };
        let Some(user) = app.accounts.get(&rec.user)? else {
            return Ok(None);
        };
        if user.standing(now()) != crate::users::Standing::Active {
            return Ok(None);
        }
        Ok(Some(Principal {
            user: Some(user.name),
            role: user.role,
            token_id: Some(rec.id),
        }))
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
