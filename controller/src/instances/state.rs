//! An instance's lifecycle as a deterministic state machine.
//!
//! ```text
//! queued → scheduled → preparing → starting → running → stopping → stopped
//!    └──────────┴───────────┴───────────┴──────────┴──────→ failed (with a reason)
//!                                          running ⇄ unreachable
//! ```
//!
//! A running instance whose host is lost becomes `unreachable`, not `failed`: the
//! notebook may well run on through a network blip, so it stays desired on its host
//! and resumes as `running` when the host reports it again. Its owner may relaunch
//! elsewhere meanwhile (its volume's lease moves, and this one is stopped).
//!
//! [`Instance::apply`] takes an [`Event`] and `now` and returns whether anything
//! changed; every change is recorded as a timestamped [`Transition`]. No clock, no
//! I/O: the manager feeds it agent reports, user actions and time.

use serde::{Deserialize, Serialize};

use cairn_shared::ids::{HostId, InstanceId};
use cairn_shared::workload::InstancePhase;

/// The states and their record are the API model's: the API shows them as stored.
pub use cairn_api::instances::{InstanceState, Transition};

/// Per-app secrets, shown only to the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AppSecrets {
    pub jupyter_token: Option<String>,
    pub rstudio_password: Option<String>,
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub owner: String,
    pub blueprint: String,
    pub revision: u32,
    pub state: InstanceState,
    pub state_reason: Option<String>,
    pub host: Option<HostId>,
    /// `IP:PORT` of the app on the host's Cairn network, once running.
    pub address: Option<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub secrets: AppSecrets,
    /// Every change, oldest first. Stored as keys of their own
    /// (`instance_transitions`, `ID/SEQ`) and appended, not rewritten with the record
    /// on every change; records older than that carry them inline and are read so.
    #[serde(default, skip_serializing)]
    pub transitions: Vec<Transition>,
    /// How many of `transitions` the store holds already (bookkeeping, not stored).
    #[serde(skip)]
    pub stored_transitions: usize,
    /// A container for it was seen on the host (so a missing one means it vanished).
    #[serde(default)]
    pub container_seen: bool,
    /// The dataset versions it mounts, resolved when it was launched (`latest`
    /// becomes a number then), so it keeps them after newer versions are pushed.
    /// Empty in records older than datasets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<cairn_shared::workload::DatasetMount>,
    /// The user's volume it restores and saves, fixed at launch (with the lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<InstanceVolume>,
    /// The group it was launched through and what it costs, fixed at launch;
    /// `None` in records older than groups (they count against nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<Charge>,
    /// When the agent last reported progress while preparing (a new detail:
    /// "pulling 40%", "waiting for the host (12 ahead)"). The start watchdog counts
    /// from it, so a launch that waits its turn on a busy host, and says so, is
    /// not failed for waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_ms: Option<u64>,
}

/// What an instance counts against: its group's and its owner's quotas there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub group: String,
    /// Credits an hour of running.
    pub cost: f64,
    pub memory_mib: u64,
    /// Idle seconds before it is stopped (the blueprint's, else the group's, at
    /// launch); `None` never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

impl Instance {
    /// When it first ran (credits are charged from then).
    pub fn running_since(&self) -> Option<u64> {
        self.transitions
            .iter()
            .find(|t| t.state == InstanceState::Running)
            .map(|t| t.at_ms)
    }

    /// The instance as the quota and usage arithmetic sees it (`None` for records
    /// older than groups).
    pub fn as_run(&self) -> Option<crate::groups::core::Run<'_>> {
        let c = self.charge.as_ref()?;
        Some(crate::groups::core::Run {
            user: &self.owner,
            live: !self.state.is_terminal(),
            memory_mib: c.memory_mib,
            cost: c.cost,
            running_since_ms: self.running_since(),
            ended_ms: self.ended_at(),
        })
    }

    /// Whether it is kept in memory: while it lives. An ended one is read from the
    /// store when asked for (what it spent goes to the groups' ledger), so memory
    /// follows what runs now, not everything that ever ran.
    pub fn stays_in_memory(&self) -> bool {
        !self.state.is_terminal()
    }

    /// When it ended, if it did.
    pub fn ended_at(&self) -> Option<u64> {
        if !self.state.is_terminal() {
            return None;
        }
        self.transitions
            .iter()
            .find(|t| t.state.is_terminal())
            .map(|t| t.at_ms)
    }
}

/// The volume an instance writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceVolume {
    /// The volume's name among its owner's.
    pub name: String,
    /// What the agent restores and where.
    pub mount: cairn_shared::workload::VolumeMount,
}

