//! The life of an account besides its login: self sign-up (where the site opens
//! it), approval by an admin or by a manager of the group whose join code the
//! registrant gave, auto-approval by e-mail domain, expiry, and deletion asked
//! for with a grace period (the accounts' pass, `users::reconcile`, carries it
//! out). Who may do each is decided here, once. Sign-ups are throttled per
//! address with the login door's policy.

use std::net::IpAddr;

use cairn_api::users::{Registered, Registration, User};

use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::groups::core::Action;
use crate::users::{PendingApproval, Role, Standing};

/// Longest e-mail address accepted (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;

/// At most this many registrations wait at once: sign-up cannot be used to
/// fill the store.
pub const MAX_PENDING: usize = 1000;

/// The domain of a plausible e-mail address, lower-cased; an error a person
/// can act on otherwise.
pub fn email_domain(email: &str) -> Result<String, String> {
    let bad = || format!("{email:?} is not an e-mail address");
    if email.len() > MAX_EMAIL || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    let labels_ok = domain.split('.').count() >= 2
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if local.is_empty() || local.contains('@') || !labels_ok {
        return Err(bad());
    }
    Ok(domain.to_ascii_lowercase())
}

/// Whether `domain` is one of `allowed` or under one of them.
pub fn auto_approved(domain: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        domain == a || domain.ends_with(&format!(".{a}"))
    })
}

impl Service {
    /// Whether people may sign up here.
    pub fn registration_open(&self) -> bool {
        self.app.config.registration.open
    }

    /// Self sign-up: the account is made at once, and waits for approval unless
    /// its e-mail domain is one the site approves. With a join code, the account
    /// is a member of that group from the start and the group's managers may
    /// approve it.
    pub async fn register(
        &self,
        r: &Registration,
        client: Option<IpAddr>,
    ) -> ServiceResult<Registered> {
        let cfg = &self.app.config.registration;
        if !cfg.open {
            return Err(ServiceError::new(
                Kind::Forbidden,
                "registration_closed",
                "this site does not take sign-ups; ask an admin for an account",
            ));
        }
        let email = r.email.trim();
        let domain = email_domain(email).map_err(ServiceError::invalid)?;
        let waiting = self
            .app
            .accounts
            .list()?
            .iter()
            .filter(|u| u.pending.is_some())
            .count();
        if waiting >= MAX_PENDING {
            return Err(ServiceError::new(
                Kind::Throttled,
                "too_many_registrations",
                "too many registrations are waiting for approval; try again later",
            ));
        }
        // Each sign-up costs a password hash: an address gets the login door's
        // free tries, then waits longer each time. The key is the name asked
        // for, so no account and no other address is held back by it.
        let addr = client.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let key = format!("sign-up:{}", r.name);
        self.throttle.check(&key, addr).map_err(|t| {
            let mut e = ServiceError::new(
                Kind::Throttled,
                "registration_throttled",
                format!(
                    "too many sign-ups from this address; try again in {} s",
                    t.retry_after_secs()
                ),
            );
            e.retry_after_secs = Some(t.retry_after_secs());
            e
        })?;
        self.throttle.failed(&key, addr);
        self.throttle.succeeded(&key);
        let approved = auto_approved(&domain, &cfg.auto_approve_domains);
        let now = now();
        let user = self
            .app
            .accounts
            .create_with(&r.name, &r.password, Role::User, now, |u| {
                u.email = Some(email.to_string());
                u.pending = (!approved).then_some(PendingApproval {
                    requested_ms: now,
                    group: None,
                });
            })
            .await?;
        let mut group = None;
        if let Some(code) = r.code.as_deref().filter(|c| !c.trim().is_empty()) {
            match self.join_as(&user.name, code).await {
                Ok(g) => group = Some(g.name),
                Err(e) => {
                    // A wrong code makes no account: the person tries again.
                    let _ = self.app.accounts.remove(&user.name).await;
                    return Err(e);
                }
            }
        }
        let user = match (&group, approved) {
            (Some(g), false) => {
                self.app
                    .accounts
                    .modify(&user.name, |u| {
                        if let Some(p) = u.pending.as_mut() {
                            p.group = Some(g.clone());
                        }
                    })
                    .await?
            }
            _ => user,
        };
        tracing::info!(user = %user.name, pending = !approved, group = ?group, client = ?client, "registration");
        self.audit_as(
            &user.name,
            client,
            "user.register",
            &user.name,
            match (&group, approved) {
                (_, true) => format!("approved by e-mail domain {domain}"),
                (Some(g), false) => format!("waiting for a manager of {g}"),
                (None, false) => "waiting for an admin".into(),
            },
        );
        let message = match (&group, approved) {
            (_, true) => "your account is ready: log in".to_string(),
            (Some(g), false) => format!(
                "thanks: your account waits for a manager of {g} (or an admin) to approve it; you can log in once they have"
            ),
            (None, false) => {
                "thanks: your account waits for an admin to approve it; you can log in once they have".to_string()
            }
        };
        Ok(Registered {
            user: User::from(&user),
            message,
        })
    }

