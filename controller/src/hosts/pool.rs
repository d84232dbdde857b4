//! A host's standing in the pool, beside its liveness: whether the scheduler may
//! place on it. A deterministic state machine fed events and `now`.
//!
//! ```text
//!   open ──drain──► draining ──no instances left (or deadline: stop them)──► drained ──remove──► removed
//!    ▲  ◄─undrain──────┘                                                        │
//!    │  ◄─undrain──────────────────────────────────────────────────────────────┘
//!    │
//!    └──back-off over── quarantined ◄──N consecutive launch failures── open
//! ```
//!
//! Quarantine keeps one bad host (a full disk, a broken engine) from failing every
//! launch the scheduler sends it. Each quarantine in a row lasts twice as long as the
//! last; a successful launch resets the count and the back-off.

/// The standing and the pool record are the API model's: hosts are shown as stored.
pub use cairn_api::hosts::{PoolState, Standing};

/// Settings of error tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinePolicy {
    /// Consecutive launch failures that quarantine a host.
    pub failures: u32,
    /// The first quarantine's length; each following one doubles, up to `max_ms`.
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            failures: 3,
            base_ms: 60_000,
            max_ms: 3_600_000,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    Drain {
        deadline_ms: Option<u64>,
    },
    Undrain,
    Remove,
    LaunchFailed {
        reason: String,
    },
    LaunchSucceeded,
    /// Time passed; `instances` still hold a place on the host.
    Tick {
        instances: u32,
    },
}

/// What the caller must do about an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// The standing changed (record and show it).
    Changed {
        from: &'static str,
        to: &'static str,
        reason: String,
    },
    /// The drain deadline passed: stop the instances still on the host.
    StopRemaining,
}

/// Why an admin request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolRefusal {
    #[error("the host is {0}; only a drained host can be removed (drain it first)")]
    NotDrained(&'static str),
    #[error("the host was removed")]
    Removed,
}

/// The pool state machine over [`PoolState`] (a type of the API model, so the
/// machine is a trait here; import it to drive a host's standing).
pub trait PoolMachine {
    /// Applies an admin request; refusals change nothing.
    fn request(
        &mut self,
        event: PoolEvent,
        now_ms: u64,
        policy: &QuarantinePolicy,
    ) -> Result<Vec<PoolAction>, PoolRefusal>;

    /// Applies one event at `now_ms`.
    fn apply(
        &mut self,
        event: PoolEvent,
        now_ms: u64,
        policy: &QuarantinePolicy,
    ) -> Vec<PoolAction>;
}

/// Moves to `to`, and says so unless it was there already.
fn go(s: &mut PoolState, to: Standing, reason: String) -> Vec<PoolAction> {
    if s.standing == to {
        return vec![];
    }
    let from = s.standing.as_str();
    s.standing = to;
    vec![PoolAction::Changed {
        from,
        to: s.standing.as_str(),
        reason,
    }]
}

impl PoolMachine for PoolState {
    fn request(
        &mut self,
        event: PoolEvent,
        now_ms: u64,
        policy: &QuarantinePolicy,
    ) -> Result<Vec<PoolAction>, PoolRefusal> {
        if self.standing == Standing::Removed {
            return Err(PoolRefusal::Removed);
        }
        if event == PoolEvent::Remove && self.standing != Standing::Drained {
            return Err(PoolRefusal::NotDrained(self.standing.as_str()));
        }
        Ok(self.apply(event, now_ms, policy))
    }