/// What can happen to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Placed on a host.
    Scheduled(HostId),
    /// The agent reported a phase.
    Report(InstancePhase),
    /// The owner or an admin asked to stop it.
    StopRequested { reason: String },
    /// Its host passed the lost threshold.
    HostLost,
    /// The host of an unreachable instance is live again (its heartbeats flow).
    HostBack,
    /// It took too long to start.
    StartTimeout,
}

impl Instance {
    pub fn new(
        id: InstanceId,
        owner: String,
        blueprint: String,
        revision: u32,
        lifetime_ms: u64,
        secrets: AppSecrets,
        now_ms: u64,
    ) -> Self {
        Instance {
            id,
            owner,
            blueprint,
            revision,
            state: InstanceState::Queued,
            state_reason: None,
            host: None,
            address: None,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(lifetime_ms),
            secrets,
            transitions: vec![Transition {
                state: InstanceState::Queued,
                at_ms: now_ms,
                reason: None,
            }],
            stored_transitions: 0,
            container_seen: false,
            datasets: vec![],
            volume: None,
            charge: None,
            progress_ms: None,
        }
    }

    /// What the passing of time does to this instance at `now`: the lifecycle tick's
    /// choice of event, in order of precedence. A lost host ends it (or, running,
    /// makes it unreachable); a lifetime that ran out stops it (unless it is
    /// already stopping); a launch stuck in
    /// scheduled/preparing/starting longer than `watchdog_ms` times out, counted
    /// from its last transition or, while preparing, its last progress report.
    /// `host` is the standing of its host, if it has one the registry knows.
    pub fn due(
        &self,
        now_ms: u64,
        host: Option<crate::hosts::HostState>,
        watchdog_ms: u64,
    ) -> Option<Event> {
        use crate::hosts::HostState as H;
        use InstanceState as S;
        if self.state.is_terminal() {
            return None;
        }
        let host_lost = host == Some(H::Lost) && self.host.is_some();
        // A stopping instance with a volume waits for its host: its agent saves
        // the files when it returns (as a conflict, if the lease moved meanwhile).
        let waits_to_save = self.state == S::Stopping && self.volume.is_some();
        if host_lost && self.state != S::Unreachable && !waits_to_save {
            return Some(Event::HostLost);
        }
        // The same connection may outlive a stall past the lost threshold: the
        // agent then has nothing new to report, and heartbeats say it is back.
        if self.state == S::Unreachable && host == Some(H::Active) {
            return Some(Event::HostBack);
        }
        if now_ms >= self.expires_ms && self.state != S::Stopping {
            return Some(Event::StopRequested {
                reason: "its lifetime ran out".into(),
            });
        }
        let launching = matches!(self.state, S::Scheduled | S::Preparing | S::Starting);
        let since = self.transitions.last().map(|t| {
            match (self.state, self.progress_ms) {
                // Progress counts only within the state it was reported in.
                (S::Preparing, Some(p)) => t.at_ms.max(p),
                _ => t.at_ms,
            }
        });
        let stuck = since.is_some_and(|at| now_ms.saturating_sub(at) > watchdog_ms);
        (launching && stuck).then_some(Event::StartTimeout)
    }

    fn go(&mut self, to: InstanceState, reason: Option<String>, now_ms: u64) -> bool {
        if self.state == to {
            return false;
        }
        self.state = to;
        self.state_reason = reason.clone();
        self.transitions.push(Transition {
            state: to,
            at_ms: now_ms,
            reason,
        });
        true
    }

    /// Applies an event; true if the instance changed.
    pub fn apply(&mut self, event: Event, now_ms: u64) -> bool {
        use InstanceState as S;
        if self.state.is_terminal() {
            return false;
        }
        match event {
            Event::Scheduled(host) if self.state == S::Queued => {
                self.host = Some(host.clone());
                self.go(S::Scheduled, Some(format!("placed on host {host}")), now_ms)
            }
            Event::Scheduled(_) => false,
            Event::StopRequested { reason } => match self.state {
                S::Queued => self.go(S::Stopped, Some(reason), now_ms),
                S::Stopping => false,
                _ => self.go(S::Stopping, Some(reason), now_ms),
            },
            Event::HostLost => match self.state {
                S::Stopping => self.go(
                    S::Stopped,
                    Some(match &self.volume {
                        Some(_) => "its host was lost while stopping; files changed since its last checkpoint were not saved".into(),
                        None => "host lost while stopping".into(),
                    }),
                    now_ms,
                ),
                S::Queued | S::Unreachable => false,
                S::Running => self.go(
                    S::Unreachable,
                    Some(
                        "its host stopped answering; it may still run there and resumes when the host returns"
                            .into(),
                    ),
                    now_ms,
                ),
                _ => self.go(
                    S::Failed,
                    Some("the host running it was lost".into()),
                    now_ms,
                ),
            },
            Event::HostBack => match self.state {
                S::Unreachable => self.go(S::Running, Some("its host is back".into()), now_ms),
                _ => false,
            },
            Event::StartTimeout => match self.state {
                S::Scheduled | S::Preparing | S::Starting => {
                    self.go(S::Failed, Some("timed out while starting".into()), now_ms)
                }
                _ => false,
            },
            Event::Report(phase) => self.on_report(phase, now_ms),
        }
    }

