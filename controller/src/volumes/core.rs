//! The decisions about a user's volume, with no I/O and no clock (issue 13): who may
//! write it, which snapshot a commit becomes, and which snapshots retention drops.
//!
//! A volume is a chain of snapshots with one writer at a time. The writer holds a
//! **lease**; every commit names the generation it started from. The rules:
//!
//! * [`decide_lease`] — a launch gets the lease when nobody holds it or its holder
//!   ended; it is refused while the holder runs; it **moves** when the holder's host
//!   is unreachable (the owner relaunched elsewhere), and the old holder's late
//!   commits then become conflicts.
//! * [`decide_commit`] — a commit from the lease holder on the current generation
//!   becomes the head, unless it would empty a non-empty volume or delete more than
//!   the allowed share of its files (then it is kept aside, halted, until someone
//!   confirms: Mutagen's and Syncthing's safety halts), or the owner's byte quota
//!   would be passed. Anything else (a stale writer after a partition) becomes a
//!   conflict snapshot beside the head: kept, never the head, never discarded.
//! * [`plan_retention`] — the last N snapshots plus the newest of each day for D
//!   days stay; the head, conflicts and halted snapshots always stay.

use std::collections::BTreeSet;

/// Milliseconds in a day (retention keeps one snapshot per UTC day).
const DAY_MS: u64 = 86_400_000;

/// Who holds a volume's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub instance: String,
    /// The volume's generation when the lease was taken.
    pub generation: u64,
}

/// A volume as its rules see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeState {
    /// Bumped by every commit that becomes the head.
    pub generation: u64,
    /// Files in the head snapshot (0 when there is none).
    pub head_files: u64,
    pub lease: Option<Lease>,
}

/// What the instance holding a lease is doing, as the instance manager knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Running,
    /// Its host passed the lost threshold: its files are unsaved, it may come back.
    Unreachable,
    /// Stopped or failed, its last save committed or given up.
    Ended,
}

/// What a launch asking for the lease gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// The lease is the launch's, from this generation.
    Grant { generation: u64 },
    /// Taken from an unreachable holder: its later commits become conflicts.
    Move { from: String, generation: u64 },
    /// Another instance runs with it.
    Refuse { holder: String },
}

/// Who may write the volume next. `holder` says what the current holder (if any) is
/// doing.
pub fn decide_lease(
    state: &VolumeState,
    instance: &str,
    holder: impl Fn(&str) -> Holder,
) -> LeaseDecision {
    let generation = state.generation;
    let Some(lease) = &state.lease else {
        return LeaseDecision::Grant { generation };
    };
    if lease.instance == instance {
        return LeaseDecision::Grant { generation };
    }
    match holder(&lease.instance) {
        Holder::Ended => LeaseDecision::Grant { generation },
        Holder::Unreachable => LeaseDecision::Move {
            from: lease.instance.clone(),
            generation,
        },
        Holder::Running => LeaseDecision::Refuse {
            holder: lease.instance.clone(),
        },
    }
}

/// A snapshot an instance wants to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub instance: String,
    /// The generation the instance's copy started from.
    pub base_generation: u64,
    /// Files in the new snapshot.
    pub files: u64,
    /// Files of the head that the new snapshot no longer has.
    pub deleted_files: u64,
    /// Bytes the owner's volumes would hold with this snapshot.
    pub owner_bytes_after: u64,
}

/// Limits a commit is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A commit deleting more than this share of the head's files (percent) is
    /// halted. 100 turns the check off (emptying is still halted).
    pub max_delete_percent: u8,
    /// Bytes an owner's volumes may hold.
    pub quota_bytes: u64,
}

/// What a commit becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitDecision {
    /// The new head, at this generation.
    Head { generation: u64 },
    /// Kept beside the head, flagged, until the user or an admin confirms it.
    Halted { reason: String },
    /// From a writer that lost the lease or started from an older head: kept beside
    /// the head, never the head.
    Conflict { reason: String },
    /// Refused: nothing is stored (the writer keeps its files and is told why).
    OverQuota { needed: u64, quota: u64 },
}

