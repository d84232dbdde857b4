//! Servers a cloud provider was asked for, from the create call until their host is
//! `active` — and what to do when one never gets there. Pure: fed what Nova reports,
//! whether the server's join token was used, and `now`.
//!
//! A server moves `spawning` (created, not yet ACTIVE in Nova) → `joining` (ACTIVE,
//! its agent has not enrolled) → `active` (its one-use join token enrolled a host).
//! One that is not `active` by its deadline, or that Nova reports in ERROR or gone,
//! is a failure: the server is deleted, its token revoked, and the pool backs off
//! ([`Backoff`]) so a broken image or a full quota does not become a storm of
//! create calls.

use serde::{Deserialize, Serialize};

use cairn_shared::ids::HostId;

pub use cairn_api::autoscaler::ServerPhase as Phase;

/// One server asked of the provider, as kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The cloud's server id.
    pub id: String,
    pub name: String,
    pub pool: String,
    /// The id (never the secret) of its one-use join token.
    pub token_id: String,
    pub created_ms: u64,
    /// When Nova first reported it ACTIVE.
    pub active_ms: Option<u64>,
    /// When its agent enrolled.
    pub joined_ms: Option<u64>,
    /// Not `active` by then: deleted and counted as a failure.
    pub deadline_ms: u64,
    pub phase: Phase,
    /// The host its agent enrolled as.
    pub host: Option<HostId>,
    /// Nova's last word on it (`BUILD`, `ACTIVE`, `ERROR`, ...).
    pub status: String,
}

/// What the provider saw of a server in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Nova's status, or `None` if Nova no longer knows the server.
    pub status: Option<String>,
    /// The host enrolled with the server's join token, if any.
    pub joined: Option<HostId>,
}

/// What to do about a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing changed.
    Keep,
    /// Store the updated record.
    Update(ServerRecord),
    /// It failed: delete the server and its token, count the failure.
    Fail { reason: String },
    /// Nova no longer has it and it needs nothing more: drop the record.
    Forget,
}

/// Decides what a server's new observation means.
pub fn step(rec: &ServerRecord, seen: &Observed, now_ms: u64) -> Step {
    let Some(status) = seen.status.as_deref() else {
        return match rec.phase {
            // A host that joined and whose server went away is the registry's
            // business (it will be lost); the provider has nothing left to track.
            Phase::Active => Step::Forget,
            _ => Step::Fail {
                reason: format!("server {} disappeared before its host joined", rec.name),
            },
        };
    };
    let mut next = rec.clone();
    next.status = status.to_string();
    if let Some(host) = &seen.joined {
        if rec.phase != Phase::Active {
            next.phase = Phase::Active;
            next.host = Some(host.clone());
            next.joined_ms = Some(now_ms);
            if next.active_ms.is_none() {
                next.active_ms = Some(now_ms);
            }
        }
    } else if rec.phase != Phase::Active {
        if status == "ERROR" {
            return Step::Fail {
                reason: format!("server {} went into ERROR", rec.name),
            };
        }
        if now_ms >= rec.deadline_ms {
            let phase = if rec.phase == Phase::Spawning {
                "was not ACTIVE"
            } else {
                "was ACTIVE but its agent had not joined"
            };
            return Step::Fail {
                reason: format!(
                    "server {} {phase} after {} s (status {status})",
                    rec.name,
                    (now_ms - rec.created_ms) / 1000
                ),
            };
        }
        if status == "ACTIVE" && rec.phase == Phase::Spawning {
            next.phase = Phase::Joining;
            next.active_ms = Some(now_ms);
        }
    }
    if next == *rec {
        Step::Keep
    } else {
        Step::Update(next)
    }
}

/// The first wait after a failure; doubles with each failure in a row.
pub const BACKOFF_BASE_MS: u64 = 30_000;
/// The longest wait.
pub const BACKOFF_MAX_MS: u64 = 15 * 60 * 1000;

/// A pool's provider failures in a row and how long to hold off creating.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Failures since the last success.
    pub failures: u32,
    /// Every failure ever, for the pool's page.
    pub total_failures: u64,
    pub last_error: Option<String>,
    pub until_ms: u64,
}

impl Backoff {
    pub fn failed(&mut self, error: String, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.total_failures = self.total_failures.saturating_add(1);
        self.last_error = Some(error);
        let shift = self.failures.saturating_sub(1).min(16);
        self.until_ms = now_ms + (BACKOFF_BASE_MS << shift).min(BACKOFF_MAX_MS);
    }

