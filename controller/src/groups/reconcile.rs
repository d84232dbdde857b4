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
    if !app.accounts.is_admin(&i.owner) {
        match app.groups.get(&charge.group) {
            None => return Some(format!("group {} was removed", charge.group)),
            Some(g) if g.role_at(&i.owner, now_ms).is_none() => {
                return Some(match g.expires_ms {
                    Some(e) if now_ms >= e => format!("group {} ended", g.name),
                    _ => format!("no longer a member of group {}", g.name),
                });
            }
            Some(_) => {}
        }
    }
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

/// One pass at `now`.
pub async fn pass(app: &App, now_ms: u64) {
    let live = app
        .instances
        .matching(|i| !i.state.is_terminal() && i.charge.is_some());
    for i in &live {
        let Some(reason) = verdict(app, i, now_ms) else {
            continue;
        };
        let _span = tracing::info_span!("groups", instance = %i.id, user = %i.owner).entered();
        tracing::info!(%reason, "stopping instance");
        app.audit.record(crate::audit::AuditEntry {
            at_ms: now_ms,
            actor: "cairn".into(),
            action: "instance.stop".into(),
            target: i.id.to_string(),
            from: None,
            detail: reason.clone(),
        });
        drop(_span);
        if let Err(e) = app.instances.stop(&i.id, reason, now_ms).await {
            tracing::error!(instance = %i.id, error = %e, "could not stop an instance; will retry");
        }
    }
    let ids: std::collections::HashSet<_> = live.into_iter().map(|i| i.id).collect();
    app.activity.retain(|id| ids.contains(id));
}