    fn on_report(&mut self, phase: InstancePhase, now_ms: u64) -> bool {
        use InstanceState as S;
        match phase {
            // A stopping instance only cares about its container going away.
            InstancePhase::Removed => match self.state {
                S::Stopping => {
                    let reason = self.transitions.last().and_then(|t| t.reason.clone());
                    self.go(S::Stopped, reason, now_ms)
                }
                S::Queued => false,
                _ => self.go(S::Failed, Some("its container was removed".into()), now_ms),
            },
            // The agent saves the volume before it removes the container: shown as
            // the reason ("saving files", "save failed: …"), not as a transition.
            InstancePhase::Saving { detail } => match self.state {
                S::Stopping if self.state_reason.as_deref() != Some(detail.as_str()) => {
                    self.state_reason = Some(detail);
                    true
                }
                _ => false,
            },
            _ if self.state == S::Stopping => false,
            InstancePhase::Preparing { detail } => match self.state {
                S::Scheduled => self.go(S::Preparing, Some(detail), now_ms),
                // Progress ("pulling 35%"): shown as the state's reason, not kept as
                // a transition of its own, so the history stays one line per state.
                S::Preparing if self.state_reason.as_deref() != Some(detail.as_str()) => {
                    self.state_reason = Some(detail);
                    self.progress_ms = Some(now_ms);
                    true
                }
                _ => false,
            },
            InstancePhase::Starting => match self.state {
                S::Scheduled | S::Preparing => {
                    self.container_seen = true;
                    self.go(S::Starting, None, now_ms)
                }
                _ => false,
            },
            InstancePhase::Running { address } => match self.state {
                S::Unreachable => {
                    self.address = Some(address);
                    self.go(S::Running, Some("its host is back".into()), now_ms)
                }
                S::Scheduled | S::Preparing | S::Starting => {
                    self.container_seen = true;
                    self.address = Some(address);
                    self.go(S::Running, None, now_ms)
                }
                S::Running => {
                    let changed = self.address.as_deref() != Some(address.as_str());
                    self.address = Some(address);
                    changed
                }
                _ => false,
            },
            InstancePhase::Exited {
                exit_code,
                oom_killed,
            } => {
                let reason = if oom_killed {
                    "killed: out of memory (the blueprint's memory limit was reached)".to_string()
                } else {
                    format!("the container exited with code {exit_code}")
                };
                self.go(S::Failed, Some(reason), now_ms)
            }
            InstancePhase::Failed { reason } => self.go(S::Failed, Some(reason), now_ms),
            InstancePhase::Missing => {
                self.go(S::Failed, Some("container disappeared".into()), now_ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Option<crate::hosts::HostState> = Some(crate::hosts::HostState::Active);
    const LOST: Option<crate::hosts::HostState> = Some(crate::hosts::HostState::Lost);

    fn inst() -> Instance {
        Instance::new(
            InstanceId::generate(),
            "alice".into(),
            "py".into(),
            1,
            3_600_000,
            AppSecrets::default(),
            0,
        )
    }

    fn states(i: &Instance) -> Vec<InstanceState> {
        i.transitions.iter().map(|t| t.state).collect()
    }

    #[test]
    fn pull_progress_updates_the_reason_without_new_transitions() {
        let mut i = inst();
        assert!(i.apply(Event::Scheduled(HostId::generate()), 1));
        let prep = |d: &str| {
            Event::Report(InstancePhase::Preparing {
                detail: d.to_string(),
            })
        };
        assert!(i.apply(prep("pulling"), 2));
        assert!(i.apply(prep("pulling 35%"), 3));
        assert_eq!(i.state_reason.as_deref(), Some("pulling 35%"));
        assert!(
            !i.apply(prep("pulling 35%"), 4),
            "the same detail is no change"
        );
        assert!(i.apply(prep("creating container"), 5));
        assert_eq!(states(&i).len(), 3, "queued, scheduled, preparing");
    }

    #[test]
    fn happy_path_records_every_state_with_time() {
        use InstanceState::*;
        let mut i = inst();
        let h = HostId::generate();
        assert!(i.apply(Event::Scheduled(h.clone()), 1));
        assert!(i.apply(
            Event::Report(InstancePhase::Preparing {
                detail: "creating container".into()
            }),
            2
        ));
        assert!(i.apply(Event::Report(InstancePhase::Starting), 3));
        assert!(i.apply(
            Event::Report(InstancePhase::Running {
                address: "10.0.0.2:8080".into()
            }),
            4
        ));
        assert!(i.apply(
            Event::StopRequested {
                reason: "stopped by alice".into()
            },
            5
        ));
        assert!(i.apply(Event::Report(InstancePhase::Removed), 6));
        assert_eq!(
            states(&i),
            vec![Queued, Scheduled, Preparing, Starting, Running, Stopping, Stopped]
        );
        assert_eq!(
            i.transitions.iter().map(|t| t.at_ms).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(i.state_reason.as_deref(), Some("stopped by alice"));
        assert!(
            !i.apply(
                Event::Report(InstancePhase::Running {
                    address: "x".into()
                }),
                7
            ),
            "terminal"
        );
    }

    #[test]
    fn failures_carry_readable_reasons() {
        let mut i = inst();
        i.apply(Event::Scheduled(HostId::generate()), 1);
        i.apply(
            Event::Report(InstancePhase::Exited {
                exit_code: 137,
                oom_killed: true,
            }),
            2,
        );
        assert_eq!(i.state, InstanceState::Failed);
        assert!(i.state_reason.as_deref().unwrap().contains("out of memory"));
        let mut j = inst();
        j.apply(Event::Scheduled(HostId::generate()), 1);
        j.apply(
            Event::Report(InstancePhase::Failed {
                reason: "No such image: nope:1".into(),
            }),
            2,
        );
        assert_eq!(j.state_reason.as_deref(), Some("No such image: nope:1"));
        let mut k = inst();
        k.apply(Event::Scheduled(HostId::generate()), 1);
        k.apply(Event::Report(InstancePhase::Missing), 2);
        assert_eq!(k.state_reason.as_deref(), Some("container disappeared"));
    }

    #[test]
    fn stop_while_queued_is_immediate_and_stop_is_idempotent() {
        let mut i = inst();
        assert!(i.apply(Event::StopRequested { reason: "r".into() }, 1));
        assert_eq!(i.state, InstanceState::Stopped);
        let mut j = inst();
        j.apply(Event::Scheduled(HostId::generate()), 1);
        assert!(j.apply(Event::StopRequested { reason: "r".into() }, 2));
        assert!(!j.apply(
            Event::StopRequested {
                reason: "again".into()
            },
            3
        ));
        // Reports other than removal do not revive a stopping instance.
        assert!(!j.apply(
            Event::Report(InstancePhase::Running {
                address: "a".into()
            }),
            4
        ));
        assert_eq!(j.state, InstanceState::Stopping);
    }

    #[test]
    fn time_brings_host_loss_then_expiry_then_start_timeouts() {
        let mut i = inst();
        let h = HostId::generate();
        // Queued, not expired: nothing is due, whatever the watchdog.
        assert_eq!(i.due(1_000, UP, 0), None);
        assert!(i.apply(Event::Scheduled(h), 1_000));
        assert_eq!(i.due(1_500, UP, 1_000), None);
        assert_eq!(i.due(2_001, UP, 1_000), Some(Event::StartTimeout));
        // A lost host wins over everything else.
        assert_eq!(i.due(2_001, LOST, 1_000), Some(Event::HostLost));
        // Past the lifetime the instance is stopped, not timed out.
        let late = i.expires_ms;
        assert_eq!(
            i.due(late, UP, 1_000),
            Some(Event::StopRequested {
                reason: "its lifetime ran out".into()
            })
        );
        // A stopping instance is not stopped again when its lifetime runs out.
        assert!(i.apply(Event::StopRequested { reason: "x".into() }, late));
        assert_eq!(i.due(late + 10, UP, u64::MAX), None);
        // Ended instances are left alone.
        assert!(i.apply(Event::Report(InstancePhase::Removed), late + 20));
        assert_eq!(i.due(late + 30, LOST, 0), None);
    }

    #[test]
    fn a_launch_that_reports_progress_while_preparing_is_not_timed_out() {
        let mut i = inst();
        let prep = |d: &str| {
            Event::Report(InstancePhase::Preparing {
                detail: d.to_string(),
            })
        };
        i.apply(Event::Scheduled(HostId::generate()), 1_000);
        i.apply(prep("waiting for the host (12 ahead)"), 2_000);
        assert_eq!(i.due(3_001, UP, 1_000), Some(Event::StartTimeout));
        // Moving up the host's queue is progress: the watchdog counts from it.
        assert!(i.apply(prep("waiting for the host (3 ahead)"), 2_900));
        assert_eq!(i.progress_ms, Some(2_900));
        assert_eq!(i.due(3_001, UP, 1_000), None);
        assert_eq!(i.due(3_900, UP, 1_000), None);
        // The same detail again is not progress: a queue that does not move, or
        // an agent that keeps saying the same thing, still times out.
        assert!(!i.apply(prep("waiting for the host (3 ahead)"), 3_800));
        assert_eq!(i.due(3_901, UP, 1_000), Some(Event::StartTimeout));
        // Once starting, the count is from the transition: the agent's own
        // start timeout runs from there, and progress while preparing is past.
        assert!(i.apply(Event::Report(InstancePhase::Starting), 3_850));
        assert_eq!(i.due(4_850, UP, 1_000), None);
        assert_eq!(i.due(4_851, UP, 1_000), Some(Event::StartTimeout));
        // A lost host and a lifetime that ran out still win.
        assert_eq!(i.due(4_000, LOST, 1_000), Some(Event::HostLost));
    }

    #[test]
    fn lost_hosts_fail_launches_and_make_running_instances_unreachable() {
        let mut i = inst();
        i.apply(Event::Scheduled(HostId::generate()), 1);
        i.apply(Event::HostLost, 2);
        assert_eq!(i.state, InstanceState::Failed);

        let mut r = inst();
        r.apply(Event::Scheduled(HostId::generate()), 1);
        let running = Event::Report(InstancePhase::Running {
            address: "10.0.0.2:80".into(),
        });
        r.apply(running.clone(), 2);
        assert_eq!(r.due(3, LOST, 1_000), Some(Event::HostLost));
        assert!(r.apply(Event::HostLost, 3));
        assert_eq!(r.state, InstanceState::Unreachable);
        assert!(r.state.desired_on_host(), "kept on its host for its return");
        // Lost it stays; nothing more is due while the host is away.
        assert_eq!(r.due(4, LOST, 1_000), None);
        assert_eq!(
            r.due(4, Some(crate::hosts::HostState::Unreachable), 1_000),
            None
        );
        // Heartbeats again on the same connection: back to running.
        assert_eq!(r.due(4, UP, 1_000), Some(Event::HostBack));
        // The host returns and reports it running: it resumes.
        assert!(r.apply(running, 5));
        assert_eq!(r.state, InstanceState::Running);
        assert_eq!(r.state_reason.as_deref(), Some("its host is back"));
    }

    #[test]
    fn an_unreachable_instance_stopped_ends_when_its_host_is_lost_for_good() {
        let mut r = inst();
        r.apply(Event::Scheduled(HostId::generate()), 1);
        r.apply(
            Event::Report(InstancePhase::Running {
                address: "a:1".into(),
            }),
            2,
        );
        r.apply(Event::HostLost, 3);
        assert!(r.apply(
            Event::StopRequested {
                reason: "relaunched".into()
            },
            4
        ));
        assert_eq!(r.state, InstanceState::Stopping);
        assert_eq!(r.due(5, LOST, 1_000), Some(Event::HostLost));
        r.apply(Event::HostLost, 5);
        assert_eq!(r.state, InstanceState::Stopped);
    }

    #[test]
    fn saving_shows_as_the_stopping_reason_and_the_stop_reason_is_kept() {
        let mut i = inst();
        i.apply(Event::Scheduled(HostId::generate()), 1);
        i.apply(
            Event::StopRequested {
                reason: "stopped by alice".into(),
            },
            2,
        );
        let saving = |d: &str| {
            Event::Report(InstancePhase::Saving {
                detail: d.to_string(),
            })
        };
        assert!(i.apply(saving("saving files"), 3));
        assert_eq!(i.state_reason.as_deref(), Some("saving files"));
        assert!(i.apply(saving("save failed: disk full; retrying"), 4));
        assert_eq!(i.state, InstanceState::Stopping);
        assert!(i.apply(Event::Report(InstancePhase::Removed), 5));
        assert_eq!(i.state, InstanceState::Stopped);
        assert_eq!(i.state_reason.as_deref(), Some("stopped by alice"));
        assert_eq!(states(&i).len(), 4, "queued, scheduled, stopping, stopped");
    }
}
