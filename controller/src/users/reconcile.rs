//! The accounts' periodic pass: an expired account's instances stop (with that
//! reason), and an account whose deletion is due goes with its files once
//! nothing of it runs: instances first (each saving its volume), then volumes,
//! memberships, tokens and the account. The decision is [`step`] (pure); the
//! pass gathers the facts and acts, retrying what failed at the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Standing, User};
use crate::app::App;

/// How often the pass runs.
pub const PERIOD: Duration = Duration::from_secs(2);

/// What the pass does about one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Stop these instances with this reason.
    Stop {
        reason: String,
    },
    /// Nothing of the account runs and its deletion is due: remove it and its files.
    Delete,
}

/// What to do about `user` at `now`, given whether any of its instances is live.
pub fn step(user: &User, live: bool, now_ms: u64) -> Step {
    if user.deletion_due(now_ms) {
        return if live {
            Step::Stop {
                reason: "account deleted".into(),
            }
        } else {
            Step::Delete
        };
    }
    if live && user.standing(now_ms) == Standing::Expired {
        return Step::Stop {
            reason: "account expired".into(),
        };
    }
    Step::Nothing
}

pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let app = &*app;
    crate::periodic::every(PERIOD, Duration::ZERO, shutdown, |now| pass(app, now)).await;
}

/// One pass at `now`.
pub async fn pass(app: &App, now_ms: u64) {
    let users = match app.accounts.list() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "accounts pass: cannot list accounts");
            return;
        }
    };
    for user in users {
        // Only accounts with something coming need a look at their instances.
        if user.delete_after_ms.is_none() && user.expires_ms.is_none_or(|e| now_ms < e) {
            continue;
        }
        let live = app
            .instances
            .matching(|i| i.owner == user.name && !i.state.is_terminal());
        let _span = tracing::info_span!("accounts", user = %user.name).entered();
        match step(&user, !live.is_empty(), now_ms) {
            Step::Nothing => {}
            Step::Stop { reason } => {
                drop(_span);
                for i in live
                    .iter()
                    .filter(|i| i.state != crate::instances::InstanceState::Stopping)
                {
                    tracing::info!(instance = %i.id, user = %user.name, %reason, "stopping instance");
                    record(app, now_ms, "instance.stop", &i.id.to_string(), &reason);
                    if let Err(e) = app.instances.stop(&i.id, reason.clone(), now_ms).await {
                        tracing::error!(instance = %i.id, error = %e, "could not stop an instance; will retry");
                    }
                }
            }
            Step::Delete => {
                drop(_span);
                if let Err(e) = delete(app, &user.name).await {
                    tracing::error!(user = %user.name, error = %e, "could not delete an account; will retry");
                } else {
                    tracing::info!(user = %user.name, "account and its files deleted");
                    record(
                        app,
                        now_ms,
                        "user.delete",
                        &user.name,
                        "deletion request's grace ended",
                    );
                }
            }
        }
    }
}

fn record(app: &App, now_ms: u64, action: &str, target: &str, detail: &str) {
    app.audit.record(crate::audit::AuditEntry {
        at_ms: now_ms,
        actor: "cairn".into(),
        action: action.into(),
        target: target.into(),
        from: None,
        detail: detail.into(),
    });
}

/// Removes the account's volumes, memberships and tokens, then the account:
/// in that order, so a failure half-way leaves the account to try again.
async fn delete(app: &App, name: &str) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    for v in app.volumes.list(Some(name)).map_err(|x| e(&x))? {
        app.volumes
            .remove(name, &v.name, |h| app.instances.lease_holder(h))
            .await
            .map_err(|x| e(&x))?;
    }
    for g in app.groups.list() {
        if g.members.contains_key(name) {
            app.groups
                .modify::<_, crate::groups::GroupsError>(&g.name, |g| {
                    g.members.remove(name);
                    Ok(())
                })
                .await
                .map_err(|x| e(&x))?;
        }
    }
    for t in app.api_tokens.list_for(Some(name)).map_err(|x| e(&x))? {
        if !t.revoked {
            app.api_tokens.revoke(&t.id).await.map_err(|x| e(&x))?;
        }
    }
    app.accounts.remove(name).await.map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{PendingApproval, Role};

    fn user() -> User {
        User {
            name: "alice".into(),
            role: Role::User,
            password_hash: String::new(),
            disabled: false,
            created_ms: 0,
            external_id: None,
            email: None,
            pending: None,
            expires_ms: None,
            delete_after_ms: None,
        }
    }

    #[test]
    fn an_expired_account_stops_its_instances_and_keeps_its_files() {
        let mut u = user();
        assert_eq!(step(&u, true, 10), Step::Nothing);
        u.expires_ms = Some(10);
        assert_eq!(step(&u, true, 9), Step::Nothing);
        assert_eq!(
            step(&u, true, 10),
            Step::Stop {
                reason: "account expired".into()
            }
        );
        assert_eq!(step(&u, false, 10), Step::Nothing, "expiry deletes nothing");
        assert_eq!(u.standing(10), Standing::Expired);
    }

    #[test]
    fn a_due_deletion_waits_for_the_instances_to_end() {
        let mut u = user();
        u.delete_after_ms = Some(100);
        assert_eq!(step(&u, false, 99), Step::Nothing, "within the grace");
        assert_eq!(
            step(&u, true, 100),
            Step::Stop {
                reason: "account deleted".into()
            }
        );
        assert_eq!(step(&u, false, 100), Step::Delete);
    }

    #[test]
    fn standing_orders_disabled_then_pending_then_expired() {
        let mut u = user();
        assert_eq!(u.standing(0), Standing::Active);
        u.expires_ms = Some(0);
        assert_eq!(u.standing(0), Standing::Expired);
        u.pending = Some(PendingApproval {
            requested_ms: 0,
            group: None,
        });
        assert_eq!(u.standing(0), Standing::Pending);
        u.disabled = true;
        assert_eq!(u.standing(0), Standing::Disabled);
    }
}
