//! The host pool (admins): list and read hosts, drain (no new instances; running
//! ones finish, or are stopped at an optional deadline of at most 30 days),
//! undrain, remove a drained host (its agent is refused from then on), and the
//! autoscaler's recent decisions.

use cairn_shared::ids::HostId;
use cairn_shared::protocol::CloseCode;

use super::views::{AutoscalerView, Waiting};
use super::{now, Caller, Service, ServiceError, ServiceResult};
use crate::hosts::pool::PoolEvent;
use crate::hosts::registry::RegistryError;
use crate::hosts::HostView;

/// The furthest a drain deadline may lie.
pub const MAX_DRAIN_DEADLINE_SECS: u64 = 30 * 24 * 3600;

fn parse(id: &str) -> ServiceResult<HostId> {
    HostId::parse(id).map_err(|e| ServiceError::invalid(e.to_string()))
}

fn no_such(id: &HostId) -> ServiceError {
    ServiceError::not_found(format!("no host {id}"))
}

impl Service {
    pub fn list_hosts(&self, caller: &Caller) -> ServiceResult<Vec<HostView>> {
        caller.admin()?;
        Ok(self.app.registry.list())
    }

    pub fn host(&self, caller: &Caller, id: &str) -> ServiceResult<HostView> {
        caller.admin()?;
        let id = parse(id)?;
        self.app.registry.get(&id).ok_or_else(|| no_such(&id))
    }

    async fn pool_request(&self, id: &HostId, event: PoolEvent) -> ServiceResult<HostView> {
        match self.app.registry.pool_event(id, event, true, now()).await {
            Ok(_) => {}
            Err(RegistryError::UnknownHost(_)) => return Err(no_such(id)),
            Err(RegistryError::Refused(r)) => {
                return Err(ServiceError::conflict("host_state", r.to_string()))
            }
            Err(e) => return Err(ServiceError::internal(e)),
        }
        // The queue may now go elsewhere, or to this host again.
        self.app.instances.schedule(now()).await;
        self.app.registry.get(id).ok_or_else(|| no_such(id))
    }

    /// No new instances on the host; running ones finish, or are stopped
    /// `deadline_secs` from now; then the host is `drained`.
    pub async fn drain_host(
        &self,
        caller: &Caller,
        id: &str,
        deadline_secs: Option<u64>,
    ) -> ServiceResult<HostView> {
        let p = caller.admin()?;
        let id = parse(id)?;
        if deadline_secs.is_some_and(|d| d > MAX_DRAIN_DEADLINE_SECS) {
            return Err(ServiceError::invalid("deadline_secs is at most 30 days"));
        }
        let deadline_ms = deadline_secs.map(|s| now() + s * 1000);
        tracing::info!(host = %id, by = %p.name(), ?deadline_ms, "drain requested");
        self.pool_request(&id, PoolEvent::Drain { deadline_ms })
            .await
    }

    /// Opens a draining or drained host again.
    pub async fn undrain_host(&self, caller: &Caller, id: &str) -> ServiceResult<HostView> {
        let p = caller.admin()?;
        let id = parse(id)?;
        tracing::info!(host = %id, by = %p.name(), "undrain requested");
        self.pool_request(&id, PoolEvent::Undrain).await
    }

    /// Removes a drained host and closes its agent's connection.
    pub async fn remove_host(&self, caller: &Caller, id: &str) -> ServiceResult<HostView> {
        let p = caller.admin()?;
        let id = parse(id)?;
        tracing::info!(host = %id, by = %p.name(), "removal requested");
        let view = self.pool_request(&id, PoolEvent::Remove).await?;
        self.app.registry.disconnect(
            &id,
            CloseCode::UnknownHost,
            "this host was removed from the pool",
        );
        Ok(view)
    }

    /// Memory (bytes) and CPU (thousandths) reserved on each host by the instances
    /// placed there, with their count, as the scheduler books them.
    pub fn host_reservations(
        &self,
        caller: &Caller,
    ) -> ServiceResult<std::collections::HashMap<HostId, (crate::scheduler::Resources, u32)>> {
        caller.admin()?;
        Ok(self.app.instances.reservations())
    }

    /// What the launch queue waits for per pool, and the autoscaler's recent
    /// decisions with their reasons, newest first.
    pub fn autoscaler(&self, caller: &Caller) -> ServiceResult<AutoscalerView> {
        caller.admin()?;
        let waiting = self
            .app
            .instances
            .shortfall()
            .into_iter()
            .map(|(pool, s)| {
                let pool = if pool.is_empty() {
                    "(no matching pool)".to_string()
                } else {
                    pool
                };
                let w = Waiting {
                    waiting: s.waiting,
                    memory_bytes: s.resources.memory,
                    millicpus: s.resources.millicpus,
                };
                (pool, w)
            })
            .collect();
        Ok(AutoscalerView {
            waiting,
            decisions: self.app.autoscaler.decisions(),
            servers: self.app.autoscaler.servers(),
            providers: self.app.autoscaler.health(),
        })
    }
}
