//! The groups' periodic pass: stops the instances whose owner's membership of
//! their group ended (the course expired, the member was removed) and those idle
//! past their timeout, each with the reason the owner will read. The decisions are
//! the core's ([`core::idle_step`], [`GroupRecord::role_at`]); this gathers the
//! facts and acts.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::core::{self, IdleStep};
use crate::app::App;
use cairn_shared::ids::InstanceId;

use crate::instances::Instance;

/// How often the pass runs.
pub const PERIOD: Duration = Duration::from_secs(2);

pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let app = &*app;
    crate::periodic::every(PERIOD, Duration::ZERO, shutdown, |now| pass(app, now)).await;
}

/// Why `i` must stop at `now`, if it must.
pub fn verdict(app: &App, i: &Instance, now_ms: u64) -> Option<String> {
    let charge = i.charge.as_ref()?;
    membership_verdict(app, &i.owner, &charge.group, now_ms)
        .or_else(|| idle_verdict(app, i, now_ms))
}

/// Why `owner`'s instances of `group` must stop at `now`: the group is gone or
/// ended, or they are no longer in it. Admins' instances never stop for this.
fn membership_verdict(app: &App, owner: &str, group: &str, now_ms: u64) -> Option<String> {
    if app.accounts.is_admin(owner) {
        return None;
    }
    match app.groups.get(group) {
        None => Some(format!("group {group} was removed")),
        Some(g) if g.role_at(owner, now_ms).is_none() => Some(match g.expires_ms {
            Some(e) if now_ms >= e => format!("group {} ended", g.name),
            _ => format!("no longer a member of group {}", g.name),
        }),
        Some(_) => None,
    }
}

/// Why a running `i` must stop for idleness at `now`, if it must.
fn idle_verdict(app: &App, i: &Instance, now_ms: u64) -> Option<String> {
    if i.state != crate::instances::InstanceState::Running {
        return None;
    }
    match idle_step_of(app, i, now_ms) {
        IdleStep::Stop { reason } => Some(reason),
        _ => None,
    }
}

/// Where `i` stands on idleness at `now`: its last activity through the proxy, or
/// when it started running if nobody used it since.
pub fn idle_step_of(app: &App, i: &Instance, now_ms: u64) -> IdleStep {
    let Some(charge) = &i.charge else {
        return IdleStep::Nothing;
    };
    let Some(since) = i.running_since() else {
        return IdleStep::Nothing;
    };
    let last = app.activity.last(&i.id).unwrap_or(0).max(since);
    let timeout_ms = charge.idle_timeout_secs.map(|s| s.saturating_mul(1000));
    core::idle_step(last, timeout_ms, warn_ms(timeout_ms), now_ms)
}

/// How long before an idle stop the instance page warns: 10 minutes, or a fifth
/// of a shorter timeout.
fn warn_ms(timeout_ms: Option<u64>) -> u64 {
    timeout_ms.map_or(0, |t| (t / 5).min(10 * 60_000))
}

/// One pass at `now`. It looks at every live instance without copying any, and
/// asks about each owner's membership once per group, not once per instance: at
/// a hundred thousand instances, copying them all every two seconds was a tenth
/// of the controller's time.
pub async fn pass(app: &App, now_ms: u64) {
    use std::collections::{HashMap, HashSet};
    let mut memberships: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut live: HashSet<InstanceId> = HashSet::new();
    let due: Vec<(InstanceId, String, String)> = app.instances.visit_live(|i| {
        let charge = i.charge.as_ref()?;
        live.insert(i.id.clone());
        let membership = memberships
            .entry((i.owner.clone(), charge.group.clone()))
            .or_insert_with(|| membership_verdict(app, &i.owner, &charge.group, now_ms))
            .clone();
        let reason = membership.or_else(|| idle_verdict(app, i, now_ms))?;
        Some((i.id.clone(), i.owner.clone(), reason))
    });
    for (id, owner, reason) in due {
        let _span = tracing::info_span!("groups", instance = %id, user = %owner).entered();
        tracing::info!(%reason, "stopping instance");
        app.audit.record(crate::audit::AuditEntry {
            at_ms: now_ms,
            actor: "cairn".into(),
            action: "instance.stop".into(),
            target: id.to_string(),
            from: None,
            detail: reason.clone(),
        });
        drop(_span);
        if let Err(e) = app.instances.stop(&id, reason, now_ms).await {
            tracing::error!(instance = %id, error = %e, "could not stop an instance; will retry");
        }
    }
    app.activity.retain(|id| live.contains(id));
}
