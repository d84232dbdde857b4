//! The decisions about groups, with no I/O and no clock (issue 14): who may do
//! what to a group, whether a join code admits someone, whether a launch fits the
//! quotas (with the numbers for the refusal), what a running instance costs, and
//! when an idle one is warned and stopped.
//!
//! * [`may`] — one table of which role may take which [`Action`] on a group.
//!   Admins may do everything; an outsider nothing; a member whose membership
//!   expired is an outsider.
//! * [`check_join_code`] — expiry and use limits of a code.
//! * [`check_quota`] — concurrent instances, memory and credits, per user and per
//!   group, each refusal saying how much was asked, used and allowed.
//! * [`credits`] — a blueprint's cost multiplier × hours of running (failed
//!   launches cost nothing: only time in `running` is charged).
//! * [`idle_step`] — nothing, a warning, or a stop with the reason `idle for 1h`.

/// Milliseconds in an hour.
const HOUR_MS: u64 = 3_600_000;

/// A person's place in a group: the API's type, ordered member < manager <
/// owner, so the rules and the answers speak of the same thing.
pub use cairn_api::groups::GroupRole as Role;

/// Who is asking, as the rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Admin,
    /// A user with this role in the group (`None`: not in it, or expired).
    User(Option<Role>),
}

/// What can be done to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See its blueprints and launch them.
    Launch,
    /// Create or edit its blueprints (within the admin's limits).
    EditBlueprints,
    /// See and stop its members' instances; download its usage report.
    ManageInstances,
    /// Create, regenerate or revoke join codes; approve registrations.
    ManageCodes,
    /// Add or remove members and managers.
    ManageMembers,
    /// Rename, set expiry, delete; hand ownership over.
    Administer,
}

/// Whether `actor` may take `action`: the one table of the groups' permissions.
pub fn may(actor: Actor, action: Action) -> bool {
    let role = match actor {
        Actor::Admin => return true,
        Actor::User(None) => return false,
        Actor::User(Some(r)) => r,
    };
    let needs = match action {
        Action::Launch => Role::Member,
        Action::EditBlueprints
        | Action::ManageInstances
        | Action::ManageCodes
        | Action::ManageMembers => Role::Manager,
        Action::Administer => Role::Owner,
    };
    role >= needs
}

/// A membership as stored: its role and when it ends (the group's expiry, or the
/// member's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub role: Role,
    pub expires_ms: Option<u64>,
}

/// The role a membership gives at `now` (`None` once it expired).
pub fn role_at(m: Option<Membership>, now_ms: u64) -> Option<Role> {
    let m = m?;
    match m.expires_ms {
        Some(e) if now_ms >= e => None,
        _ => Some(m.role),
    }
}

/// Whether a manager's blueprint keeps to its group's `limits`; the refusal
/// says what to change.
pub fn within_limits(
    limits: &cairn_api::groups::BlueprintLimits,
    image: &str,
    memory_mib: u64,
    lifetime_secs: u64,
) -> Result<(), String> {
    if limits.images.is_empty() {
        return Err(
            "its managers may not create or edit blueprints until an admin allows images for it"
                .into(),
        );
    }
    let allowed = limits.images.iter().any(|pat| match pat.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => image == pat,
    });
    if !allowed {
        return Err(format!(
            "image {image} is not among the images allowed for it ({})",
            limits.images.join(", ")
        ));
    }
    if let Some(max) = limits.max_memory_mib {
        if memory_mib > max {
            return Err(format!(
                "{memory_mib} MiB of memory is over its limit of {max} MiB"
            ));
        }
    }
    if let Some(max) = limits.max_lifetime_secs {
        if lifetime_secs > max {
            return Err(format!(
                "a lifetime of {lifetime_secs} s is over its limit of {max} s"
            ));
        }
    }
    Ok(())
}

/// A join code as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinCode {
    pub expires_ms: u64,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked: bool,
}

/// Why a join code did not admit someone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeRefusal {
    #[error("this join code expired; ask your teacher for a new one")]
    Expired,
    #[error("this join code was used {0} times, its limit; ask your teacher for a new one")]
    UsedUp(u32),
    #[error("this join code was replaced; ask your teacher for the new one")]
    Revoked,
    #[error("you are already in this group")]
    AlreadyMember,
}

