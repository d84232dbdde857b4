//! Instances: launch, list, read, stop, extend, logs.
//!
//! Rules: a logged-in user launches the enabled blueprints of their groups (and
//! those granted to them) within the blueprint's per-user limit, the controller's,
//! and the group's quotas (per member and in all), checked atomically with the
//! insertion; a user sees and stops their own instances, a group's managers also
//! those launched through the group — anyone else's answers "not found", exactly
//! like one that does not exist; admins see and stop all, and alone may extend a
//! lifetime (1 s to 30 days at a time). App secrets are shown only to the owner,
//! and only the owner (or an admin) reaches the app through the proxy.

use cairn_shared::ids::InstanceId;

use super::views::{AppView, InstanceDataset, InstanceView};
use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::datasets::lookup::{resolve_mounts, LookupError};
use crate::groups::core::{self, Action, IdleStep};
use crate::instances::state::Charge;
use crate::instances::{base_url, Admission, Instance, LaunchError, QuotaCheck};
use crate::link::ask::{self, AskError};

/// The longest one extension may add.
pub const MAX_EXTEND_SECS: u64 = 30 * 24 * 3600;

fn not_found(id: &str) -> ServiceError {
    ServiceError::not_found(format!("no instance {id}"))
}

fn limits_of(q: &cairn_api::groups::Quota) -> core::Limits {
    core::Limits {
        instances: q.instances,
        memory_mib: q.memory_mib,
        credits: q.credits,
    }
}

impl Service {
    /// Renders an instance for `caller`.
    fn instance_view(&self, caller: &Caller, i: Instance) -> InstanceView {
        let owner = caller.principal().is_some_and(|p| p.name() == i.owner);
        let last_activity_ms = self.app.activity.last(&i.id);
        let idle_stop_ms = match crate::groups::reconcile::idle_step_of(&self.app, &i, now()) {
            IdleStep::Warn { at_ms } => Some(at_ms),
            _ => None,
        };
        let kind = self
            .app
            .blueprints
            .revision(&i.blueprint, i.revision)
            .ok()
            .flatten()
            .map(|r| r.spec.app);
        InstanceView {
            queue_position: self.app.instances.queue_position(&i.id),
            app: AppView {
                kind,
                url: base_url(&i.id),
                token: i.secrets.jupyter_token.clone().filter(|_| owner),
                password: i.secrets.rstudio_password.clone().filter(|_| owner),
            },
            time_left_secs: if i.state.is_terminal() {
                0
            } else {
                i.expires_ms.saturating_sub(now()) / 1000
            },
            id: i.id,
            owner: i.owner,
            blueprint: i.blueprint,
            revision: i.revision,
            state: i.state,
            state_reason: i.state_reason,
            host: i.host,
            address: i.address,
            created_ms: i.created_ms,
            expires_ms: i.expires_ms,
            transitions: i.transitions,
            datasets: i
                .datasets
                .into_iter()
                .map(|m| InstanceDataset {
                    name: m.dataset.name,
                    version: m.dataset.version,
                    path: m.path,
                    bytes: m.dataset.bytes,
                    manifest: m.dataset.manifest.to_hex(),
                })
                .collect(),
            volume: i.volume.map(|v| v.name),
            group: i.charge.map(|c| c.group),
            last_activity_ms,
            idle_stop_ms,
        }
    }

    /// Whether `caller` may see and stop `i`: its owner, an admin, or a manager
    /// of the group it was launched through.
    fn may_manage(&self, caller: &Caller, i: &Instance) -> bool {
        caller.may_see(&i.owner)
            || i.charge.as_ref().is_some_and(|c| {
                self.group_for(caller, &c.group, Action::ManageInstances)
                    .is_ok()
            })
    }

    /// An instance the caller may see, by its id as typed.
    fn visible_instance(&self, caller: &Caller, id: &str) -> ServiceResult<Instance> {
        caller.user()?;
        InstanceId::parse(id)
            .ok()
            .and_then(|parsed| self.app.instances.get(&parsed))
            .filter(|i| self.may_manage(caller, i))
            .ok_or_else(|| not_found(id))
    }