    /// A host joined: the recipe works.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.until_ms = 0;
    }

    /// Why not to create now, if so.
    pub fn holds(&self, now_ms: u64) -> Option<String> {
        (now_ms < self.until_ms).then(|| {
            format!(
                "backing off after {} failure(s) in a row, {} s to go; last: {}",
                self.failures,
                (self.until_ms - now_ms).div_ceil(1000),
                self.last_error.as_deref().unwrap_or("?")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ServerRecord {
        ServerRecord {
            id: "s1".into(),
            name: "cairn-cloud-1".into(),
            pool: "cloud".into(),
            token_id: "t1".into(),
            created_ms: 1_000,
            active_ms: None,
            joined_ms: None,
            deadline_ms: 601_000,
            phase: Phase::Spawning,
            host: None,
            status: "BUILD".into(),
        }
    }

    fn seen(status: Option<&str>, joined: Option<&HostId>) -> Observed {
        Observed {
            status: status.map(str::to_string),
            joined: joined.cloned(),
        }
    }

    fn apply(r: &mut ServerRecord, s: Step) {
        match s {
            Step::Update(n) => *r = n,
            Step::Keep => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_server_goes_spawning_joining_active() {
        let host = HostId::generate();
        let mut r = rec();
        assert_eq!(step(&r, &seen(Some("BUILD"), None), 2_000), Step::Keep);
        let s = step(&r, &seen(Some("ACTIVE"), None), 3_000);
        apply(&mut r, s);
        assert_eq!((r.phase, r.active_ms), (Phase::Joining, Some(3_000)));
        let s = step(&r, &seen(Some("ACTIVE"), Some(&host)), 9_000);
        apply(&mut r, s);
        assert_eq!(r.phase, Phase::Active);
        assert_eq!((r.host.as_ref(), r.joined_ms), (Some(&host), Some(9_000)));
        // Past the deadline an active host is fine.
        assert_eq!(
            step(&r, &seen(Some("ACTIVE"), Some(&host)), 10_000_000),
            Step::Keep
        );
        // Its server deleted: nothing left to track.
        assert_eq!(step(&r, &seen(None, Some(&host)), 10_000_001), Step::Forget);
    }

    #[test]
    fn a_server_whose_agent_never_joins_fails_at_the_deadline() {
        let mut r = rec();
        let s = step(&r, &seen(Some("ACTIVE"), None), 3_000);
        apply(&mut r, s);
        assert_eq!(step(&r, &seen(Some("ACTIVE"), None), 600_999), Step::Keep);
        let Step::Fail { reason } = step(&r, &seen(Some("ACTIVE"), None), 601_000) else {
            panic!("expected a failure");
        };
        assert!(
            reason.contains("agent had not joined after 600 s"),
            "{reason}"
        );
    }

    #[test]
    fn error_or_vanishing_before_joining_fails_at_once() {
        let r = rec();
        assert!(matches!(
            step(&r, &seen(Some("ERROR"), None), 2_000),
            Step::Fail { .. }
        ));
        assert!(matches!(
            step(&r, &seen(None, None), 2_000),
            Step::Fail { .. }
        ));
    }

    #[test]
    fn an_agent_may_join_before_nova_says_active() {
        let host = HostId::generate();
        let mut r = rec();
        let s = step(&r, &seen(Some("BUILD"), Some(&host)), 2_000);
        apply(&mut r, s);
        assert_eq!(r.phase, Phase::Active);
        assert_eq!(r.active_ms, Some(2_000));
    }

    #[test]
    fn backoff_doubles_up_to_a_ceiling_and_resets_on_success() {
        let mut b = Backoff::default();
        assert_eq!(b.holds(0), None);
        b.failed("quota".into(), 0);
        assert_eq!(b.until_ms, BACKOFF_BASE_MS);
        b.failed("quota".into(), 0);
        assert_eq!(b.until_ms, 2 * BACKOFF_BASE_MS);
        for _ in 0..40 {
            b.failed("quota".into(), 0);
        }
        assert_eq!(b.until_ms, BACKOFF_MAX_MS);
        let why = b.holds(BACKOFF_MAX_MS - 1500).expect("holding");
        assert!(
            why.contains("42 failure(s)") && why.contains("2 s to go") && why.contains("quota"),
            "{why}"
        );
        assert_eq!(b.holds(BACKOFF_MAX_MS), None);
        b.succeeded();
        assert_eq!((b.failures, b.total_failures, b.holds(0)), (0, 42, None));
    }
}