    /// The registrations the caller may approve: all of them for admins, those
    /// that came with a group's code for that group's managers.
    pub fn pending_users(&self, caller: &Caller) -> ServiceResult<Vec<User>> {
        caller.user()?;
        Ok(self
            .app
            .accounts
            .list()?
            .iter()
            .filter(|u| u.pending.is_some() && self.may_decide(caller, u))
            .map(User::from)
            .collect())
    }

    fn may_decide(&self, caller: &Caller, u: &crate::users::User) -> bool {
        caller.is_admin()
            || u.pending
                .as_ref()
                .and_then(|p| p.group.as_deref())
                .is_some_and(|g| self.group_for(caller, g, Action::ManageMembers).is_ok())
    }

    /// The pending account `name`, if the caller may decide on it; the same
    /// "not found" for a name that does not exist, is not pending, or is not
    /// the caller's to decide, so a manager learns nothing of others' sign-ups.
    fn pending_for(&self, caller: &Caller, name: &str) -> ServiceResult<crate::users::User> {
        caller.user()?;
        let missing =
            || ServiceError::not_found(format!("no registration of {name:?} waits for you"));
        let u = self.app.accounts.get(name)?.ok_or_else(missing)?;
        if u.pending.is_none() || !self.may_decide(caller, &u) {
            return Err(missing());
        }
        Ok(u)
    }

    /// Approves a registration: the account may log in.
    pub async fn approve_user(&self, caller: &Caller, name: &str) -> ServiceResult<User> {
        self.pending_for(caller, name)?;
        let u = self.app.accounts.modify(name, |u| u.pending = None).await?;
        tracing::info!(user = %name, by = %caller.actor(), "registration approved");
        self.audit(caller, "user.approve", name, String::new());
        Ok(User::from(&u))
    }

    /// Rejects a registration: the account and its membership go.
    pub async fn reject_user(&self, caller: &Caller, name: &str) -> ServiceResult<User> {
        let u = self.pending_for(caller, name)?;
        if let Some(g) = u.pending.as_ref().and_then(|p| p.group.as_deref()) {
            self.app
                .groups
                .modify::<_, crate::groups::GroupsError>(g, |g| {
                    g.members.remove(name);
                    Ok(())
                })
                .await?;
        }
        self.app.accounts.remove(name).await?;
        tracing::info!(user = %name, by = %caller.actor(), "registration rejected");
        self.audit(caller, "user.reject", name, String::new());
        Ok(User::from(&u))
    }

