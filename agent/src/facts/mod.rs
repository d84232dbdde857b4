//! What the agent reports about its host.
//!
//! The link asks a [`FactsSource`] for static facts once per connection and for
//! capacity and runtime facts every heartbeat. [`HostFactsSource`] reads the real host
//! ([`system`] through sysinfo, [`docker`] through bollard); [`hollow::HollowFacts`]
//! invents a host, for scale measurements only.
//!
//! Everything produced here already fits the bounds of
//! [`cairn_shared::validate::Validate`]: strings from the host or the engine are cut
//! with [`clip`], lists are capped, so a host with odd data cannot get its own reports
//! refused by the controller.

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
    /// Static facts (hostname, os, kernel, arch, agent version, operator labels).
    fn host_facts(&self) -> HostFacts;
    /// Current capacity. Must be cheap: called every heartbeat (5 s) on an agent that
    /// should use < 0.5% CPU and < 20 MiB RSS idle.
    fn capacity(&self) -> impl Future<Output = Capacity> + Send;
    /// Docker engine facts, or [`RuntimeFacts::Unavailable`] with a readable message
    /// when Docker does not answer; never panics, bounded by a timeout of a few seconds.
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
    /// `labels` are the operator's host labels, reported as given (the config loader
    /// validates them). `state_dir` is the agent's state directory, whose file system
    /// is reported as `state_disk`.
    ///
    /// Tries the Docker Engine once, so that the first heartbeat already knows where
    /// Docker keeps its data; if the engine does not answer, the source is built anyway
    /// and reconnects on later [`FactsSource::runtime`] calls.
    pub async fn new(labels: BTreeMap<String, String>, state_dir: PathBuf) -> Self {
        let docker = docker::DockerProbe::new();
        docker.warm_up().await;
        HostFactsSource {
            labels,
            system: system::SystemProbe::new(state_dir),
            docker,
        }
    }
}

impl FactsSource for HostFactsSource {
    fn host_facts(&self) -> HostFacts {
        // Re-read per connection (not cached) so a renamed host reports its new name
        // after the next reconnect; it is a handful of small file reads.
        system::static_facts(self.labels.clone())
    }

    async fn capacity(&self) -> Capacity {
        // Only the cached data root: capacity must not wait on a slow engine.
        let data_root = self.docker.data_root();
        self.system.capacity(data_root.as_deref())
    }

    async fn runtime(&self) -> RuntimeFacts {
        self.docker.facts().await
    }
}

/// `s` cut to at most `max_bytes` bytes on a character boundary.
///
/// The shared bounds count bytes, not characters, so cutting by characters could
/// still overflow them with multi-byte text.
pub(crate) fn clip(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_bytes_and_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abc", 0), "");
        let long = "é".repeat(300);
        assert!(clip(&long, 253).len() <= 253);
    }
}
