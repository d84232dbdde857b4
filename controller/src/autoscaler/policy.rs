//! The autoscaler's decisions for one pool, as a pure function of the pool's hosts,
//! what the queue waits for, and `now`. No I/O, no clock: tested on made-up times.
//!
//! In order:
//! 1. **Too few hosts** (below `min_hosts`) → create the difference.
//! 2. **Not enough room**: requests wait, or free capacity holds fewer than
//!    `headroom_instances` instances of the pool's typical size → first open hosts
//!    that are draining (cheap, already there), then create hosts, never beyond
//!    `max_hosts`.
//! 3. **Too old**: an open host older than `max_age` is drained (one at a time; step 2
//!    replaces its room).
//! 4. **Idle**: with room to spare, an empty open host idle longer than the cooldown
//!    is drained (one at a time, never below `min_hosts`, never below the headroom).
//! 5. **Drained** hosts are removed, if the provider can create hosts again later.
//!
//! A static pool (hosts join by token) cannot create hosts: where an elastic pool
//! would create, it says so plainly with [`Decision::Short`], for an operator.

use cairn_shared::ids::HostId;

use crate::hosts::pool::Standing;
use crate::scheduler::{Resources, Shortfall};

/// A pool's scaling rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_hosts: u32,
    pub max_hosts: u32,
    /// Free room kept for this many instances of `typical` size.
    pub headroom_instances: u32,
    pub typical: Resources,
    /// The size of a host the provider creates (for how many to create).
    pub host_size: Resources,
    pub idle_cooldown_ms: u64,
    pub max_age_ms: Option<u64>,
    /// The provider can create and destroy hosts (OpenStack); a static pool only
    /// drains and opens the hosts that joined by token.
    pub elastic: bool,
    /// The pool's over-commit ratios (memory, CPU): a host offers its capacity
    /// times these, as the scheduler places.
    pub overcommit: (f64, f64),
}

impl Policy {
    /// What a host of `capacity` with `reserved` taken still offers.
    pub fn free(&self, capacity: Resources, reserved: Resources) -> Resources {
        let scaled = |v: u64, ratio: f64| (v as f64 * ratio.max(0.0)) as u64;
        Resources::new(
            scaled(capacity.memory, self.overcommit.0).saturating_sub(reserved.memory),
            scaled(capacity.millicpus, self.overcommit.1).saturating_sub(reserved.millicpus),
        )
    }
}

/// What the autoscaler knows about one host of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    pub id: HostId,
    /// Active and connected (a host that is down offers no room).
    pub live: bool,
    pub standing: Standing,
    pub instances: u32,
    /// Capacity minus reservations (under the pool's over-commit).
    pub free: Resources,
    pub joined_ms: u64,
    /// When its last instance left; `None` while it has instances.
    pub idle_since_ms: Option<u64>,
}

/// One decision, with the reason shown to admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Create {
        count: u32,
        reason: String,
    },
    Undrain {
        host: HostId,
        reason: String,
    },
    Drain {
        host: HostId,
        reason: String,
    },
    Remove {
        host: HostId,
        reason: String,
    },
    /// The pool needs `count` more hosts and its provider cannot create them.
    Short {
        count: u32,
        reason: String,
    },
}

/// How many `typical` instances fit in `free`.
fn fits(free: Resources, typical: Resources) -> u64 {
    let by_mem = free.memory.checked_div(typical.memory).unwrap_or(u64::MAX);
    let by_cpu = free
        .millicpus
        .checked_div(typical.millicpus)
        .unwrap_or(u64::MAX);
    by_mem.min(by_cpu)
}

