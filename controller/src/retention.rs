//! Retention: when the controller forgets what it no longer needs. Ended instances
//! are kept for history and usage reports for `[instances] keep_ended_days`, API
//! tokens and web sessions until they expire or are revoked, join tokens for a grace
//! period past their expiry (so an operator still sees why a late host was refused).
//!
//! The decisions are pure functions of a record's times and `now`; the pass that
//! applies them ([`sweep`]) runs every [`PERIOD`] and at start, and logs what it
//! deleted.

use std::time::Duration;

use crate::app::App;

/// How often the sweep runs.
pub const PERIOD: Duration = Duration::from_secs(600);
/// How long a join token is kept after it expired or was used up.
pub const JOIN_TOKEN_GRACE_MS: u64 = 24 * 3600 * 1000;
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Whether an instance that ended at `ended_ms` (`None`: still live) is forgotten.
pub fn instance_due(ended_ms: Option<u64>, now_ms: u64, keep_days: u32) -> bool {
    ended_ms.is_some_and(|e| e.saturating_add(u64::from(keep_days) * DAY_MS) <= now_ms)
}

/// Whether an API token or web session is deleted: expired or revoked.
pub fn api_token_due(expires_ms: u64, revoked: bool, now_ms: u64) -> bool {
    revoked || expires_ms <= now_ms
}

/// Whether a join token is deleted: past its expiry by the grace period.
pub fn join_token_due(expires_ms: u64, now_ms: u64) -> bool {
    expires_ms.saturating_add(JOIN_TOKEN_GRACE_MS) <= now_ms
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub instances: usize,
    pub api_tokens: usize,
    pub join_tokens: usize,
}

/// Applies every rule at `now_ms`; a failure of one kind is logged and the others
/// still run (and the next sweep retries).
pub async fn sweep(app: &App, now_ms: u64) -> Swept {
    let mut swept = Swept::default();
    let keep = app.config.instances.keep_ended_days;
    match app.instances.forget_ended(now_ms, keep).await {
        Ok(n) => swept.instances = n,
        Err(e) => tracing::error!(error = %e, "retention: ended instances"),
    }
    match app.api_tokens.prune(now_ms).await {
        Ok(n) => swept.api_tokens = n,
        Err(e) => tracing::error!(error = %e, "retention: API tokens"),
    }
    match app.tokens.prune(now_ms).await {
        Ok(n) => swept.join_tokens = n,
        Err(e) => tracing::error!(error = %e, "retention: join tokens"),
    }
    if swept != Swept::default() {
        tracing::info!(
            instances = swept.instances,
            api_tokens = swept.api_tokens,
            join_tokens = swept.join_tokens,
            keep_ended_days = keep,
            "retention: deleted what is past keeping"
        );
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_on_a_simulated_clock() {
        let t0 = 1_000_000_000_000u64;
        assert!(!instance_due(None, t0 + 1000 * DAY_MS, 30), "live: never");
        assert!(!instance_due(Some(t0), t0 + 30 * DAY_MS - 1, 30));
        assert!(instance_due(Some(t0), t0 + 30 * DAY_MS, 30));
        assert!(instance_due(Some(t0), t0, 0), "keep 0: at once");
        assert!(!api_token_due(t0 + 1, false, t0));
        assert!(api_token_due(t0, false, t0), "expired");
        assert!(api_token_due(t0 + DAY_MS, true, t0), "revoked");
        assert!(!join_token_due(t0, t0 + JOIN_TOKEN_GRACE_MS - 1));
        assert!(join_token_due(t0, t0 + JOIN_TOKEN_GRACE_MS));
        assert!(!join_token_due(u64::MAX, t0), "no overflow");
    }
}
