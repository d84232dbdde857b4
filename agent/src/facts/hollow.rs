//! A hollow host: invented facts for scale measurements only.
//!
//! Hundreds of hollow agents run in one process, each with its own QUIC connection
//! and certificate, to load the controller the way a large pool would. The facts are
//! fixed (16 CPUs, 64 GiB, three images, no containers) apart from the host name,
//! `hollow-{index}`, which keeps the hosts apart. They never stand in for Docker in
//! functional tests: nothing here touches the real host.

use cairn_shared::resources::{
    Capacity, DiskUsage, DockerFacts, HostFacts, ImageInfo, RuntimeFacts,
};

use super::FactsSource;

const GIB: u64 = 1024 * 1024 * 1024;

/// Facts of hollow host number `index`.
#[derive(Debug, Clone)]
pub struct HollowFacts {
    index: usize,
}

impl HollowFacts {
    /// Hollow host number `index`; each index gets its own host name.
    pub fn new(index: usize) -> Self {
        HollowFacts { index }
    }
}

impl FactsSource for HollowFacts {
    fn host_facts(&self) -> HostFacts {
        HostFacts {
            hostname: format!("hollow-{}", self.index),
            os: "hollow".into(),
            kernel: "none".into(),
            arch: std::env::consts::ARCH.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            labels: [("hollow".to_string(), "true".to_string())].into(),
        }
    }

    async fn capacity(&self) -> Capacity {
        Capacity {
            cpus: 16,
            memory_total_bytes: 64 * GIB,
            memory_available_bytes: 60 * GIB,
            load_average: [0.1, 0.1, 0.1],
            docker_disk: Some(DiskUsage {
                total_bytes: 500 * GIB,
                free_bytes: 400 * GIB,
            }),
            state_disk: Some(DiskUsage {
                total_bytes: 500 * GIB,
                free_bytes: 400 * GIB,
            }),
        }
    }

    async fn runtime(&self) -> RuntimeFacts {
        RuntimeFacts::Docker(DockerFacts {
            engine_version: "hollow".into(),
            api_version: "1.41".into(),
            data_root: "/var/lib/docker".into(),
            images: (0..3)
                .map(|i| ImageInfo {
                    id: format!("sha256:{i:064x}"),
                    tags: vec![format!("hollow/image:{i}")],
                    repo_digests: vec![],
                    size_bytes: GIB,
                    created_unix: 0,
                })
                .collect(),
            image_count: 3,
            containers: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_shared::validate::Validate;

    #[tokio::test]
    async fn hollow_facts_are_valid_and_distinct() {
        let (a, b) = (HollowFacts::new(0), HollowFacts::new(1));
        assert_eq!(a.host_facts().hostname, "hollow-0");
        assert_ne!(a.host_facts().hostname, b.host_facts().hostname);
        a.host_facts().validate().unwrap();
        a.capacity().await.validate().unwrap();
        a.runtime().await.validate().unwrap();
    }
}