    /// The instance behind `/i/{id}/` if the caller may reach it (the proxy's
    /// one question; it renders its own pages from the record).
    pub fn proxied_instance(&self, caller: &Caller, id: &InstanceId) -> Option<Instance> {
        caller.user().ok()?;
        self.app
            .instances
            .get(id)
            .filter(|i| caller.may_see(&i.owner))
    }

    /// Launches an instance of an enabled blueprint for the caller.
    pub async fn launch(&self, caller: &Caller, blueprint: &str) -> ServiceResult<InstanceView> {
        self.launch_with(caller, blueprint, None).await
    }

    /// Launches an instance of an enabled blueprint for the caller, writing the
    /// caller's volume `volume` (default: the one named after the blueprint) when
    /// the blueprint keeps files. The volume's lease is taken first: a volume
    /// another running instance writes refuses the launch (409 `volume_in_use`);
    /// one whose writer is unreachable moves to the new instance, and the old one
    /// is stopped (its late save becomes a conflict snapshot).
    pub async fn launch_with(
        &self,
        caller: &Caller,
        blueprint: &str,
        volume: Option<&str>,
    ) -> ServiceResult<InstanceView> {
        let p = caller.user()?;
        let no_such = || ServiceError::not_found(format!("no blueprint named {blueprint:?}"));
        if !crate::blueprints::spec::valid_name(blueprint) {
            return Err(no_such());
        }
        let bp = self
            .app
            .blueprints
            .get(blueprint)?
            .filter(|b| b.spec.enabled)
            .ok_or_else(no_such)?;
        let group_name = self.launch_group(caller, &bp).ok_or_else(no_such)?;
        let group = self.app.groups.get(&group_name).ok_or_else(no_such)?;
        let charge = Charge {
            group: group_name.clone(),
            cost: bp.spec.cost,
            memory_mib: bp.spec.memory_mib,
            idle_timeout_secs: bp
                .spec
                .idle_timeout_secs
                .or(group.idle_timeout_secs)
                .filter(|t| *t > 0),
        };
        let quota = QuotaCheck {
            group: group_name,
            group_limits: limits_of(&group.quota),
            member_limits: limits_of(&group.member_quota),
            ask: core::Ask {
                memory_mib: bp.spec.memory_mib,
                credits: bp.spec.cost * bp.spec.max_lifetime_secs as f64 / 3600.0,
            },
        };
        let limits = Admission {
            per_blueprint: bp.spec.max_instances_per_user,
            per_user: self.app.config.instances.max_per_user,
        };
        // `latest` is fixed now: the instance keeps these versions for its life.
        let datasets = resolve_mounts(&bp.spec.datasets, &self.app.instances.dataset_lookup())
            .map_err(|e| match e {
                LookupError::Unavailable(_) => ServiceError::new(
                    Kind::Unavailable,
                    "datasets_unavailable",
                    format!("cannot launch {blueprint}: {e}"),
                ),
                // Checked when the blueprint was saved; gone since.
                _ => ServiceError::conflict(
                    "dataset_missing",
                    format!(
                        "cannot launch {blueprint}: {e}; an administrator must fix the blueprint"
                    ),
                ),
            })?;
        let id = InstanceId::generate();
        let vol = match (&bp.spec.volume, volume) {
            (None, Some(v)) => {
                return Err(ServiceError::invalid(format!(
                    "blueprint {blueprint} keeps no files, so it takes no volume (asked for {:?})",
                    v.chars().take(64).collect::<String>()
                )))
            }
            (None, None) => None,
            (Some(spec), name) => {
                let name = name.unwrap_or(blueprint);
                Some(self.take_volume(p.name(), name, &id, spec).await?)
            }
        };
        let volume_name = vol.as_ref().map(|v| v.name.clone());
        let launched = self
            .app
            .instances
            .launch(
                id.clone(),
                p.name(),
                &bp,
                datasets,
                vol,
                limits,
                Some((charge, quota)),
                now(),
            )
            .await;
        let i = match launched {
            Ok(i) => i,
            Err(e) => {
                if let Some(name) = volume_name {
                    if let Err(r) = self.app.volumes.release(p.name(), &name, id.as_str()).await {
                        tracing::error!(instance = %id, volume = %name, error = %r, "could not release the lease of a launch that did not go ahead");
                    }
                }
                return Err(match e {
                    LaunchError::Limit(m) => ServiceError::conflict("limit_reached", m),
                    LaunchError::Quota(m) => ServiceError::conflict("quota_exceeded", m),
                    LaunchError::Store(e) => ServiceError::internal(e),
                });
            }
        };
        Ok(self.instance_view(caller, i))
    }