    /// Sets or clears when an account stops working (admins). An expired
    /// account cannot log in, its tokens stop working, and its instances stop;
    /// its files stay.
    pub async fn set_user_expiry(
        &self,
        caller: &Caller,
        name: &str,
        expires_ms: Option<u64>,
    ) -> ServiceResult<User> {
        let by = caller.admin()?;
        if by.user.as_deref() == Some(name) && expires_ms.is_some() {
            return Err(ServiceError::conflict(
                "self_expire",
                "you cannot set an expiry on your own account; ask another admin",
            ));
        }
        let u = self
            .app
            .accounts
            .modify(name, |u| u.expires_ms = expires_ms)
            .await?;
        self.audit(
            caller,
            "user.expiry",
            name,
            expires_ms.map_or("never".into(), |e| format!("at {e}")),
        );
        Ok(User::from(&u))
    }

    /// Asks for an account's deletion (the account itself, or an admin): after
    /// the site's grace period its instances stop, and its volumes, memberships,
    /// tokens and the account are removed. Until then it can be withdrawn.
    pub async fn request_deletion(&self, caller: &Caller, name: &str) -> ServiceResult<User> {
        let p = caller.user()?;
        if !caller.may_see(name) {
            return Err(ServiceError::not_found(format!("no user named {name:?}")));
        }
        if p.is_admin() && p.user.as_deref() == Some(name) {
            return Err(ServiceError::conflict(
                "self_delete",
                "an admin cannot delete their own account; ask another admin",
            ));
        }
        let after = now().saturating_add(
            self.app
                .config
                .registration
                .deletion_grace_secs
                .saturating_mul(1000),
        );
        let u = self
            .app
            .accounts
            .modify(name, |u| {
                u.delete_after_ms = Some(u.delete_after_ms.map_or(after, |d| d.min(after)))
            })
            .await?;
        tracing::info!(user = %name, by = %caller.actor(), after, "deletion requested");
        self.audit(
            caller,
            "user.delete_request",
            name,
            format!("after {after}"),
        );
        Ok(User::from(&u))
    }

    /// Withdraws a deletion request before it is carried out.
    pub async fn cancel_deletion(&self, caller: &Caller, name: &str) -> ServiceResult<User> {
        caller.user()?;
        if !caller.may_see(name) {
            return Err(ServiceError::not_found(format!("no user named {name:?}")));
        }
        let u = self
            .app
            .accounts
            .modify(name, |u| u.delete_after_ms = None)
            .await?;
        self.audit(caller, "user.delete_cancel", name, String::new());
        Ok(User::from(&u))
    }

    /// Why `user` may not log in or use a token now, if it may not: the one
    /// rule every door (password, single sign-on, front proxy, tokens) applies.
    pub(crate) fn standing_refusal(&self, user: &crate::users::User) -> Option<ServiceError> {
        match user.standing(now()) {
            Standing::Active => None,
            Standing::Disabled => Some(ServiceError::new(
                Kind::Unauthenticated,
                "login_failed",
                super::session::LOGIN_FAILED,
            )),
            Standing::Pending => Some(ServiceError::new(
                Kind::Forbidden,
                "account_pending",
                match user.pending.as_ref().and_then(|p| p.group.as_deref()) {
                    Some(g) => format!(
                        "your account waits for a manager of {g} (or an admin) to approve it"
                    ),
                    None => "your account waits for an admin to approve it".into(),
                },
            )),
            Standing::Expired => Some(ServiceError::new(
                Kind::Forbidden,
                "account_expired",
                "your account has expired; ask an admin to extend it",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_mail_addresses_are_checked_and_domains_matched() {
        assert_eq!(email_domain("Ann@Uni.Example").unwrap(), "uni.example");
        for bad in [
            "ann",
            "@uni.example",
            "ann@",
            "ann@localhost",
            "ann @uni.example",
            "ann@uni..example",
            "a@b@uni.example",
        ] {
            assert!(email_domain(bad).is_err(), "{bad}");
        }
        assert!(email_domain(&format!("{}@uni.example", "a".repeat(250))).is_err());
        let allowed = vec!["uni.example".to_string()];
        assert!(auto_approved("uni.example", &allowed));
        assert!(auto_approved("physics.uni.example", &allowed));
        assert!(!auto_approved("evil-uni.example", &allowed));
        assert!(!auto_approved("uni.example.evil", &allowed));
    }
}
