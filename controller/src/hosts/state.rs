//! Host liveness as a deterministic state machine.
//!
//! ```text
//!   joining ──hello──► active ──link lost / missed heartbeats──► unreachable ──lost_after──► lost
//!      │                 ▲                                            │                        │
//!      └──lost_after─────┼───────────────hello / heartbeat────────────┴────────────────────────┘
//! ```
//!
//! [`Liveness::apply`] takes an event and `now` (ms) and returns the transition it
//! caused, if any. Nothing here reads a clock or touches the network, so every path is
//! unit-tested with made-up times.

use serde::{Deserialize, Serialize};

/// The state and its transition record are the API model's: hosts are shown as stored.
pub use cairn_api::hosts::{HostState, HostTransition as Transition};

/// When silence turns into a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// An active host with no heartbeat for this long becomes unreachable.
    pub unreachable_after_ms: u64,
    /// A host with no heartbeat for this long becomes lost.
    pub lost_after_ms: u64,
}

impl Thresholds {
    pub fn from_config(c: &crate::config::HostsConfig) -> Self {
        Thresholds {
            unreachable_after_ms: c
                .heartbeat_interval_ms
                .saturating_mul(u64::from(c.missed_heartbeats)),
            lost_after_ms: c.lost_after_ms,
        }
    }
}

/// What happened to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent's Hello was accepted on a new connection.
    Connected,
    /// A heartbeat arrived.
    Heartbeat,
    /// The link closed; the reason is what the connection said.
    Disconnected { reason: String },
    /// Time passed.
    Tick,
}

/// The part of a host record the state machine owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub state: HostState,
    pub since_ms: u64,
    /// Last Hello or heartbeat; for a joining host, the enrolment time.
    pub last_seen_ms: u64,
    /// Whether a connection is open now. Not persisted: after a controller restart no
    /// connection is open until the agent dials again.
    #[serde(skip)]
    pub connected: bool,
}

impl Liveness {
    pub fn enrolled(now_ms: u64) -> Self {
        Liveness {
            state: HostState::Joining,
            since_ms: now_ms,
            last_seen_ms: now_ms,
            connected: false,
        }
    }

    fn go(&mut self, to: HostState, now_ms: u64, reason: String) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let t = Transition {
            at_ms: now_ms,
            from: self.state,
            to,
            reason,
        };
        self.state = to;
        self.since_ms = now_ms;
        Some(t)
    }

    /// Applies one event at `now_ms`.
    pub fn apply(&mut self, event: &Event, now_ms: u64, th: &Thresholds) -> Option<Transition> {
        match event {
            Event::Connected => {
                self.connected = true;
                self.last_seen_ms = now_ms;
                self.go(HostState::Active, now_ms, "agent connected".into())
            }
            Event::Heartbeat => {
                self.last_seen_ms = now_ms;
                if self.connected {
                    self.go(HostState::Active, now_ms, "heartbeat received".into())
                } else {
                    None
                }
            }
            Event::Disconnected { reason } => {
                self.connected = false;
                match self.state {
                    HostState::Active => self.go(
                        HostState::Unreachable,
                        now_ms,
                        format!("link lost: {reason}"),
                    ),
                    _ => None,
                }
            }
            Event::Tick => {
                let silent = now_ms.saturating_sub(self.last_seen_ms);
                match self.state {
                    HostState::Active if silent > th.unreachable_after_ms => {
                        let missed = silent / (th.unreachable_after_ms.max(1));
                        self.go(
                            HostState::Unreachable,
                            now_ms,
                            format!(
                                "no heartbeat for {:.1} s (more than {missed}× the threshold)",
                                silent as f64 / 1000.0
                            ),
                        )
                    }
                    HostState::Unreachable | HostState::Joining if silent > th.lost_after_ms => {
                        self.go(
                            HostState::Lost,
                            now_ms,
                            format!("not seen for {} s", silent / 1000),
                        )
                    }
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds {
        unreachable_after_ms: 15_000,
        lost_after_ms: 300_000,
    };

    fn states(l: &mut Liveness, script: &[(u64, Event)]) -> Vec<HostState> {
        script
            .iter()
            .filter_map(|(t, e)| l.apply(e, *t, &TH))
            .map(|t| t.to)
            .collect()
    }

    #[test]
    fn full_lifecycle() {
        let mut l = Liveness::enrolled(0);
        let got = states(
            &mut l,
            &[
                (1_000, Event::Connected),
                (6_000, Event::Heartbeat),
                (11_000, Event::Tick),
                (21_000, Event::Tick),      // 15 s since 6 s: not yet more than
                (21_001, Event::Tick),      // now it is
                (30_000, Event::Heartbeat), // still connected (a stall, not a drop)
                (
                    31_000,
                    Event::Disconnected {
                        reason: "closed".into(),
                    },
                ),
                (200_000, Event::Tick),
                (330_001, Event::Tick),
                (400_000, Event::Connected),
            ],
        );
        use HostState::*;
        assert_eq!(
            got,
            vec![Active, Unreachable, Active, Unreachable, Lost, Active]
        );
    }

    #[test]
    fn heartbeat_without_connection_does_not_revive() {
        let mut l = Liveness::enrolled(0);
        l.apply(&Event::Connected, 0, &TH);
        l.apply(&Event::Disconnected { reason: "x".into() }, 1, &TH);
        assert_eq!(l.apply(&Event::Heartbeat, 2, &TH), None);
        assert_eq!(l.state, HostState::Unreachable);
    }

    #[test]
    fn joining_host_that_never_connects_is_lost() {
        let mut l = Liveness::enrolled(0);
        assert_eq!(l.apply(&Event::Tick, 299_999, &TH), None);
        assert_eq!(
            l.apply(&Event::Tick, 300_001, &TH).map(|t| t.to),
            Some(HostState::Lost)
        );
    }

    #[test]
    fn disconnect_records_reason_and_time() {
        let mut l = Liveness::enrolled(0);
        l.apply(&Event::Connected, 10, &TH);
        let t = l
            .apply(
                &Event::Disconnected {
                    reason: "agent shutting down".into(),
                },
                99,
                &TH,
            )
            .unwrap();
        assert_eq!(
            t,
            Transition {
                at_ms: 99,
                from: HostState::Active,
                to: HostState::Unreachable,
                reason: "link lost: agent shutting down".into()
            }
        );
        assert_eq!(l.since_ms, 99);
    }

    #[test]
    fn same_events_same_result() {
        let script: Vec<(u64, Event)> = (0..200u64)
            .map(|i| {
                (
                    i * 997,
                    match i % 7 {
                        0 => Event::Connected,
                        3 => Event::Disconnected { reason: "r".into() },
                        5 => Event::Heartbeat,
                        _ => Event::Tick,
                    },
                )
            })
            .collect();
        let a = states(&mut Liveness::enrolled(0), &script);
        let b = states(&mut Liveness::enrolled(0), &script);
        assert_eq!(a, b);
    }
}