/// The decisions for one pool now. `pending` hosts were asked for and have not
/// joined yet; they count as coming.
pub fn decide(
    p: &Policy,
    hosts: &[HostInfo],
    waiting: &Shortfall,
    pending: u32,
    now_ms: u64,
) -> Vec<Decision> {
    let mut out = vec![];
    let counted: Vec<&HostInfo> = hosts
        .iter()
        .filter(|h| !matches!(h.standing, Standing::Removed))
        .collect();
    let serving: Vec<&HostInfo> = counted
        .iter()
        .copied()
        .filter(|h| matches!(h.standing, Standing::Open | Standing::Quarantined { .. }))
        .collect();
    let total = serving.len() as u32 + pending;

    // 1. The floor.
    if total < p.min_hosts {
        let count = p.min_hosts - total;
        let reason = format!("{total} host(s), below the minimum of {}", p.min_hosts);
        out.push(if p.elastic {
            Decision::Create { count, reason }
        } else {
            Decision::Short { count, reason }
        });
        return out;
    }

    // 2. Room for what waits plus the headroom.
    let room: u64 = serving
        .iter()
        .filter(|h| h.live && h.standing == Standing::Open)
        .map(|h| fits(h.free, p.typical))
        .fold(0u64, u64::saturating_add);
    let per_host = fits(p.host_size, p.typical).max(1);
    // Hosts on their way bring room too.
    let room = room.saturating_add(u64::from(pending) * per_host);
    let want = u64::from(p.headroom_instances) + waiting.waiting as u64;
    if room < want || waiting.waiting > 0 {
        let mut missing = want.saturating_sub(room);
        if waiting.waiting > 0 {
            missing = missing.max(waiting.waiting as u64);
        }
        let why = format!(
            "{} request(s) waiting, room for {room} more of the typical size, headroom target {}",
            waiting.waiting, p.headroom_instances
        );
        // Reopen draining hosts first: they are there already.
        for h in counted
            .iter()
            .filter(|h| matches!(h.standing, Standing::Draining { .. } | Standing::Drained))
            .filter(|h| h.live)
        {
            if missing == 0 {
                break;
            }
            out.push(Decision::Undrain {
                host: h.id.clone(),
                reason: why.clone(),
            });
            missing = missing.saturating_sub(per_host);
        }
        if missing > 0 && !p.elastic {
            let need = missing.div_ceil(per_host) as u32;
            out.push(Decision::Short {
                count: need,
                reason: why.clone(),
            });
        } else if missing > 0 {
            let need = missing.div_ceil(per_host) as u32;
            let allowed = p.max_hosts.saturating_sub(total);
            let n = need.min(allowed);
            if n > 0 {
                out.push(Decision::Create {
                    count: n,
                    reason: if n < need {
                        format!(
                            "{why}; {need} host(s) needed, capped by the maximum of {}",
                            p.max_hosts
                        )
                    } else {
                        why.clone()
                    },
                });
            }
        }
        return out;
    }

    // 3. Age: replace old hosts one at a time.
    let draining_now = counted
        .iter()
        .any(|h| matches!(h.standing, Standing::Draining { .. }));
    if let Some(max_age) = p.max_age_ms {
        if !draining_now {
            if let Some(h) = serving
                .iter()
                .filter(|h| h.standing == Standing::Open)
                .filter(|h| now_ms.saturating_sub(h.joined_ms) > max_age)
                .min_by_key(|h| (h.joined_ms, h.id.clone()))
            {
                out.push(Decision::Drain {
                    host: h.id.clone(),
                    reason: format!("older than the maximum host age of {} s", max_age / 1000),
                });
                return out;
            }
        }
    }

    // 4. Idle hosts beyond what the headroom needs.
    if !draining_now && serving.len() as u32 > p.min_hosts {
        let candidate = serving
            .iter()
            .filter(|h| h.standing == Standing::Open && h.instances == 0)
            .filter(|h| {
                h.idle_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= p.idle_cooldown_ms)
            })
            .min_by_key(|h| (h.idle_since_ms, h.id.clone()));
        if let Some(h) = candidate {
            let left = room.saturating_sub(fits(h.free, p.typical));
            if left >= u64::from(p.headroom_instances) {
                out.push(Decision::Drain {
                    host: h.id.clone(),
                    reason: format!(
                        "idle for {} s (cooldown {} s) with room for {left} more elsewhere",
                        now_ms.saturating_sub(h.idle_since_ms.unwrap_or(now_ms)) / 1000,
                        p.idle_cooldown_ms / 1000
                    ),
                });
            }
        }
    }

    // 5. Hand drained hosts back to an elastic provider.
    if p.elastic {
        for h in counted.iter().filter(|h| h.standing == Standing::Drained) {
            out.push(Decision::Remove {
                host: h.id.clone(),
                reason: "drained".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIN: u64 = 60_000;

    fn policy() -> Policy {
        Policy {
            min_hosts: 1,
            max_hosts: 4,
            headroom_instances: 2,
            typical: Resources::new(GIB, 1000),
            host_size: Resources::new(4 * GIB, 4000),
            idle_cooldown_ms: 10 * MIN,
            max_age_ms: None,
            elastic: true,
            overcommit: (1.0, 1.0),
        }
    }

    fn host(n: u32, free_gib: u64, instances: u32, idle_since: Option<u64>) -> HostInfo {
        HostInfo {
            id: HostId::parse(&format!("h-{n:016x}")).unwrap(),
            live: true,
            standing: Standing::Open,
            instances,
            free: Resources::new(free_gib * GIB, free_gib * 1000),
            joined_ms: 0,
            idle_since_ms: idle_since,
        }
    }

    fn none() -> Shortfall {
        Shortfall::default()
    }

    fn waiting(n: usize) -> Shortfall {
        Shortfall {
            waiting: n,
            resources: Resources::new(n as u64 * GIB, n as u64 * 1000),
        }
    }

    #[test]
    fn below_the_minimum_creates() {
        let d = decide(&policy(), &[], &none(), 0, 0);
        assert!(matches!(&d[..], [Decision::Create { count: 1, .. }]));
        // Hosts on their way count.
        assert!(decide(&policy(), &[], &none(), 1, 0)
            .iter()
            .all(|d| !matches!(d, Decision::Create { .. })));
    }

    #[test]
    fn scales_up_for_headroom_and_waiting_requests_but_not_past_the_maximum() {
        // One full host: no room, headroom 2 → one more host (4 per host).
        let d = decide(&policy(), &[host(1, 0, 4, None)], &none(), 0, 0);
        assert!(
            matches!(&d[..], [Decision::Create { count: 1, .. }]),
            "{d:?}"
        );
        // Twenty waiting: 22 missing → 6 hosts, capped at 4 − 1 = 3.
        let d = decide(&policy(), &[host(1, 0, 4, None)], &waiting(20), 0, 0);
        match &d[..] {
            [Decision::Create { count: 3, reason }] => {
                assert!(reason.contains("capped"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // At the maximum: nothing to create.
        let full: Vec<HostInfo> = (0..4).map(|n| host(n, 0, 4, None)).collect();
        assert!(decide(&policy(), &full, &waiting(3), 0, 0).is_empty());
    }

    #[test]
    fn reopens_draining_hosts_before_creating() {
        let mut h2 = host(2, 4, 0, Some(0));
        h2.standing = Standing::Draining { deadline_ms: None };
        let d = decide(
            &policy(),
            &[host(1, 0, 4, None), h2.clone()],
            &waiting(1),
            0,
            0,
        );
        assert_eq!(
            d.iter()
                .filter(|d| matches!(d, Decision::Undrain { host, .. } if *host == h2.id))
                .count(),
            1
        );
    }

    #[test]
    fn scales_down_an_idle_host_after_the_cooldown_only() {
        let hosts = [
            host(1, 2, 2, None),
            host(2, 4, 0, Some(0)),
            host(3, 4, 0, Some(5 * MIN)),
        ];
        assert!(decide(&policy(), &hosts, &none(), 0, 9 * MIN).is_empty());
        let d = decide(&policy(), &hosts, &none(), 0, 10 * MIN);
        assert!(
            matches!(&d[..], [Decision::Drain { host, .. }] if *host == hosts[1].id),
            "{d:?}"
        );
        // One at a time: while one drains, nothing else is drained.
        let mut draining = hosts.clone();
        draining[1].standing = Standing::Draining { deadline_ms: None };
        assert!(decide(&policy(), &draining, &none(), 0, 60 * MIN)
            .iter()
            .all(|d| !matches!(d, Decision::Drain { .. })));
    }

    #[test]
    fn never_below_the_minimum_nor_the_headroom() {
        let one = [host(1, 4, 0, Some(0))];
        assert!(decide(&policy(), &one, &none(), 0, 100 * MIN).is_empty());
        // Two idle hosts but headroom needs both: 2 free + 1 free < 2 + …
        let tight = Policy {
            headroom_instances: 5,
            ..policy()
        };
        let two = [host(1, 3, 0, Some(0)), host(2, 3, 0, Some(0))];
        assert!(decide(&tight, &two, &none(), 0, 100 * MIN)
            .iter()
            .all(|d| !matches!(d, Decision::Drain { .. })));
    }

    #[test]
    fn old_hosts_are_replaced_one_at_a_time_and_drained_ones_removed() {
        let p = Policy {
            max_age_ms: Some(60 * MIN),
            ..policy()
        };
        let mut old = host(1, 4, 1, None);
        old.joined_ms = 0;
        let mut young = host(2, 4, 0, None);
        young.joined_ms = 50 * MIN;
        let d = decide(&p, &[old.clone(), young.clone()], &none(), 0, 61 * MIN);
        assert!(
            matches!(&d[..], [Decision::Drain { host, .. }] if *host == old.id),
            "{d:?}"
        );
        old.standing = Standing::Drained;
        let d = decide(&p, &[old.clone(), young], &none(), 0, 62 * MIN);
        assert!(d.contains(&Decision::Remove {
            host: old.id.clone(),
            reason: "drained".into()
        }));
    }

    #[test]
    fn free_room_follows_the_pools_over_commit() {
        let p = Policy {
            overcommit: (2.0, 4.0),
            ..policy()
        };
        let cap = Resources::new(8 << 30, 4000);
        let free = p.free(cap, Resources::new(10 << 30, 6000));
        assert_eq!(free, Resources::new(6 << 30, 10_000));
        // Over-booked beyond the ratio: nothing free, never negative.
        let full = Policy {
            overcommit: (1.0, 1.0),
            ..policy()
        };
        assert_eq!(
            full.free(cap, Resources::new(9 << 30, 5000)),
            Resources::default()
        );
    }

    #[test]
    fn a_static_pool_only_drains_and_reopens() {
        let p = Policy {
            elastic: false,
            min_hosts: 0,
            ..policy()
        };
        // Short of hosts, it says so and creates nothing: 5 waiting plus a headroom
        // of 2 typical instances, 4 to a host, is 2 hosts.
        let d = decide(&p, &[], &waiting(5), 0, 0);
        assert!(
            matches!(&d[..], [Decision::Short { count: 2, .. }]),
            "{d:?}"
        );
        let below_min = Policy {
            min_hosts: 2,
            ..p.clone()
        };
        let d = decide(&below_min, &[host(3, 0, 4, None)], &none(), 0, 0);
        assert!(
            matches!(&d[..], [Decision::Short { count: 1, .. }]),
            "{d:?}"
        );
        let mut drained = host(1, 4, 0, Some(0));
        drained.standing = Standing::Drained;
        let d = decide(&p, &[drained.clone()], &waiting(1), 0, 0);
        assert!(matches!(&d[..], [Decision::Undrain { .. }]), "{d:?}");
        let d = decide(&p, &[host(2, 0, 4, None), drained], &none(), 0, 0);
        assert!(d
            .iter()
            .all(|d| !matches!(d, Decision::Remove { .. } | Decision::Create { .. })));
    }
}
