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

use serde::{Deserialize, Serialize};

/// Where a host stands in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Standing {
    /// Takes new instances (if live).
    #[default]
    Open,
    /// Takes no new instances; running ones finish, or are stopped at the deadline.
    Draining { deadline_ms: Option<u64> },
    /// Drained: empty, taking nothing. Can be removed or opened again.
    Drained,
    /// Removed from the pool; its agent is refused from now on.
    Removed,
    /// Too many launches failed in a row; open again at `until_ms`.
    Quarantined { until_ms: u64 },
}

impl Standing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Standing::Open => "open",
            Standing::Draining { .. } => "draining",
            Standing::Drained => "drained",
            Standing::Removed => "removed",
            Standing::Quarantined { .. } => "quarantined",
        }
    }
}

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

/// The pool part of a host record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PoolState {
    #[serde(default)]
    pub standing: Standing,
    /// Launch failures since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Quarantines in a row (sets the back-off).
    #[serde(default)]
    pub quarantines: u32,
    /// The last launch failure, for admins.
    #[serde(default)]
    pub last_failure: Option<String>,
}

impl PoolState {
    /// Whether the scheduler may place here (liveness permitting).
    pub fn open(&self) -> bool {
        self.standing == Standing::Open
    }

    fn go(&mut self, to: Standing, reason: String) -> Vec<PoolAction> {
        if self.standing == to {
            return vec![];
        }
        let from = self.standing.as_str();
        self.standing = to;
        vec![PoolAction::Changed {
            from,
            to: self.standing.as_str(),
            reason,
        }]
    }

    /// Applies an admin request; refusals change nothing.
    pub fn request(
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

    /// Applies one event at `now_ms`.
    pub fn apply(
        &mut self,
        event: PoolEvent,
        now_ms: u64,
        policy: &QuarantinePolicy,
    ) -> Vec<PoolAction> {
        if self.standing == Standing::Removed {
            return vec![];
        }
        match event {
            PoolEvent::Drain { deadline_ms } => {
                self.go(Standing::Draining { deadline_ms }, "drain requested".into())
            }
            PoolEvent::Undrain => match self.standing {
                Standing::Draining { .. } | Standing::Drained => {
                    self.go(Standing::Open, "undrain requested".into())
                }
                _ => vec![],
            },
            PoolEvent::Remove => match self.standing {
                Standing::Drained => self.go(Standing::Removed, "removed".into()),
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
                    self.go(
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
                    self.go(Standing::Open, "quarantine over; on probation".into())
                }
                Standing::Draining { .. } if instances == 0 => {
                    self.go(Standing::Drained, "no instances left".into())
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
