//! Packages hosts install from the controller: the agent's .deb that hosts of a
//! bootstrap-mode pool fetch at first boot. Public on purpose (a new host has no
//! credential yet, and the package holds no secret); each host checks the file
//! against the SHA-256 its user-data names.

use super::{Service, ServiceError, ServiceResult};
use crate::autoscaler::openstack::AgentPackage;

impl Service {
    /// The agent's package, if a pool bootstraps hosts.
    pub fn agent_package(&self) -> ServiceResult<AgentPackage> {
        self.app.autoscaler.package().cloned().ok_or_else(|| {
            ServiceError::not_found(
                "this controller serves no agent package (no pool bootstraps hosts)",
            )
        })
    }
}