/// Decides what `p` becomes on `state` under `policy`.
pub fn decide_commit(state: &VolumeState, p: &Proposal, policy: &Policy) -> CommitDecision {
    let holds = state
        .lease
        .as_ref()
        .is_some_and(|l| l.instance == p.instance);
    if !holds {
        return CommitDecision::Conflict {
            reason: format!("instance {} no longer holds the volume's lease", p.instance),
        };
    }
    if p.base_generation != state.generation {
        return CommitDecision::Conflict {
            reason: format!(
                "started from generation {}, the volume is at {}",
                p.base_generation, state.generation
            ),
        };
    }
    if p.owner_bytes_after > policy.quota_bytes {
        return CommitDecision::OverQuota {
            needed: p.owner_bytes_after,
            quota: policy.quota_bytes,
        };
    }
    if state.head_files > 0 && p.files == 0 {
        return CommitDecision::Halted {
            reason: format!(
                "it would empty a volume of {} files; confirm to make it the head",
                state.head_files
            ),
        };
    }
    let share = u128::from(p.deleted_files) * 100;
    if state.head_files > 0
        && policy.max_delete_percent < 100
        && share > u128::from(state.head_files) * u128::from(policy.max_delete_percent)
    {
        return CommitDecision::Halted {
            reason: format!(
                "it deletes {} of {} files (more than {}%); confirm to make it the head",
                p.deleted_files, state.head_files, policy.max_delete_percent
            ),
        };
    }
    CommitDecision::Head {
        generation: state.generation + 1,
    }
}

/// Kinds of snapshot retention treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Regular,
    Conflict,
    Halted,
}

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub id: u64,
    pub created_ms: u64,
    pub kind: SnapshotKind,
}

