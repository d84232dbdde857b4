//! A container runtime that keeps containers in memory: "started" containers answer
//! their probe after a configurable delay. With the real supervisor, link and
//! protocol around it, many hollow agents in one process measure the controller at
//! scale. They never stand in for Docker in functional tests.
//!
//! Every image is present at once ([`HollowImages`]): a hollow host never pulls, so
//! thousands of them cost the controller exactly what their launches cost.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::ids::InstanceId;
use cairn_shared::images::RegistryCredential;
use cairn_shared::workload::{DesiredInstance, Probe};
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{ContainerRuntime, ContainerState, Observed, RuntimeError};
use crate::images::{BackendError, ImageBackend, PullEvents};

/// An engine that holds every image: nothing is ever pulled or loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct HollowImages;

impl ImageBackend for HollowImages {
    fn present<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async { Ok(true) })
    }

    fn pull<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a RegistryCredential>,
        _: PullEvents<'a>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn load<'a>(&'a self, _: &'a Path) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug)]
struct Fake {
    container_id: String,
    ip: IpAddr,
    ready_at: Instant,
}

/// In-memory containers for scale measurements.
#[derive(Debug)]
pub struct HollowRuntime {
    start_delay: Duration,
    containers: Mutex<BTreeMap<InstanceId, Fake>>,
    next: AtomicU32,
}

impl HollowRuntime {
    /// Containers answer `start_delay` after they are created.
    pub fn new(start_delay: Duration) -> Self {
        HollowRuntime {
            start_delay,
            containers: Mutex::new(BTreeMap::new()),
            next: AtomicU32::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<InstanceId, Fake>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many containers it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ContainerRuntime for HollowRuntime {
    async fn prepare(&self) -> Result<cairn_shared::resources::Isolation, RuntimeError> {
        // Nothing runs, so nothing can get out: the scheduler may use hollow hosts.
        Ok(cairn_shared::resources::Isolation::Enforced)
    }

    fn image_backend(&self) -> Arc<dyn ImageBackend> {
        Arc::new(HollowImages)
    }

    async fn list(&self) -> Result<BTreeMap<InstanceId, Observed>, RuntimeError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, f)| {
                (
                    id.clone(),
                    Observed {
                        container_id: f.container_id.clone(),
                        state: ContainerState::Running,
                    },
                )
            })
            .collect())
    }

    fn mounts_datasets(&self) -> bool {
        false
    }

    async fn create(
        &self,
        d: &DesiredInstance,
        _datasets: &[super::DatasetBind],
    ) -> Result<String, RuntimeError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let container_id = format!("hollow-{n:08x}");
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a80_0000 | (n & 0x7f_ffff)));
        self.lock().insert(
            d.id.clone(),
            Fake {
                container_id: container_id.clone(),
                ip,
                ready_at: Instant::now() + self.start_delay,
            },
        );
        Ok(container_id)
    }

    async fn address(&self, instance: &InstanceId) -> Result<Option<IpAddr>, RuntimeError> {
        Ok(self.lock().get(instance).map(|f| f.ip))
    }

    async fn probe(&self, instance: &InstanceId, _: SocketAddr, _: &Probe) -> bool {
        self.lock()
            .get(instance)
            .is_some_and(|f| Instant::now() >= f.ready_at)
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.lock().retain(|_, f| f.container_id != container_id);
        Ok(())
    }

    async fn logs(&self, _: &InstanceId, _: u32) -> Result<String, RuntimeError> {
        Ok("hollow instance: no output\n".into())
    }
}