    /// The instances launched through `group` (its managers, admins).
    pub fn group_instances(
        &self,
        caller: &Caller,
        group: &str,
    ) -> ServiceResult<Vec<InstanceView>> {
        self.group_for(caller, group, Action::ManageInstances)?;
        Ok(self
            .app
            .instances
            .matching(|i| i.charge.as_ref().is_some_and(|c| c.group == group))
            .into_iter()
            .map(|i| self.instance_view(caller, i))
            .collect())
    }

    /// The caller's instances; with `all`, an admin gets everyone's.
    pub fn list_instances(&self, caller: &Caller, all: bool) -> ServiceResult<Vec<InstanceView>> {
        let p = caller.user()?;
        let owner = (!(all && p.is_admin())).then(|| p.name());
        Ok(self
            .app
            .instances
            .list(owner)
            .into_iter()
            .map(|i| self.instance_view(caller, i))
            .collect())
    }

    pub fn instance(&self, caller: &Caller, id: &str) -> ServiceResult<InstanceView> {
        let i = self.visible_instance(caller, id)?;
        Ok(self.instance_view(caller, i))
    }

    /// Stops an instance; repeating it is harmless.
    pub async fn stop(&self, caller: &Caller, id: &str) -> ServiceResult<InstanceView> {
        let i = self.visible_instance(caller, id)?;
        let by = caller.user()?.name();
        let reason = format!("stopped by {by}");
        if by != i.owner {
            self.audit(
                caller,
                "instance.stop",
                i.id.as_str(),
                format!("owned by {}", i.owner),
            );
        }
        let i = self
            .app
            .instances
            .stop(&i.id, reason, now())
            .await?
            .ok_or_else(|| not_found(id))?;
        Ok(self.instance_view(caller, i))
    }

    /// Gives an instance `seconds` more time (admins).
    pub async fn extend(
        &self,
        caller: &Caller,
        id: &str,
        seconds: u64,
    ) -> ServiceResult<InstanceView> {
        let p = caller.admin()?;
        if seconds == 0 || seconds > MAX_EXTEND_SECS {
            return Err(ServiceError::invalid(format!(
                "seconds must be between 1 and {MAX_EXTEND_SECS} (30 days)"
            )));
        }
        let i = self.visible_instance(caller, id)?;
        let i = self
            .app
            .instances
            .extend(&i.id, seconds * 1000)
            .await?
            .ok_or_else(|| not_found(id))?;
        tracing::info!(instance = %i.id, by = %p.name(), seconds, "lifetime extended");
        Ok(self.instance_view(caller, i))
    }

    /// The instance's last `tail` lines of output, fetched from its agent now.
    pub async fn logs(&self, caller: &Caller, id: &str, tail: u32) -> ServiceResult<String> {
        let i = self.visible_instance(caller, id)?;
        let host = i.host.ok_or_else(|| {
            ServiceError::conflict(
                "not_placed",
                "the instance has not been placed on a host yet",
            )
        })?;
        let conn = self.app.registry.connection(&host).ok_or_else(|| {
            ServiceError::new(
                Kind::Unavailable,
                "host_unreachable",
                format!("host {host} is not connected"),
            )
        })?;
        ask::logs(&conn, &i.id, tail).await.map_err(|e| match e {
            AskError::Timeout => {
                ServiceError::new(Kind::AgentTimeout, "agent_timeout", e.to_string())
            }
            AskError::Agent(_) | AskError::Link(_) => {
                ServiceError::new(Kind::AgentError, "agent_error", e.to_string())
            }
        })
    }
}