/// Retention: the last `keep_last` regular snapshots, and the newest regular one of
/// each of the last `daily_days` days (counted back from `now_ms`'s day), stay;
/// so do `head`, every conflict and every halted snapshot. Returns the ids to
/// delete, oldest first.
pub fn plan_retention(
    snapshots: &[SnapshotMeta],
    head: Option<u64>,
    keep_last: usize,
    daily_days: u32,
    now_ms: u64,
) -> Vec<u64> {
    let mut regular: Vec<&SnapshotMeta> = snapshots
        .iter()
        .filter(|s| s.kind == SnapshotKind::Regular)
        .collect();
    // Newest first; ids break ties so the plan is deterministic.
    regular.sort_by_key(|s| std::cmp::Reverse((s.created_ms, s.id)));
    let mut keep: BTreeSet<u64> = regular.iter().take(keep_last).map(|s| s.id).collect();
    keep.extend(head);
    let today = now_ms / DAY_MS;
    let oldest_day = today.saturating_sub(u64::from(daily_days.saturating_sub(1)));
    let mut days_seen = BTreeSet::new();
    for s in &regular {
        let day = s.created_ms / DAY_MS;
        if daily_days > 0 && day >= oldest_day && day <= today && days_seen.insert(day) {
            keep.insert(s.id);
        }
    }
    let mut gone: Vec<&SnapshotMeta> = regular
        .into_iter()
        .filter(|s| !keep.contains(&s.id))
        .collect();
    gone.sort_by_key(|s| (s.created_ms, s.id));
    gone.into_iter().map(|s| s.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, generation: u64, head_files: u64) -> VolumeState {
        VolumeState {
            generation,
            head_files,
            lease: Some(Lease {
                instance: by.into(),
                generation,
            }),
        }
    }

    fn proposal(by: &str, base: u64, files: u64, deleted: u64) -> Proposal {
        Proposal {
            instance: by.into(),
            base_generation: base,
            files,
            deleted_files: deleted,
            owner_bytes_after: 1000,
        }
    }

    const POLICY: Policy = Policy {
        max_delete_percent: 50,
        quota_bytes: 1 << 30,
    };

    #[test]
    fn one_writer_at_a_time_and_an_unreachable_one_loses_the_lease() {
        let free = VolumeState::default();
        assert_eq!(
            decide_lease(&free, "i-1", |_| unreachable!()),
            LeaseDecision::Grant { generation: 0 }
        );
        let v = held("i-1", 4, 10);
        assert_eq!(
            decide_lease(&v, "i-1", |_| Holder::Running),
            LeaseDecision::Grant { generation: 4 }
        );
        assert_eq!(
            decide_lease(&v, "i-2", |_| Holder::Running),
            LeaseDecision::Refuse {
                holder: "i-1".into()
            }
        );
        assert_eq!(
            decide_lease(&v, "i-2", |_| Holder::Unreachable),
            LeaseDecision::Move {
                from: "i-1".into(),
                generation: 4
            }
        );
        assert_eq!(
            decide_lease(&v, "i-2", |_| Holder::Ended),
            LeaseDecision::Grant { generation: 4 }
        );
    }

    #[test]
    fn the_holder_on_the_current_generation_makes_the_head() {
        let v = held("i-1", 4, 10);
        assert_eq!(
            decide_commit(&v, &proposal("i-1", 4, 12, 1), &POLICY),
            CommitDecision::Head { generation: 5 }
        );
    }

    #[test]
    fn a_stale_writer_makes_a_conflict_never_the_head() {
        // The lease moved while i-1's host was cut off.
        let v = held("i-2", 5, 10);
        let d = decide_commit(&v, &proposal("i-1", 4, 12, 0), &POLICY);
        assert!(
            matches!(&d, CommitDecision::Conflict { reason } if reason.contains("no longer holds")),
            "{d:?}"
        );
        // The holder, but from an older head.
        let d = decide_commit(&v, &proposal("i-2", 4, 12, 0), &POLICY);
        assert!(
            matches!(&d, CommitDecision::Conflict { reason } if reason.contains("generation 4, the volume is at 5")),
            "{d:?}"
        );
        // Nobody holds it: a commit cannot become the head either.
        let free = VolumeState { lease: None, ..v };
        assert!(matches!(
            decide_commit(&free, &proposal("i-2", 5, 1, 0), &POLICY),
            CommitDecision::Conflict { .. }
        ));
    }

    #[test]
    fn emptying_or_mass_deletion_halts_and_a_first_or_small_change_does_not() {
        let v = held("i-1", 1, 200);
        let d = decide_commit(&v, &proposal("i-1", 1, 0, 200), &POLICY);
        assert_eq!(
            d,
            CommitDecision::Halted {
                reason: "it would empty a volume of 200 files; confirm to make it the head".into()
            }
        );
        let d = decide_commit(&v, &proposal("i-1", 1, 99, 101), &POLICY);
        assert!(
            matches!(&d, CommitDecision::Halted { reason } if reason.contains("101 of 200")),
            "{d:?}"
        );
        // Exactly at the limit passes.
        assert_eq!(
            decide_commit(&v, &proposal("i-1", 1, 100, 100), &POLICY),
            CommitDecision::Head { generation: 2 }
        );
        // An empty volume may stay empty, and a first save is never halted.
        let empty = held("i-1", 0, 0);
        assert_eq!(
            decide_commit(&empty, &proposal("i-1", 0, 0, 0), &POLICY),
            CommitDecision::Head { generation: 1 }
        );
        // 100% turns the share check off but not the emptying one.
        let lax = Policy {
            max_delete_percent: 100,
            ..POLICY
        };
        assert_eq!(
            decide_commit(&v, &proposal("i-1", 1, 1, 199), &lax),
            CommitDecision::Head { generation: 2 }
        );
        assert!(matches!(
            decide_commit(&v, &proposal("i-1", 1, 0, 200), &lax),
            CommitDecision::Halted { .. }
        ));
    }

    #[test]
    fn a_commit_past_the_quota_is_refused_with_the_numbers() {
        let v = held("i-1", 1, 10);
        let mut p = proposal("i-1", 1, 10, 0);
        p.owner_bytes_after = (1 << 30) + 1;
        assert_eq!(
            decide_commit(&v, &p, &POLICY),
            CommitDecision::OverQuota {
                needed: (1 << 30) + 1,
                quota: 1 << 30
            }
        );
    }

    #[test]
    fn retention_keeps_the_last_n_one_a_day_the_head_and_every_conflict() {
        let now = 10 * DAY_MS + 3_600_000;
        let s = |id: u64, day: u64, hour: u64, kind| SnapshotMeta {
            id,
            created_ms: day * DAY_MS + hour * 3_600_000,
            kind,
        };
        use SnapshotKind::*;
        let snaps = vec![
            s(1, 2, 9, Regular),   // old: goes
            s(2, 2, 10, Conflict), // conflicts stay
            s(3, 8, 9, Regular),   // day 8, older of two: goes
            s(4, 8, 17, Regular),  // day 8's newest: kept (daily)
            s(5, 9, 8, Regular),   // day 9, older: goes
            s(6, 9, 20, Regular),  // day 9's newest and among the last 2
            s(7, 10, 0, Regular),  // newest: last 2
            s(8, 10, 0, Halted),   // halted stays
            s(9, 1, 0, Regular),   // the head (restored from long ago) stays
        ];
        assert_eq!(plan_retention(&snaps, Some(9), 2, 3, now), vec![1, 3, 5]);
        // No dailies: only the last 2 and the head.
        assert_eq!(plan_retention(&snaps, Some(9), 2, 0, now), vec![1, 3, 4, 5]);
        // Nothing to keep by count: the dailies and the head still stay.
        assert_eq!(plan_retention(&snaps, Some(9), 0, 3, now), vec![1, 3, 5]);
        assert!(plan_retention(&[], None, 5, 7, now).is_empty());
    }
}
