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

fn no_sso() -> ServiceError {
    ServiceError::not_found("single sign-on is not configured here")
}

fn sso_error(e: crate::users::oidc::OidcError) -> ServiceError {
    use crate::users::oidc::OidcError as E;
    match e {
        E::UnknownState | E::Claims(_) => ServiceError::invalid(e.to_string()),
        E::Refused(_) | E::BadToken(_) => {
            ServiceError::new(Kind::Unauthenticated, "sso_refused", e.to_string())
        }
        E::Provider(_) => ServiceError::new(Kind::Unavailable, "sso_unavailable", e.to_string()),
    }
}

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
        let anonymous = Caller::anonymous().from_addr(client);
        let Some(found) = self.app.accounts.authenticate(user, password).await? else {
            // Names are bounded above; a typed password in the name field stays
            // out of the log by being cut to what a name can be.
            let shown: String = user.chars().take(32).collect();
            self.audit(&anonymous, "login.failed", &shown, String::new());
            // The answer says what the next attempt faces, so a person knows to wait.
            let mut e = ServiceError::new(Kind::Unauthenticated, "login_failed", LOGIN_FAILED);
            if let Some(next) = self.throttle.failed(user, addr) {
                e.message = format!("{LOGIN_FAILED}; {next}");
                e.retry_after_secs = Some(next.retry_after_secs());
            }
            return Err(e);
        };
        self.throttle.succeeded(user);
        // The password was right: saying why the account cannot log in yet
        // tells nothing a guesser could use.
        if let Some(e) = self.standing_refusal(&found) {
            self.audit(&anonymous, "login.failed", &found.name, e.code.to_string());
            return Err(e);
        }
        self.open_session(&found, description, client, description.to_string())
            .await
    }

    /// A login token for `user`, logged and audited.
    async fn open_session(
        &self,
        user: &crate::users::User,
        description: &str,
        client: Option<IpAddr>,
        detail: String,
    ) -> ServiceResult<LoginResponse> {
        let (token, rec) = self
            .app
            .api_tokens
            .issue(&user.name, description, now())
            .await?;
        tracing::info!(user = %user.name, token = %rec.id, client = ?client, "login");
        self.audit_as(&user.name, client, "login", &user.name, detail);
        Ok(LoginResponse {
            token,
            token_id: rec.id,
            user: user.name.clone(),
            role: user.role,
            expires_ms: rec.expires_ms,
        })
    }

    /// The header a trusted front proxy names users in, if one is configured.
    pub fn front_proxy_header(&self) -> Option<&str> {
        self.app
            .config
            .auth
            .front_proxy
            .as_ref()
            .map(|p| p.header.as_str())
    }

    /// A login by a trusted front proxy: `value` is its identity header on a
    /// connection from `peer`. `None` when there is nothing to log in with (no
    /// header, or a header from an address that is not a trusted proxy, which is
    /// ignored and logged). The account must exist unless the site lets the
    /// proxy's users make theirs; a disabled one is refused.
    pub async fn front_proxy_login(
        &self,
        value: Option<&str>,
        peer: Option<IpAddr>,
    ) -> ServiceResult<Option<LoginResponse>> {
        let (Some(cfg), Some(value)) = (&self.app.config.auth.front_proxy, value) else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(None);
        }
        if !crate::users::front_proxy::trusted(&self.proxy_nets, peer) {
            tracing::warn!(peer = ?peer, header = %cfg.header, "identity header from an address that is not a trusted proxy: ignored");
            return Ok(None);
        }
        let anonymous = Caller::anonymous().from_addr(peer);
        let name = crate::users::front_proxy::account_name(cfg.format, value)
            .map_err(ServiceError::invalid)?;
        let user = match self.app.accounts.get(&name)? {
            Some(u) => u,
            None if cfg.create_accounts => {
                let (u, _) = self
                    .app
                    .accounts
                    .external(&name, "front-proxy", now())
                    .await?;
                tracing::info!(user = %u.name, "account made for a front proxy's user");
                self.audit_as(&u.name, peer, "user.create", &u.name, "front proxy".into());
                u
            }
            None => {
                self.audit(
                    &anonymous,
                    "login.failed",
                    &name,
                    "front proxy: no account".into(),
                );
                return Err(ServiceError::new(
                    Kind::Unauthenticated,
                    "no_account",
                    format!("the front proxy logged you in as {name:?}, but there is no account of that name here; ask an admin"),
                ));
            }
        };
        if let Some(e) = self.standing_refusal(&user) {
            self.audit(
                &anonymous,
                "login.failed",
                &user.name,
                format!("front proxy: {}", e.code),
            );
            return Err(e);
        }
        let detail = format!("front proxy {}", cfg.header);
        self.open_session(&user, "web session", peer, detail)
            .await
            .map(Some)
    }

    /// What the login page offers besides passwords: the single sign-on
    /// button's label, if a provider is configured.
    pub fn sso_label(&self) -> Option<&str> {
        self.oidc.as_ref().map(|o| o.label())
    }

    /// Starts a single sign-on login that returns to `next`: the provider's URL.
    pub async fn sso_begin(&self, next: &str) -> ServiceResult<String> {
        let o = self.oidc.as_ref().ok_or_else(no_sso)?;
        o.begin(next).await.map_err(sso_error)
    }

    /// Finishes a single sign-on login: the provider's `code` for the login
    /// `state` names. The account is the identity's own (made at its first
    /// login; a local account of the same name is never taken over), it joins
    /// the groups its provider groups map to, and the answer is a session and
    /// where the user was going.
    pub async fn sso_finish(
        &self,
        code: &str,
        state: &str,
        client: Option<IpAddr>,
    ) -> ServiceResult<(LoginResponse, String)> {
        let o = self.oidc.as_ref().ok_or_else(no_sso)?;
        let anonymous = Caller::anonymous().from_addr(client);
        let (id, next) = match o.finish(code, state).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, client = ?client, "single sign-on failed");
                self.audit(&anonymous, "login.failed", "", format!("oidc: {e}"));
                return Err(sso_error(e));
            }
        };
        let (user, made) = match self
            .app
            .accounts
            .external(&id.user, &id.external_id, now())
            .await
        {
            Ok(x) => x,
            Err(e) => {
                self.audit(
                    &anonymous,
                    "login.failed",
                    &id.user,
                    format!("oidc {}: {e}", id.external_id),
                );
                return Err(e.into());
            }
        };
        if let Some(e) = self.standing_refusal(&user) {
            self.audit(
                &anonymous,
                "login.failed",
                &user.name,
                format!("oidc: {}", e.code),
            );
            return Err(e);
        }
        if made {
            tracing::info!(user = %user.name, identity = %id.external_id, "account made by single sign-on");
            self.audit_as(
                &user.name,
                client,
                "user.create",
                &user.name,
                format!("oidc {}", id.external_id),
            );
        }
        self.grant_memberships(&user.name, &id.groups, client)
            .await?;
        let session = self
            .open_session(
                &user,
                "web session",
                client,
                format!("oidc {}", id.external_id),
            )
            .await?;
        Ok((session, next))
    }

    /// Lifts a login lock-out or delay on `account` (admins). Not found if the
    /// account has none.
    pub fn unlock_login(&self, caller: &Caller, account: &str) -> ServiceResult<()> {
        let by = caller.admin()?;
        if self.throttle.lift(account, by.name()) {
            self.audit(caller, "login.unlock", account, String::new());
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
