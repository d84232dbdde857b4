//! Groups: create and edit (admins; owners their title, expiry and idle timeout),
//! people (managers add, change and remove members; anyone may leave), join codes
//! (managers make them; any logged-in user joins with one), usage (each user
//! their own, managers their group's, admins everything and as CSV), and the
//! audit log (admins).
//!
//! Who may do what is [`core::may`]'s one table, asked through
//! [`Service::group_for`]: an outsider (and a member whose membership expired) is
//! told the group does not exist; a member asking for a manager's action is told
//! what it needs. Removing someone stops nothing silently: their running
//! instances of the group are stopped with a reason and listed in the answer.

use cairn_api::groups::{
    AuditEntry, Departure, Group, GroupInput, GroupMember, GroupRole, JoinCode, JoinCodeInput,
    Quota, UsageReport, UsageRow, DEFAULT_GROUP,
};

use super::{now, Caller, Service, ServiceError, ServiceResult};
use crate::groups::catalog::{replace_code, GroupRecord, Member, StoredCode};
use crate::groups::core::{self, Action, Actor, CodeRefusal};
use crate::groups::ledger::Spent;
use crate::groups::GroupsError;
use crate::instances::Instance;
use std::collections::{BTreeMap, BTreeSet};

/// What a group's page shows ([`Service::group_page`]).
#[derive(Debug)]
pub struct GroupPage {
    pub group: Group,
    pub blueprints: Vec<crate::blueprints::BlueprintRecord>,
    /// For its managers (and admins).
    pub managing: Option<GroupManagement>,
}

/// The managers' part of a group's page.
#[derive(Debug)]
pub struct GroupManagement {
    pub code: Option<JoinCode>,
    pub instances: Vec<cairn_api::instances::InstanceView>,
    pub usage: UsageReport,
}

/// A join code's default life: a week.
pub const DEFAULT_CODE_SECS: u64 = 7 * 24 * 3600;
/// A join code's longest life: a year.
pub const MAX_CODE_SECS: u64 = 365 * 24 * 3600;
/// Letters of join codes: no 0/O, 1/I/L, so they survive being read aloud.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 10;

impl From<GroupsError> for ServiceError {
    fn from(e: GroupsError) -> Self {
        match e {
            GroupsError::NotFound(_) => ServiceError::not_found(e.to_string()),
            GroupsError::Exists(_) => ServiceError::conflict("already_exists", e.to_string()),
            GroupsError::Store(s) => ServiceError::internal(s),
        }
    }
}

fn no_group(name: &str) -> ServiceError {
    ServiceError::not_found(format!("no group named {name:?}"))
}

fn needs(action: Action, group: &str) -> ServiceError {
    let who = match action {
        Action::Launch => "a member",
        Action::Administer => "the group's owner or an admin",
        _ => "a manager of the group or an admin",
    };
    ServiceError::forbidden(format!("this needs {who} ({group})"))
}

/// `ABCDE-FGHJK` typed any way: upper case, without spaces or dashes.
fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .take(64)
        .collect()
}

fn new_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Checks a quota as given: numbers that make sense.
fn check_quota(field: &str, q: &Quota) -> ServiceResult<()> {
    if let Some(c) = q.credits {
        if !c.is_finite() || c < 0.0 {
            return Err(ServiceError::invalid(format!(
                "{field}.credits must be a number from 0"
            )));
        }
    }
    Ok(())
}

impl Service {
    /// Who `caller` is to group `g` at `now`.
    fn actor(&self, caller: &Caller, g: &GroupRecord) -> ServiceResult<Actor> {
        let p = caller.user()?;
        Ok(if p.is_admin() {
            Actor::Admin
        } else {
            Actor::User(g.role_at(p.name(), now()))
        })
    }

    /// Group `name` if `caller` may take `action` on it. Outsiders get "no group"
    /// (a group's existence is not theirs to learn); members lacking the role get
    /// what it needs.
    pub(crate) fn group_for(
        &self,
        caller: &Caller,
        name: &str,
        action: Action,
    ) -> ServiceResult<GroupRecord> {
        caller.user()?;
        let g = self.app.groups.get(name).ok_or_else(|| no_group(name))?;
        match self.actor(caller, &g)? {
            a if core::may(a, action) => Ok(g),
            Actor::User(None) => Err(no_group(name)),
            _ => Err(needs(action, name)),
        }
    }

