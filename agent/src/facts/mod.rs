//! What the agent reports about its host.
//!
//! The link asks a [`FactsSource`] for static facts once per connection and for
//! capacity and runtime facts every heartbeat. [`HostFactsSource`] reads the real host
//! (sysinfo and the Docker Engine); [`hollow::HollowFacts`] invents a host, for scale
//! measurements only.

pub mod docker;
pub mod hollow;
pub mod system;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use cairn_shared::resources::{Capacity, HostFacts, RuntimeFacts};

pub use docker::ping_docker;

/// Where the agent's reports come from: the real host, or a hollow one for scale tests.
pub trait FactsSource: Send + Sync + 'static {
    /// Facts that change rarely: names, versions, labels.
    fn host_facts(&self) -> HostFacts;
    /// Current capacity; cheap, called every heartbeat.
    fn capacity(&self) -> impl Future<Output = Capacity> + Send;
    /// The container runtime's view; never fails, says `Unavailable` instead.
    fn runtime(&self) -> impl Future<Output = RuntimeFacts> + Send;
}

/// The real host: sysinfo for capacity, bollard for Docker.
pub struct HostFactsSource {
    labels: BTreeMap<String, String>,
    system: system::SystemProbe,
    docker: docker::DockerProbe,
}

impl std::fmt::Debug for HostFactsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFactsSource")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl HostFactsSource {
    /// `state_dir` is the agent's state directory, whose file system is reported.
    pub async fn new(labels: BTreeMap<String, String>, state_dir: PathBuf) -> Self {
        HostFactsSource {
            labels,
            system: system::SystemProbe::new(state_dir),
            docker: docker::DockerProbe::new(),
        }
    }
}

impl FactsSource for HostFactsSource {
    fn host_facts(&self) -> HostFacts {
        system::static_facts(self.labels.clone())
    }

    async fn capacity(&self) -> Capacity {
        let data_root = self.docker.data_root().await;
        self.system.capacity(data_root.as_deref())
    }

    async fn runtime(&self) -> RuntimeFacts {
        self.docker.facts().await
    }
}