/// Whether `code` admits a user who is (or is not) already a member, at `now`.
pub fn check_join_code(
    code: &JoinCode,
    already_member: bool,
    now_ms: u64,
) -> Result<(), CodeRefusal> {
    if code.revoked {
        return Err(CodeRefusal::Revoked);
    }
    if now_ms >= code.expires_ms {
        return Err(CodeRefusal::Expired);
    }
    if let Some(max) = code.max_uses {
        if code.uses >= max {
            return Err(CodeRefusal::UsedUp(max));
        }
    }
    if already_member {
        return Err(CodeRefusal::AlreadyMember);
    }
    Ok(())
}

/// Limits of one scope (a user, or a group); `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub instances: Option<u32>,
    pub memory_mib: Option<u64>,
    pub credits: Option<f64>,
}

/// What a scope uses now (live instances; credits spent so far in the period).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub instances: u32,
    pub memory_mib: u64,
    pub credits: f64,
}

/// What a launch would add.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    pub memory_mib: u64,
    /// The blueprint's cost multiplier × its maximum lifetime in hours: what the
    /// launch could spend at most, so a user cannot start what they cannot pay.
    pub credits: f64,
}

/// Whose quota refused a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Group,
}

/// A launch over a quota, with the numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaRefusal {
    #[error("{} already run{} {used} of the {limit} instances allowed", who(*scope), if *scope == Scope::User { "" } else { "s" })]
    Instances { scope: Scope, used: u32, limit: u32 },
    #[error("this would use {} MiB of memory where {} may use {limit} MiB ({used} MiB in use)", used + ask, who(*scope))]
    Memory {
        scope: Scope,
        used: u64,
        ask: u64,
        limit: u64,
    },
    #[error("this would use {ask:.1} of {} {left:.1} remaining credits", whose(*scope))]
    Credits { scope: Scope, ask: f64, left: f64 },
}

fn who(s: Scope) -> &'static str {
    match s {
        Scope::User => "you",
        Scope::Group => "your group",
    }
}

fn whose(s: Scope) -> &'static str {
    match s {
        Scope::User => "your",
        Scope::Group => "your group's",
    }
}

fn check_scope(scope: Scope, l: &Limits, u: &Usage, a: &Ask) -> Result<(), QuotaRefusal> {
    if let Some(limit) = l.instances {
        if u.instances >= limit {
            return Err(QuotaRefusal::Instances {
                scope,
                used: u.instances,
                limit,
            });
        }
    }
    if let Some(limit) = l.memory_mib {
        if u.memory_mib.saturating_add(a.memory_mib) > limit {
            return Err(QuotaRefusal::Memory {
                scope,
                used: u.memory_mib,
                ask: a.memory_mib,
                limit,
            });
        }
    }
    if let Some(limit) = l.credits {
        let left = (limit - u.credits).max(0.0);
        if a.credits > left {
            return Err(QuotaRefusal::Credits {
                scope,
                ask: a.credits,
                left,
            });
        }
    }
    Ok(())
}

/// Whether a launch fits the user's and the group's quotas (the user's first, so
/// the message is about what the user can change).
pub fn check_quota(
    user: (&Limits, &Usage),
    group: (&Limits, &Usage),
    ask: &Ask,
) -> Result<(), QuotaRefusal> {
    check_scope(Scope::User, user.0, user.1, ask)?;
    check_scope(Scope::Group, group.0, group.1, ask)
}

/// One instance as the quota and usage arithmetic sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run<'a> {
    pub user: &'a str,
    /// Running or on its way (queued, starting, stopping): it holds capacity.
    pub live: bool,
    pub memory_mib: u64,
    pub cost: f64,
    pub running_since_ms: Option<u64>,
    pub ended_ms: Option<u64>,
}

/// What `runs` (one group's) add up to at `now`: for `user`, and for the group.
pub fn usage<'a>(
    runs: impl IntoIterator<Item = Run<'a>>,
    user: &str,
    now_ms: u64,
) -> (Usage, Usage) {
    let mut mine = Usage::default();
    let mut all = Usage::default();
    for r in runs {
        let spent = credits(r.cost, r.running_since_ms, r.ended_ms.unwrap_or(now_ms));
        for (u, counts) in [(&mut all, true), (&mut mine, r.user == user)] {
            if !counts {
                continue;
            }
            u.credits += spent;
            if r.live {
                u.instances += 1;
                u.memory_mib = u.memory_mib.saturating_add(r.memory_mib);
            }
        }
    }
    (mine, all)
}