    fn apply(
        &mut self,
        event: PoolEvent,
        now_ms: u64,
        policy: &QuarantinePolicy,
    ) -> Vec<PoolAction> {
        if self.standing == Standing::Removed {
            return vec![];
        }
        match event {
            PoolEvent::Drain { deadline_ms } => go(
                self,
                Standing::Draining { deadline_ms },
                "drain requested".into(),
            ),
            PoolEvent::Undrain => match self.standing {
                Standing::Draining { .. } | Standing::Drained => {
                    go(self, Standing::Open, "undrain requested".into())
                }
                _ => vec![],
            },
            PoolEvent::Remove => match self.standing {
                Standing::Drained => go(self, Standing::Removed, "removed".into()),
                _ => vec![],
            },
            PoolEvent::LaunchSucceeded => {
                self.consecutive_failures = 0;
                self.quarantines = 0;
                vec![]
            }
            PoolEvent::LaunchFailed { reason } => {
                self.consecutive_failures += 1;
                self.last_failure = Some(reason.clone());
                if self.standing == Standing::Open
                    && self.consecutive_failures >= policy.failures.max(1)
                {
                    let shift = self.quarantines.min(20);
                    let len = policy
                        .base_ms
                        .saturating_mul(1u64 << shift)
                        .min(policy.max_ms);
                    self.quarantines += 1;
                    let n = self.consecutive_failures;
                    go(
                        self,
                        Standing::Quarantined {
                            until_ms: now_ms + len,
                        },
                        format!(
                            "{n} launches failed in a row (last: {reason}); quarantined for {} s",
                            len / 1000
                        ),
                    )
                } else {
                    vec![]
                }
            }
            PoolEvent::Tick { instances } => match self.standing {
                Standing::Quarantined { until_ms } if now_ms >= until_ms => {
                    // On probation: one more failure quarantines it again, for longer.
                    self.consecutive_failures = policy.failures.saturating_sub(1);
                    go(self, Standing::Open, "quarantine over; on probation".into())
                }
                Standing::Draining { .. } if instances == 0 => {
                    go(self, Standing::Drained, "no instances left".into())
                }
                Standing::Draining {
                    deadline_ms: Some(d),
                } if now_ms >= d => vec![PoolAction::StopRemaining],
                _ => vec![],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: QuarantinePolicy = QuarantinePolicy {
        failures: 3,
        base_ms: 1_000,
        max_ms: 5_000,
    };

    fn fail(s: &mut PoolState, now: u64) -> Vec<PoolAction> {
        s.apply(
            PoolEvent::LaunchFailed {
                reason: "disk full".into(),
            },
            now,
            &P,
        )
    }

    #[test]
    fn three_failures_quarantine_with_doubling_back_off() {
        let mut s = PoolState::default();
        assert!(fail(&mut s, 0).is_empty());
        assert!(fail(&mut s, 1).is_empty());
        assert_eq!(fail(&mut s, 2).len(), 1);
        assert_eq!(s.standing, Standing::Quarantined { until_ms: 1_002 });
        assert!(!s.open());
        assert!(s
            .apply(PoolEvent::Tick { instances: 0 }, 1_001, &P)
            .is_empty());
        s.apply(PoolEvent::Tick { instances: 0 }, 1_002, &P);
        assert!(s.open());
        // On probation: the next failure quarantines again, twice as long.
        fail(&mut s, 2_000);
        assert_eq!(s.standing, Standing::Quarantined { until_ms: 4_000 });
        s.apply(PoolEvent::Tick { instances: 0 }, 4_000, &P);
        fail(&mut s, 4_000);
        assert_eq!(s.standing, Standing::Quarantined { until_ms: 8_000 });
        s.apply(PoolEvent::Tick { instances: 0 }, 8_000, &P);
        fail(&mut s, 8_000);
        // Capped at max_ms.
        assert_eq!(s.standing, Standing::Quarantined { until_ms: 13_000 });
    }

    #[test]
    fn a_success_resets_the_count_and_the_back_off() {
        let mut s = PoolState::default();
        fail(&mut s, 0);
        fail(&mut s, 0);
        s.apply(PoolEvent::LaunchSucceeded, 0, &P);
        fail(&mut s, 0);
        fail(&mut s, 0);
        assert!(s.open());
        fail(&mut s, 0);
        assert_eq!(s.standing, Standing::Quarantined { until_ms: 1_000 });
        s.apply(PoolEvent::Tick { instances: 0 }, 1_000, &P);
        s.apply(PoolEvent::LaunchSucceeded, 1_000, &P);
        assert_eq!((s.consecutive_failures, s.quarantines), (0, 0));
    }

    #[test]
    fn drain_waits_for_instances_then_stops_them_at_the_deadline() {
        let mut s = PoolState::default();
        s.apply(
            PoolEvent::Drain {
                deadline_ms: Some(10_000),
            },
            0,
            &P,
        );
        assert!(!s.open());
        assert!(s
            .apply(PoolEvent::Tick { instances: 2 }, 5_000, &P)
            .is_empty());
        assert_eq!(
            s.apply(PoolEvent::Tick { instances: 2 }, 10_000, &P),
            vec![PoolAction::StopRemaining]
        );
        s.apply(PoolEvent::Tick { instances: 0 }, 11_000, &P);
        assert_eq!(s.standing, Standing::Drained);
        s.apply(PoolEvent::Undrain, 12_000, &P);
        assert!(s.open());
    }

    #[test]
    fn only_a_drained_host_is_removed_and_removal_is_final() {
        let mut s = PoolState::default();
        assert_eq!(
            s.request(PoolEvent::Remove, 0, &P),
            Err(PoolRefusal::NotDrained("open"))
        );
        s.apply(PoolEvent::Drain { deadline_ms: None }, 0, &P);
        s.apply(PoolEvent::Tick { instances: 0 }, 1, &P);
        assert!(s.request(PoolEvent::Remove, 2, &P).is_ok());
        assert_eq!(s.standing, Standing::Removed);
        assert_eq!(
            s.request(PoolEvent::Undrain, 3, &P),
            Err(PoolRefusal::Removed)
        );
        assert!(fail(&mut s, 4).is_empty());
    }

    #[test]
    fn a_quarantined_host_can_be_drained() {
        let mut s = PoolState::default();
        for _ in 0..3 {
            fail(&mut s, 0);
        }
        s.apply(PoolEvent::Drain { deadline_ms: None }, 1, &P);
        assert_eq!(s.standing, Standing::Draining { deadline_ms: None });
        // Its quarantine ending does not reopen it.
        s.apply(PoolEvent::Tick { instances: 1 }, 999_999, &P);
        assert_eq!(s.standing, Standing::Draining { deadline_ms: None });
    }
}
