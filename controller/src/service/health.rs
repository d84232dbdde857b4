//! Health: anyone may learn that the process is up and its store takes writes;
//! how many hosts and instances there are is for admins.

use super::views::Health;
use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};

impl Service {
    /// Fails with `Unavailable` if the store refuses a durable write.
    pub async fn health(&self, caller: &Caller) -> ServiceResult<Health> {
        if let Err(e) = self.app.store.probe_write(now()).await {
            tracing::error!(error = %e, "health check: the store does not take writes");
            return Err(ServiceError::new(
                Kind::Unavailable,
                "store_unwritable",
                "the controller's store does not take writes; see its log",
            ));
        }
        let admin = caller.is_admin();
        Ok(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            store: "writable".into(),
            hosts: admin.then(|| self.app.registry.count_by_state()),
            instances: admin.then(|| self.app.instances.count_by_state()),
        })
    }
}
