//! Running instances on this host.
//!
//! * [`plan`] — the pure reconcile planner (desired + observed → actions).
//! * [`docker`] — the Docker implementation of [`ContainerRuntime`] (bollard).
//! * [`hollow`] — in-memory containers, for scale measurements only.
//! * [`isolation`] — packet filter rules that keep instances off the host and the
//!   cloud metadata address.
//! * [`queue`] — the host's first-come-first-served queue for container creates,
//!   with a few permits, so a burst of launches does not swamp the engine.
//! * [`supervisor`] — the loop that applies desired state, executes plans, probes
//!   apps until they answer, and queues reports for the link.

pub mod docker;
pub mod hollow;
pub mod isolation;
pub mod plan;
pub mod queue;
pub mod supervisor;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use cairn_shared::ids::InstanceId;
use cairn_shared::resources::Isolation;
use cairn_shared::workload::{DesiredInstance, Probe};

use crate::images::ImageBackend;

pub use plan::{ContainerState, Observed};
pub use supervisor::{Supervisor, Workloads};

/// Labels on every container Cairn manages; the agent adopts containers by them.
pub mod labels {
    pub const INSTANCE: &str = "cairn.instance";
    pub const OWNER: &str = "cairn.owner";
    pub const BLUEPRINT: &str = "cairn.blueprint";
    pub const REVISION: &str = "cairn.revision";
    /// The host id of the agent that owns the container. An agent adopts and cleans up
    /// only its own, so two agents sharing one engine (tests, or a re-enrolled host
    /// next to its old identity) never remove each other's instances.
    pub const HOST: &str = "cairn.host";
}

/// A host directory bound into a container: a materialised dataset version
/// (read-only) or the instance's copy of its user's volume (writable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetBind {
    /// The tree on the host (in the agent's dataset cache or volume keeper).
    pub source: std::path::PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    /// Only a user's volume is writable; datasets never are.
    pub writable: bool,
}

/// A failed runtime operation, in the runtime's own words (shown to users).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// What [`RuntimeError::no_answer`] says; how [`RuntimeError::is_no_answer`] knows it.
const NO_ANSWER: &str = "the Docker Engine did not answer within";

impl RuntimeError {
    /// The engine did not answer `what` within `after`. Unlike a refusal, the
    /// operation may still have happened: a create may have made its container.
    pub fn no_answer(what: &str, after: std::time::Duration) -> Self {
        RuntimeError(format!("{what}: {NO_ANSWER} {} s", after.as_secs()))
    }

    /// Whether the engine did not answer in time (an error made by
    /// [`RuntimeError::no_answer`]): worth another try once the engine is less busy.
    pub fn is_no_answer(&self) -> bool {
        self.0.contains(NO_ANSWER)
    }
}

/// What the supervisor needs from a container runtime.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// One-time set-up (the Cairn network); says whether instances are fenced in,
    /// which the link reports to the controller.
    fn prepare(&self) -> impl Future<Output = Result<Isolation, RuntimeError>> + Send;
    /// Where the images containers are created from live: the supervisor's image
    /// manager pulls through it before [`ContainerRuntime::create`].
    fn image_backend(&self) -> Arc<dyn ImageBackend>;
    /// Every container with a Cairn instance label, by instance.
    fn list(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<InstanceId, Observed>, RuntimeError>> + Send;
    /// Creates and starts the instance's container with `datasets` bound into it
    /// read-only; returns its id.
    fn create(
        &self,
        d: &DesiredInstance,
        datasets: &[DatasetBind],
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Whether containers really mount datasets, so they must be materialised
    /// first. Hollow runtimes run nothing and say no.
    fn mounts_datasets(&self) -> bool {
        true
    }
    /// The instance container's address on the Cairn network.
    fn address(
        &self,
        instance: &InstanceId,
    ) -> impl Future<Output = Result<Option<IpAddr>, RuntimeError>> + Send;
    /// Whether the instance's app answers at `addr`. Real runtimes connect to it.
    fn probe(
        &self,
        _instance: &InstanceId,
        addr: SocketAddr,
        probe: &Probe,
    ) -> impl Future<Output = bool> + Send {
        let probe = probe.clone();
        async move { supervisor::answers(addr, &probe).await }
    }
    /// The user an image's containers run as, as `(uid, gid)`, when the image
    /// names it by number (a volume's files are given to it); `None` otherwise.
    fn image_user(&self, _image: &str) -> impl Future<Output = Option<(u32, u32)>> + Send {
        async { None }
    }
    /// Stops a container without removing it (its files are saved before it is
    /// removed); idempotent.
    fn stop(&self, _container_id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async { Ok(()) }
    }
    /// Stops and removes a container (idempotent).
    fn remove(&self, container_id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The last `tail` lines of the instance's output.
    fn logs(
        &self,
        instance: &InstanceId,
        tail: u32,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
}
