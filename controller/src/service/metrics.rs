//! Metrics: the controller's Prometheus exposition is for admins only (it tells
//! how many users, hosts and instances there are, and how busy they are).

use super::{Caller, Service, ServiceResult};

impl Service {
    /// The process's metrics in the Prometheus text format, with the
    /// point-in-time gauges brought up to date first. Admins only: nobody gets
    /// 401, a user 403.
    pub fn metrics(&self, caller: &Caller) -> ServiceResult<String> {
        caller.admin()?;
        crate::metrics::refresh(&self.app);
        Ok(crate::metrics::render())
    }
}
