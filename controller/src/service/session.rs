//! Sessions: login (a user name and password for an API token), logout, who am I,
//! and one's own API tokens (admins see and revoke everyone's; someone else's
//! token answers "not found").

use std::net::{IpAddr, Ipv4Addr};

use super::views::{ApiTokenView, LoginResponse};
use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::users::{Principal, Throttled};

/// Longest user name and password a login considers.
pub const MAX_LOGIN_NAME: usize = 64;
pub const MAX_PASSWORD: usize = 1024;

/// The answer to every failed login, whatever failed, so the form cannot be used
/// to learn which names exist.
pub const LOGIN_FAILED: &str = "wrong user name or password, or the account is disabled";

impl Service {
    /// Trades a user name and password for an API token described as
    /// `description`. `client` is the address the request came from.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        description: &str,
        client: Option<IpAddr>,
    ) -> ServiceResult<LoginResponse> {
        if user.len() > MAX_LOGIN_NAME || password.len() > MAX_PASSWORD {
            return Err(ServiceError::invalid("user name or password too long"));
        }
        if description.len() > 256 {
            return Err(ServiceError::invalid(
                "description must be at most 256 bytes",
            ));
        }
        // In-process callers have no address; they share one slot.
        let addr = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        self.throttle.check(user, addr).map_err(throttled)?;
        let Some(found) = self.app.accounts.authenticate(user, password).await? else {
            // The answer says what the next attempt faces, so a person knows to wait.
            let mut e = ServiceError::new(Kind::Unauthenticated, "login_failed", LOGIN_FAILED);
            if let Some(next) = self.throttle.failed(user, addr) {
                e.message = format!("{LOGIN_FAILED}; {next}");
                e.retry_after_secs = Some(next.retry_after_secs());
            }
            return Err(e);
        };
        self.throttle.succeeded(user);
        let (token, rec) = self
            .app
            .api_tokens
            .issue(&found.name, description, now())
            .await?;
        tracing::info!(user = %found.name, token = %rec.id, client = ?client, "login");
        Ok(LoginResponse {
            token,
            token_id: rec.id,
            user: found.name,
            role: found.role,
            expires_ms: rec.expires_ms,
        })
    }

    /// Lifts a login lock-out or delay on `account` (admins). Not found if the
    /// account has none.
    pub fn unlock_login(&self, caller: &Caller, account: &str) -> ServiceResult<()> {
        let by = caller.admin()?;
        if self.throttle.lift(account, by.name()) {
            Ok(())
        } else {
            Err(ServiceError::not_found(format!(
                "{account:?} has no failed logins held against it"
            )))
        }
    }

    /// Revokes the token the caller used.
    pub async fn logout(&self, caller: &Caller) -> ServiceResult<()> {
        let p = caller.user()?;
        match &p.token_id {
            Some(id) => {
                self.app.api_tokens.revoke(id).await?;
                Ok(())
            }
            None => Err(ServiceError::invalid(
                "the bootstrap admin token cannot be logged out; rotate it with `cairn-controller init --force`",
            )),
        }
    }

    pub fn me(&self, caller: &Caller) -> ServiceResult<Principal> {
        caller.user().cloned()
    }

    /// The caller's API tokens (an admin: everyone's).
    pub fn list_tokens(&self, caller: &Caller) -> ServiceResult<Vec<ApiTokenView>> {
        let p = caller.user()?;
        let filter = (!p.is_admin()).then(|| p.name());
        Ok(self
            .app
            .api_tokens
            .list_for(filter)?
            .into_iter()
            .map(ApiTokenView::from)
            .collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        caller.user()?;
        match self.app.api_tokens.get(id)? {
            Some(r) if caller.may_see(&r.user) => {
                self.app.api_tokens.revoke(id).await?;
                Ok(())
            }
            _ => Err(ServiceError::not_found(format!("no token {id}"))),
        }
    }
}

/// A held-back login: 429 with the wait in words and in `retry_after_secs`.
fn throttled(t: Throttled) -> ServiceError {
    let code = if t.locked {
        "account_locked"
    } else {
        "login_throttled"
    };
    let mut e = ServiceError::new(Kind::Throttled, code, t.to_string());
    e.retry_after_secs = Some(t.retry_after_secs());
    e
}