/// Credits a run costs: `multiplier` × hours between `running_since` and
/// `until` (0 for a run that never reached `running`).
pub fn credits(multiplier: f64, running_since_ms: Option<u64>, until_ms: u64) -> f64 {
    let Some(since) = running_since_ms else {
        return 0.0;
    };
    multiplier.max(0.0) * until_ms.saturating_sub(since) as f64 / HOUR_MS as f64
}

/// What idleness calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleStep {
    Nothing,
    /// Show a warning: it will be stopped at `at_ms` unless used.
    Warn {
        at_ms: u64,
    },
    /// Stop it, with this reason.
    Stop {
        reason: String,
    },
}

/// `1h`, `10m`, `90s`: an idle period in words for the stop reason.
fn period(ms: u64) -> String {
    let s = ms / 1000;
    if s.is_multiple_of(3600) && s >= 3600 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// What an instance last active at `last_activity_ms` needs at `now` under
/// `idle_timeout_ms` (`None`: never culled), warning `warn_ms` before the stop.
pub fn idle_step(
    last_activity_ms: u64,
    idle_timeout_ms: Option<u64>,
    warn_ms: u64,
    now_ms: u64,
) -> IdleStep {
    let Some(timeout) = idle_timeout_ms.filter(|t| *t > 0) else {
        return IdleStep::Nothing;
    };
    let stop_at = last_activity_ms.saturating_add(timeout);
    if now_ms >= stop_at {
        IdleStep::Stop {
            reason: format!("idle for {}", period(timeout)),
        }
    } else if now_ms >= stop_at.saturating_sub(warn_ms) {
        IdleStep::Warn { at_ms: stop_at }
    } else {
        IdleStep::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_of_permissions_from_outsider_to_admin() {
        use Action::*;
        let all = [
            Launch,
            EditBlueprints,
            ManageInstances,
            ManageCodes,
            ManageMembers,
            Administer,
        ];
        let allowed = |a: Actor| all.iter().filter(|x| may(a, **x)).count();
        assert_eq!(allowed(Actor::User(None)), 0);
        assert_eq!(allowed(Actor::User(Some(Role::Member))), 1);
        assert!(may(Actor::User(Some(Role::Member)), Launch));
        assert_eq!(allowed(Actor::User(Some(Role::Manager))), 5);
        assert!(!may(Actor::User(Some(Role::Manager)), Administer));
        assert_eq!(allowed(Actor::User(Some(Role::Owner))), 6);
        assert_eq!(allowed(Actor::Admin), 6);
    }

    #[test]
    fn an_expired_membership_is_no_membership() {
        let m = Membership {
            role: Role::Manager,
            expires_ms: Some(1_000),
        };
        assert_eq!(role_at(Some(m), 999), Some(Role::Manager));
        assert_eq!(role_at(Some(m), 1_000), None);
        assert_eq!(role_at(None, 0), None);
        let forever = Membership {
            role: Role::Member,
            expires_ms: None,
        };
        assert_eq!(role_at(Some(forever), u64::MAX), Some(Role::Member));
        // A manager of group A is nobody in group B: what B's membership says.
        assert!(!may(Actor::User(role_at(None, 5)), Action::ManageInstances));
    }

    #[test]
    fn managers_blueprints_keep_to_the_admins_limits() {
        let mut l = cairn_api::groups::BlueprintLimits::default();
        assert!(within_limits(&l, "x", 1, 1)
            .unwrap_err()
            .contains("until an admin allows"));
        l.images = vec!["course/*".into(), "exact:1".into()];
        l.max_memory_mib = Some(1024);
        l.max_lifetime_secs = Some(3600);
        assert_eq!(within_limits(&l, "course/lab:2", 1024, 3600), Ok(()));
        assert_eq!(within_limits(&l, "exact:1", 512, 60), Ok(()));
        assert!(within_limits(&l, "exact:2", 512, 60)
            .unwrap_err()
            .contains("not among"));
        assert!(within_limits(&l, "course/lab", 2048, 60)
            .unwrap_err()
            .contains("2048 MiB"));
        assert!(within_limits(&l, "course/lab", 512, 7200)
            .unwrap_err()
            .contains("7200 s"));
    }

    #[test]
    fn join_codes_expire_run_out_and_are_replaced() {
        let code = JoinCode {
            expires_ms: 100,
            max_uses: Some(2),
            uses: 1,
            revoked: false,
        };
        assert_eq!(check_join_code(&code, false, 50), Ok(()));
        assert_eq!(
            check_join_code(&code, true, 50),
            Err(CodeRefusal::AlreadyMember)
        );
        assert_eq!(
            check_join_code(&code, false, 100),
            Err(CodeRefusal::Expired)
        );
        let used = JoinCode { uses: 2, ..code };
        assert_eq!(
            check_join_code(&used, false, 50),
            Err(CodeRefusal::UsedUp(2))
        );
        let revoked = JoinCode {
            revoked: true,
            ..code
        };
        assert_eq!(
            check_join_code(&revoked, false, 50),
            Err(CodeRefusal::Revoked)
        );
        let unlimited = JoinCode {
            max_uses: None,
            uses: 10_000,
            ..code
        };
        assert_eq!(check_join_code(&unlimited, false, 50), Ok(()));
    }

    #[test]
    fn quotas_refuse_with_the_numbers_user_first() {
        let none = Limits::default();
        let idle = Usage::default();
        let ask = Ask {
            memory_mib: 512,
            credits: 2.5,
        };
        assert_eq!(check_quota((&none, &idle), (&none, &idle), &ask), Ok(()));
        let user = Limits {
            credits: Some(10.0),
            ..Limits::default()
        };
        let spent = Usage {
            credits: 9.0,
            ..Usage::default()
        };
        let e = check_quota((&user, &spent), (&none, &idle), &ask).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this would use 2.5 of your 1.0 remaining credits"
        );
        let group = Limits {
            instances: Some(30),
            memory_mib: Some(4096),
            ..Limits::default()
        };
        let busy = Usage {
            instances: 7,
            memory_mib: 3800,
            credits: 0.0,
        };
        let e = check_quota((&none, &idle), (&group, &busy), &ask).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this would use 4312 MiB of memory where your group may use 4096 MiB (3800 MiB in use)"
        );
        let full = Usage {
            instances: 30,
            ..busy
        };
        let e = check_quota((&none, &idle), (&group, &full), &ask).unwrap_err();
        assert_eq!(
            e.to_string(),
            "your group already runs 30 of the 30 instances allowed"
        );
    }

    #[test]
    fn usage_adds_up_live_instances_and_credits_per_user_and_group() {
        let run = |user, live, since: Option<u64>, ended: Option<u64>| Run {
            user,
            live,
            memory_mib: 512,
            cost: 2.0,
            running_since_ms: since,
            ended_ms: ended,
        };
        let runs = [
            run("ann", true, Some(0), None),
            run("ann", false, Some(0), Some(HOUR_MS)),
            run("bob", true, None, None),
            // Failed before running: free, and no longer holds anything.
            run("bob", false, None, Some(5)),
        ];
        let (ann, group) = usage(runs, "ann", 2 * HOUR_MS);
        assert_eq!((ann.instances, ann.memory_mib), (1, 512));
        assert!((ann.credits - 6.0).abs() < 1e-9, "{}", ann.credits);
        assert_eq!((group.instances, group.memory_mib), (2, 1024));
        assert!((group.credits - 6.0).abs() < 1e-9);
    }

    #[test]
    fn running_time_costs_and_failed_launches_are_free() {
        assert_eq!(credits(2.0, None, 10 * HOUR_MS), 0.0);
        assert!((credits(2.0, Some(HOUR_MS), 2 * HOUR_MS + HOUR_MS / 2) - 3.0).abs() < 1e-9);
        assert_eq!(credits(-1.0, Some(0), HOUR_MS), 0.0);
    }

    #[test]
    fn idle_instances_are_warned_then_stopped_and_active_ones_never() {
        let hour = Some(HOUR_MS);
        let warn = 10 * 60_000;
        assert_eq!(idle_step(0, hour, warn, 49 * 60_000), IdleStep::Nothing);
        assert_eq!(
            idle_step(0, hour, warn, 50 * 60_000),
            IdleStep::Warn { at_ms: HOUR_MS }
        );
        assert_eq!(
            idle_step(0, hour, warn, HOUR_MS),
            IdleStep::Stop {
                reason: "idle for 1h".into()
            }
        );
        // Activity moves the deadline.
        assert_eq!(
            idle_step(HOUR_MS - 1, hour, warn, HOUR_MS),
            IdleStep::Nothing
        );
        assert_eq!(idle_step(0, None, warn, u64::MAX), IdleStep::Nothing);
        assert_eq!(
            idle_step(0, Some(10 * 60_000), 60_000, 10 * 60_000),
            IdleStep::Stop {
                reason: "idle for 10m".into()
            }
        );
    }
}
