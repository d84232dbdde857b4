//! What an agent reports about its host: static facts, capacity and Docker state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{self, Invalid, Validate};

/// Most labels a host may carry.
pub const MAX_LABELS: usize = 64;
/// Most images an agent lists in one heartbeat; the rest are counted, not listed.
pub const MAX_IMAGES: usize = 2048;
/// Most Cairn containers an agent lists in one heartbeat.
pub const MAX_CONTAINERS: usize = 2048;
const MAX_TEXT: usize = 512;

/// Facts about a host that change rarely; sent once per connection in the Hello.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
    /// Operator-assigned labels from the agent's config, such as `gpu=true`.
    pub labels: BTreeMap<String, String>,
}

impl Validate for HostFacts {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_len("facts.hostname", &self.hostname, 253)?;
        validate::max_len("facts.os", &self.os, MAX_TEXT)?;
        validate::max_len("facts.kernel", &self.kernel, MAX_TEXT)?;
        validate::max_len("facts.arch", &self.arch, 64)?;
        validate::max_len("facts.agent_version", &self.agent_version, 64)?;
        if self.labels.len() > MAX_LABELS {
            return Err(Invalid::new(
                "facts.labels",
                format!("{} labels, at most {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            validate::label("facts.labels", k, v)?;
        }
        Ok(())
    }
}

/// Whether the host fences its instances off from itself and from the cloud
/// metadata address (the agent's packet filter rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Not known yet: the runtime is still being prepared, or the agent runs no
    /// instances.
    #[default]
    Pending,
    /// The rules are installed.
    Enforced,
    /// Installing the rules failed: instances could reach the host's services.
    Failed { error: String },
}

impl Isolation {
    pub fn is_enforced(&self) -> bool {
        matches!(self, Isolation::Enforced)
    }
}

impl Validate for Isolation {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Isolation::Failed { error } => validate::max_len("isolation.error", error, 4096),
            Isolation::Pending | Isolation::Enforced => Ok(()),
        }
    }
}

/// Space on one file system.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// What a host can hold and how busy it is; sent in every heartbeat.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
    /// The file system that holds Docker's data root, if Docker told us where it is.
    pub docker_disk: Option<DiskUsage>,
    /// The file system that holds the agent's state directory.
    pub state_disk: Option<DiskUsage>,
}

impl Validate for Capacity {
    fn validate(&self) -> Result<(), Invalid> {
        if self.load_average.iter().any(|l| !l.is_finite() || *l < 0.0) {
            return Err(Invalid::new(
                "capacity.load_average",
                "must be finite and non-negative",
            ));
        }
        if self.memory_available_bytes > self.memory_total_bytes {
            return Err(Invalid::new(
                "capacity.memory_available_bytes",
                "exceeds memory_total_bytes",
            ));
        }
        for (name, d) in [
            ("capacity.docker_disk", self.docker_disk),
            ("capacity.state_disk", self.state_disk),
        ] {
            if let Some(d) = d {
                if d.free_bytes > d.total_bytes {
                    return Err(Invalid::new(name, "free_bytes exceeds total_bytes"));
                }
            }
        }
        Ok(())
    }
}

/// An image present in the host's Docker Engine.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    /// `REPO@sha256:…` names the image was pulled by; how digest references are matched.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
    pub created_unix: i64,
}

/// A container carrying `cairn.*` labels.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Docker's state word: `running`, `exited`, `created`...
    pub state: String,
    /// Only the `cairn.*` labels.
    pub labels: BTreeMap<String, String>,
}

/// What the agent sees of its container runtime.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeFacts {
    /// The engine answered.
    Docker(DockerFacts),
    /// The engine did not answer; the message says why.
    Unavailable { error: String },
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DockerFacts {
    pub engine_version: String,
    pub api_version: String,
    pub data_root: String,
    pub images: Vec<ImageInfo>,
    /// How many images there were in all (`images` may be cut at [`MAX_IMAGES`]).
    pub image_count: u32,
    pub containers: Vec<ContainerInfo>,
}

impl Validate for RuntimeFacts {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            RuntimeFacts::Unavailable { error } => validate::max_len("runtime.error", error, 4096),
            RuntimeFacts::Docker(d) => {
                validate::max_len("docker.engine_version", &d.engine_version, 64)?;
                validate::max_len("docker.api_version", &d.api_version, 64)?;
                validate::max_len("docker.data_root", &d.data_root, 4096)?;
                validate::max_items("docker.images", &d.images, MAX_IMAGES)?;
                validate::max_items("docker.containers", &d.containers, MAX_CONTAINERS)?;
                for (i, img) in d.images.iter().enumerate() {
                    validate::max_len(&format!("docker.images[{i}].id"), &img.id, 128)?;
                    validate::max_items(&format!("docker.images[{i}].tags"), &img.tags, 64)?;
                    for t in &img.tags {
                        validate::max_len(&format!("docker.images[{i}].tags"), t, MAX_TEXT)?;
                    }
                    validate::max_items(
                        &format!("docker.images[{i}].repo_digests"),
                        &img.repo_digests,
                        64,
                    )?;
                    for t in &img.repo_digests {
                        validate::max_len(
                            &format!("docker.images[{i}].repo_digests"),
                            t,
                            MAX_TEXT,
                        )?;
                    }
                }
                for (i, c) in d.containers.iter().enumerate() {
                    validate::max_len(&format!("docker.containers[{i}].id"), &c.id, 128)?;
                    validate::max_len(&format!("docker.containers[{i}].name"), &c.name, 256)?;
                    validate::max_len(
                        &format!("docker.containers[{i}].image"),
                        &c.image,
                        MAX_TEXT,
                    )?;
                    validate::max_len(&format!("docker.containers[{i}].state"), &c.state, 32)?;
                    if c.labels.len() > MAX_LABELS {
                        return Err(Invalid::new(
                            format!("docker.containers[{i}].labels"),
                            "too many labels",
                        ));
                    }
                    for (k, v) in &c.labels {
                        validate::max_len(&format!("docker.containers[{i}].labels"), k, 128)?;
                        validate::max_len(
                            &format!("docker.containers[{i}].labels.{k}"),
                            v,
                            MAX_TEXT,
                        )?;
                    }
                }
                Ok(())
            }
        }
    }
}