    fn group_view(&self, caller: &Caller, g: &GroupRecord) -> ServiceResult<Group> {
        let actor = self.actor(caller, g)?;
        let managing = core::may(actor, Action::ManageMembers);
        let role = match actor {
            Actor::User(r) => r,
            Actor::Admin => caller.principal().and_then(|p| g.role_at(p.name(), now())),
        };
        Ok(Group {
            name: g.name.clone(),
            title: g.title.clone(),
            expires_ms: g.expires_ms,
            created_ms: g.created_ms,
            role,
            quota: g.quota,
            member_quota: g.member_quota,
            limits: g.limits.clone(),
            idle_timeout_secs: g.idle_timeout_secs,
            granted: g.granted.iter().cloned().collect(),
            members: if managing {
                g.members
                    .iter()
                    .map(|(u, m)| GroupMember {
                        user: u.clone(),
                        role: m.role,
                        joined_ms: m.joined_ms,
                    })
                    .collect()
            } else {
                vec![]
            },
        })
    }

    pub(crate) fn audit(&self, caller: &Caller, action: &str, target: &str, detail: String) {
        self.audit_as(caller.actor(), caller.addr(), action, target, detail);
    }

    /// An audit entry for `actor` (a login has no caller yet: the account is the
    /// actor).
    pub(crate) fn audit_as(
        &self,
        actor: &str,
        from: Option<std::net::IpAddr>,
        action: &str,
        target: &str,
        detail: String,
    ) {
        self.app.audit.record(AuditEntry {
            at_ms: now(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            from: from.map(|a| a.to_string()),
            detail,
        });
    }

    /// Makes `user` a member of each of `groups` they are not in yet, as a
    /// single sign-on login maps the provider's groups (a group that does not
    /// exist or has ended is skipped with a note in the log; a manager stays a
    /// manager).
    pub(crate) async fn grant_memberships(
        &self,
        user: &str,
        groups: &[String],
        from: Option<std::net::IpAddr>,
    ) -> ServiceResult<()> {
        for name in groups {
            let at = now();
            let joined = self
                .app
                .groups
                .modify(name, |g| -> Result<bool, GroupsError> {
                    if g.members.contains_key(user) || g.expires_ms.is_some_and(|e| at >= e) {
                        return Ok(false);
                    }
                    g.members.insert(
                        user.to_string(),
                        Member {
                            role: GroupRole::Member,
                            joined_ms: at,
                        },
                    );
                    Ok(true)
                })
                .await;
            match joined {
                Ok((_, true)) => {
                    tracing::info!(user, group = %name, "joined by single sign-on");
                    self.audit_as(user, from, "group.join", name, "oidc groups claim".into());
                }
                Ok((_, false)) => {}
                Err(GroupsError::NotFound(_)) => {
                    tracing::warn!(user, group = %name, "[auth.oidc] groups maps to a group that does not exist");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The caller's groups (admins: every group).
    pub fn list_groups(&self, caller: &Caller) -> ServiceResult<Vec<Group>> {
        let p = caller.user()?;
        let groups = if p.is_admin() {
            self.app.groups.list()
        } else {
            self.app
                .groups
                .of_user(p.name(), now())
                .into_iter()
                .map(|(g, _)| g)
                .collect()
        };
        groups.iter().map(|g| self.group_view(caller, g)).collect()
    }

    pub fn group(&self, caller: &Caller, name: &str) -> ServiceResult<Group> {
        let g = self.group_for(caller, name, Action::Launch)?;
        self.group_view(caller, &g)
    }

    /// Creates a group: admins for any owner, with any settings; a user (when the
    /// site lets users create groups) for themselves, with the site's default
    /// blueprint limits and no quotas until an admin sets them.
    pub async fn create_group(&self, caller: &Caller, input: &GroupInput) -> ServiceResult<Group> {
        let p = caller.user()?;
        let admin = p.is_admin();
        let cfg = &self.app.config.groups;
        if !admin {
            if !cfg.users_create {
                return Err(ServiceError::forbidden(
                    "groups are created by admins on this site",
                ));
            }
            if input.owner.as_deref().is_some_and(|o| o != p.name())
                || input.quota.is_some()
                || input.member_quota.is_some()
                || input.limits.is_some()
                || input.granted.is_some()
            {
                return Err(ServiceError::forbidden(
                    "quotas, blueprint limits, grants and other owners are set by admins",
                ));
            }
        }
        let own = GroupInput {
            owner: Some(input.owner.clone().unwrap_or_else(|| p.name().to_string())),
            ..input.clone()
        };
        let input = &own;
        let name = input
            .name
            .as_deref()
            .ok_or_else(|| ServiceError::invalid("name is required"))?;
        if !crate::blueprints::spec::valid_name(name) {
            return Err(ServiceError::invalid(
                "a group's name is 1-63 characters of a-z, 0-9 and '-', starting with a letter",
            ));
        }
        let owner = input
            .owner
            .as_deref()
            .ok_or_else(|| ServiceError::invalid("owner is required: the account that runs it"))?;
        self.existing_user(owner)?;
        let now = now();
        let mut g = GroupRecord::new(name, name, now);
        g.limits = cairn_api::groups::BlueprintLimits {
            images: cfg.images.clone(),
            max_memory_mib: cfg.max_memory_mib,
            max_lifetime_secs: cfg.max_lifetime_secs,
        };
        g.members.insert(
            owner.to_string(),
            Member {
                role: GroupRole::Owner,
                joined_ms: now,
            },
        );
        apply(&mut g, input, admin)?;
        let g = self.app.groups.create(g).await?;
        self.audit(caller, "group.create", name, format!("owner {owner}"));
        self.group_view(caller, &g)
    }

    /// Edits a group: admins everything; its owner the title, expiry and idle
    /// timeout.
    pub async fn update_group(
        &self,
        caller: &Caller,
        name: &str,
        input: &GroupInput,
    ) -> ServiceResult<Group> {
        let admin = caller.is_admin();
        self.group_for(caller, name, Action::Administer)?;
        if !admin
            && (input.quota.is_some()
                || input.member_quota.is_some()
                || input.limits.is_some()
                || input.granted.is_some()
                || input.owner.is_some())
        {
            return Err(ServiceError::forbidden(
                "quotas, blueprint limits, grants and the owner are set by admins",
            ));
        }
        if input.name.as_deref().is_some_and(|n| n != name) {
            return Err(ServiceError::invalid("a group cannot be renamed"));
        }
        if let Some(o) = &input.owner {
            self.existing_user(o)?;
        }
        let (g, ()) = self
            .app
            .groups
            .modify(name, |g| apply(g, input, admin))
            .await?;
        self.audit(caller, "group.update", name, String::new());
        self.group_view(caller, &g)
    }

    /// Removes a group (admins), stopping its instances with a reason. Its
    /// blueprints must be moved or removed first.
    pub async fn delete_group(&self, caller: &Caller, name: &str) -> ServiceResult<Vec<String>> {
        caller.admin()?;
        if name == DEFAULT_GROUP {
            return Err(ServiceError::conflict(
                "default_group",
                "the default group cannot be removed",
            ));
        }
        let owned: Vec<String> = self
            .app
            .blueprints
            .list()?
            .into_iter()
            .filter(|b| b.spec.group() == name)
            .map(|b| b.spec.name)
            .collect();
        if !owned.is_empty() {
            return Err(ServiceError::conflict(
                "group_has_blueprints",
                format!(
                    "group {name} still owns blueprints {}; move them to another group or remove them first",
                    owned.join(", ")
                ),
            ));
        }
        self.app.groups.remove(name).await?;
        let reason = format!("group {name} was removed");
        let stopped = self.stop_where(|i| charged_to(i, name), &reason).await;
        self.audit(caller, "group.delete", name, reason);
        Ok(stopped)
    }

    fn existing_user(&self, user: &str) -> ServiceResult<()> {
        match self.app.accounts.get(user)? {
            Some(_) => Ok(()),
            None => Err(ServiceError::not_found(format!("no user named {user:?}"))),
        }
    }

    /// Adds `user` to a group or changes their role (managers; only the owner or
    /// an admin makes or unmakes owners).
    pub async fn set_member(
        &self,
        caller: &Caller,
        name: &str,
        user: &str,
        role: GroupRole,
    ) -> ServiceResult<Group> {
        let g = self.group_for(caller, name, Action::ManageMembers)?;
        self.existing_user(user)?;
        let administers = core::may(self.actor(caller, &g)?, Action::Administer);
        let current = g.members.get(user).map(|m| m.role);
        if (role == GroupRole::Owner || current == Some(GroupRole::Owner)) && !administers {
            return Err(ServiceError::forbidden(
                "only the group's owner or an admin makes or unmakes owners",
            ));
        }
        if g.is_default() && role == GroupRole::Member {
            // Everyone is a member of the default group; listing them adds nothing.
            let (g, ()) = self
                .app
                .groups
                .modify(name, |g| {
                    g.members.remove(user);
                    Ok::<_, ServiceError>(())
                })
                .await?;
            return self.group_view(caller, &g);
        }
        let (g, ()) = self
            .app
            .groups
            .modify(name, |g| {
                let joined_ms = g.members.get(user).map_or(now(), |m| m.joined_ms);
                g.members
                    .insert(user.to_string(), Member { role, joined_ms });
                Ok::<_, ServiceError>(())
            })
            .await?;
        self.audit(
            caller,
            "group.member.set",
            &format!("{name}/{user}"),
            role.to_string(),
        );
        self.group_view(caller, &g)
    }

    /// Takes `user` out of a group (managers; an owner only by an admin or
    /// another owner), stopping their running instances of the group.
    pub async fn remove_member(
        &self,
        caller: &Caller,
        name: &str,
        user: &str,
    ) -> ServiceResult<Departure> {
        let me = caller.user()?.name().to_string();
        let g = if me == user {
            self.group_for(caller, name, Action::Launch)?
        } else {
            self.group_for(caller, name, Action::ManageMembers)?
        };
        if g.is_default() {
            return Err(ServiceError::conflict(
                "default_group",
                "everyone is in the default group; disable the account instead",
            ));
        }
        let role = g
            .members
            .get(user)
            .map(|m| m.role)
            .ok_or_else(|| ServiceError::not_found(format!("{user} is not in group {name}")))?;
        if role == GroupRole::Owner {
            let owners = g
                .members
                .values()
                .filter(|m| m.role == GroupRole::Owner)
                .count();
            if owners == 1 {
                return Err(ServiceError::conflict(
                    "last_owner",
                    format!("{user} owns group {name}; make someone else its owner first"),
                ));
            }
            if !core::may(self.actor(caller, &g)?, Action::Administer) {
                return Err(ServiceError::forbidden(
                    "only the group's owner or an admin removes an owner",
                ));
            }
        }
        self.app
            .groups
            .modify(name, |g| {
                g.members.remove(user);
                Ok::<_, ServiceError>(())
            })
            .await?;
        let reason = if me == user {
            format!("{user} left group {name}")
        } else {
            format!("{user} was removed from group {name} by {me}")
        };
        let stopped = self
            .stop_where(
                |i| i.owner == user && charged_to(i, name) && !self.app.accounts.is_admin(user),
                &reason,
            )
            .await;
        self.audit(
            caller,
            "group.member.remove",
            &format!("{name}/{user}"),
            reason.clone(),
        );
        Ok(Departure {
            group: name.to_string(),
            user: user.to_string(),
            stopped,
            reason,
        })
    }

    /// Stops every live instance `pick` selects with `reason`; their ids.
    async fn stop_where(&self, pick: impl Fn(&Instance) -> bool, reason: &str) -> Vec<String> {
        let doomed = self
            .app
            .instances
            .matching(|i| !i.state.is_terminal() && pick(i));
        let mut stopped = vec![];
        for i in doomed {
            match self
                .app
                .instances
                .stop(&i.id, reason.to_string(), now())
                .await
            {
                Ok(_) => stopped.push(i.id.to_string()),
                Err(e) => {
                    tracing::error!(instance = %i.id, error = %e, "could not stop an instance; the groups pass will retry")
                }
            }
        }
        stopped
    }

    /// A new join code for a group, retiring the old one (managers).
    pub async fn new_join_code(
        &self,
        caller: &Caller,
        name: &str,
        input: &JoinCodeInput,
    ) -> ServiceResult<JoinCode> {
        let g = self.group_for(caller, name, Action::ManageCodes)?;
        if g.is_default() {
            return Err(ServiceError::conflict(
                "default_group",
                "everyone is in the default group already",
            ));
        }
        let secs = input.valid_secs.unwrap_or(DEFAULT_CODE_SECS);
        if secs == 0 || secs > MAX_CODE_SECS {
            return Err(ServiceError::invalid(format!(
                "valid_secs must be from 1 to {MAX_CODE_SECS} (a year)"
            )));
        }
        if input.max_uses == Some(0) {
            return Err(ServiceError::invalid("max_uses must be at least 1"));
        }
        let code = StoredCode {
            code: new_code(),
            expires_ms: now().saturating_add(secs * 1000),
            max_uses: input.max_uses,
            uses: 0,
        };
        let shown = code.clone();
        self.app
            .groups
            .modify(name, |g| {
                replace_code(g, code);
                Ok::<_, ServiceError>(())
            })
            .await?;
        self.audit(caller, "group.code.new", name, format!("valid {secs} s"));
        Ok(code_view(name, &shown))
    }

    /// The group's current join code (managers).
    pub fn join_code(&self, caller: &Caller, name: &str) -> ServiceResult<JoinCode> {
        let g = self.group_for(caller, name, Action::ManageCodes)?;
        g.code
            .as_ref()
            .map(|c| code_view(name, c))
            .ok_or_else(|| ServiceError::not_found(format!("group {name} has no join code")))
    }

    /// Joins the group whose code the caller typed, as a member.
    pub async fn join(&self, caller: &Caller, code: &str) -> ServiceResult<Group> {
        let user = caller.user()?.name().to_string();
        let g = self.join_as(&user, code).await?;
        self.audit(caller, "group.join", &g.name, "with a join code".into());
        self.group_view(caller, &g)
    }

    /// Makes `user` a member of the group whose code this is, counting a use.
    pub(crate) async fn join_as(&self, user: &str, code: &str) -> ServiceResult<GroupRecord> {
        let user = user.to_string();
        let code = normalise_code(code);
        let wrong =
            || ServiceError::not_found("no group has this join code; check it with your teacher");
        if code.len() != CODE_LEN {
            return Err(wrong());
        }
        let (g, replaced) = self.app.groups.by_code(&code).ok_or_else(wrong)?;
        let refuse = |r: CodeRefusal| ServiceError::conflict("join_refused", r.to_string());
        if replaced {
            return Err(refuse(CodeRefusal::Revoked));
        }
        let (g, ()) = self
            .app
            .groups
            .modify(&g.name, |g| {
                let now = now();
                let Some(stored) = g.code.as_mut().filter(|c| c.code == code) else {
                    return Err(refuse(CodeRefusal::Revoked));
                };
                let rule = core::JoinCode {
                    expires_ms: stored.expires_ms,
                    max_uses: stored.max_uses,
                    uses: stored.uses,
                    revoked: false,
                };
                // A member whose membership lapsed with the course cannot rejoin it
                // with an old code either: the group's expiry decides.
                if g.expires_ms.is_some_and(|e| now >= e) {
                    return Err(ServiceError::conflict(
                        "group_ended",
                        format!("group {} has ended", g.name),
                    ));
                }
                core::check_join_code(&rule, g.members.contains_key(&user), now).map_err(refuse)?;
                stored.uses += 1;
                g.members.insert(
                    user.clone(),
                    Member {
                        role: GroupRole::Member,
                        joined_ms: now,
                    },
                );
                Ok(())
            })
            .await?;
        Ok(g)
    }

    /// Everything a group's page shows the caller: the group and the blueprints
    /// of it the caller sees; for its managers also its join code, its members'
    /// instances and its usage.
    pub fn group_page(&self, caller: &Caller, name: &str) -> ServiceResult<GroupPage> {
        let group = self.group(caller, name)?;
        let g = self.app.groups.get(name).ok_or_else(|| no_group(name))?;
        let managing = if core::may(self.actor(caller, &g)?, Action::ManageInstances) {
            Some(GroupManagement {
                code: self.join_code(caller, name).ok(),
                instances: self.group_instances(caller, name)?,
                usage: self.group_usage(caller, name)?,
            })
        } else {
            None
        };
        let blueprints = self
            .list_blueprints(caller)?
            .into_iter()
            .filter(|b| b.spec.group() == name)
            .collect();
        Ok(GroupPage {
            group,
            blueprints,
            managing,
        })
    }

    /// A group's usage per member with its quotas (managers, admins).
    pub fn group_usage(&self, caller: &Caller, name: &str) -> ServiceResult<UsageReport> {
        let g = self.group_for(caller, name, Action::ManageInstances)?;
        let runs = self.app.instances.matching(|i| charged_to(i, name));
        let spent: BTreeMap<String, Spent> =
            self.app.instances.spent_in(name).into_iter().collect();
        let now = now();
        let mut users: Vec<&str> = runs.iter().map(|i| i.owner.as_str()).collect();
        users.extend(spent.keys().map(String::as_str));
        users.sort_unstable();
        users.dedup();
        let rows: Vec<UsageRow> = users
            .iter()
            .map(|u| {
                let ended = spent.get(*u).copied().unwrap_or_default();
                usage_row(name, Some(u), &runs, ended, now)
            })
            .collect();
        let mut all_ended = Spent::default();
        for s in spent.values() {
            all_ended.credits += s.credits;
            all_ended.launches += s.launches;
        }
        let total = usage_row(name, None, &runs, all_ended, now);
        Ok(UsageReport {
            group: name.to_string(),
            quota: g.quota,
            member_quota: g.member_quota,
            total,
            rows,
        })
    }

    /// The caller's own usage in each of their groups.
    pub fn my_usage(&self, caller: &Caller) -> ServiceResult<Vec<UsageRow>> {
        let me = caller.user()?.name().to_string();
        let runs = self.app.instances.matching(|i| i.owner == me);
        let mut groups: BTreeSet<String> = self.app.instances.spent_groups_of(&me);
        groups.extend(
            runs.iter()
                .filter_map(|i| i.charge.as_ref().map(|c| c.group.clone())),
        );
        let now = now();
        Ok(groups
            .iter()
            .map(|g| {
                let of_group: Vec<Instance> =
                    runs.iter().filter(|i| charged_to(i, g)).cloned().collect();
                let ended = self
                    .app
                    .instances
                    .spent_in(g)
                    .into_iter()
                    .find(|(u, _)| *u == me)
                    .map(|(_, s)| s)
                    .unwrap_or_default();
                usage_row(g, Some(&me), &of_group, ended, now)
            })
            .collect())
    }

    /// Usage per member as CSV: one group's for its managers, every group's for
    /// admins (`group` `None`).
    pub fn usage_csv(&self, caller: &Caller, group: Option<&str>) -> ServiceResult<String> {
        let groups = match group {
            Some(g) => vec![self.group_for(caller, g, Action::ManageInstances)?],
            None => {
                caller.admin()?;
                self.app.groups.list()
            }
        };
        let mut w = csv::Writer::from_writer(vec![]);
        let csv_err = |e: csv::Error| ServiceError::internal(e);
        w.write_record([
            "group",
            "user",
            "instances",
            "memory_mib",
            "credits",
            "launches",
        ])
        .map_err(csv_err)?;
        for g in groups {
            let report = self.group_usage(caller, &g.name)?;
            for r in report.rows {
                w.write_record([
                    r.group,
                    r.user,
                    r.instances.to_string(),
                    r.memory_mib.to_string(),
                    format!("{:.3}", r.credits),
                    r.launches.to_string(),
                ])
                .map_err(csv_err)?;
            }
        }
        let bytes = w
            .into_inner()
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        String::from_utf8(bytes).map_err(ServiceError::internal)
    }

    /// The newest `n` audit entries (admins).
    pub fn audit_log(&self, caller: &Caller, n: usize) -> ServiceResult<Vec<AuditEntry>> {
        caller.admin()?;
        Ok(self.app.audit.recent(n)?)
    }
}

fn charged_to(i: &Instance, group: &str) -> bool {
    i.charge.as_ref().is_some_and(|c| c.group == group)
}

/// `user`'s row among the live `runs` and what their `ended` runs spent
/// (everyone's together when `None`).
fn usage_row(
    group: &str,
    user: Option<&str>,
    runs: &[Instance],
    ended: Spent,
    now_ms: u64,
) -> UsageRow {
    let mine: Vec<&Instance> = runs
        .iter()
        .filter(|i| user.is_none_or(|u| i.owner == u))
        .collect();
    // The second half of `usage` is the total of what it is given.
    let (_, u) = core::usage(mine.iter().filter_map(|i| i.as_run()), "", now_ms);
    UsageRow {
        group: group.to_string(),
        user: user.unwrap_or("*").to_string(),
        instances: u.instances,
        memory_mib: u.memory_mib,
        credits: u.credits + ended.credits,
        launches: mine.len() as u32 + ended.launches,
    }
}

fn code_view(group: &str, c: &StoredCode) -> JoinCode {
    JoinCode {
        group: group.to_string(),
        code: c.code.clone(),
        expires_ms: c.expires_ms,
        max_uses: c.max_uses,
        uses: c.uses,
    }
}

/// Applies the fields of `input` to `g` (the admin-only ones when `admin`).
fn apply(g: &mut GroupRecord, input: &GroupInput, admin: bool) -> ServiceResult<()> {
    if let Some(t) = &input.title {
        if t.trim().is_empty() || t.len() > 200 || t.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "title is 1-200 characters, no control characters",
            ));
        }
        g.title = t.trim().to_string();
    }
    if let Some(e) = input.expires_ms {
        g.expires_ms = (e > 0).then_some(e);
    }
    if let Some(t) = input.idle_timeout_secs {
        if t > crate::blueprints::spec::MAX_IDLE_TIMEOUT_SECS {
            return Err(ServiceError::invalid(
                "idle_timeout_secs is at most 30 days (0 removes it)",
            ));
        }
        g.idle_timeout_secs = (t > 0).then_some(t);
    }
    if !admin {
        return Ok(());
    }
    if let Some(q) = &input.quota {
        check_quota("quota", q)?;
        g.quota = *q;
    }
    if let Some(q) = &input.member_quota {
        check_quota("member_quota", q)?;
        g.member_quota = *q;
    }
    if let Some(l) = &input.limits {
        if l.images.len() > 64 || l.images.iter().any(|i| i.is_empty() || i.len() > 512) {
            return Err(ServiceError::invalid(
                "limits.images is at most 64 image references or prefixes ending in *",
            ));
        }
        g.limits = l.clone();
    }
    if let Some(granted) = &input.granted {
        if granted.len() > 256
            || granted
                .iter()
                .any(|b| !crate::blueprints::spec::valid_name(b))
        {
            return Err(ServiceError::invalid(
                "granted is at most 256 blueprint names",
            ));
        }
        g.granted = granted.iter().cloned().collect();
    }
    if let Some(owner) = &input.owner {
        // The named account becomes an owner; earlier owners stay managers.
        for m in g.members.values_mut() {
            if m.role == GroupRole::Owner {
                m.role = GroupRole::Manager;
            }
        }
        let joined_ms = g.members.get(owner).map_or(g.created_ms, |m| m.joined_ms);
        g.members.insert(
            owner.clone(),
            Member {
                role: GroupRole::Owner,
                joined_ms,
            },
        );
    }
    Ok(())
}
