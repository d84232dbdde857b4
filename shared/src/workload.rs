//! Workloads on the link: what the controller wants a host to run, and what the host
//! reports back about each instance.
//!
//! The controller sends [`DesiredUpdate`]s: the full set of instances for the host on
//! every (re)connection, then changes, each with the next version number. An agent that
//! sees a gap in versions asks for the full set again ([`crate::protocol::AgentMsg::ResyncDesired`]),
//! so a lost message costs one round trip, never a wrong host.

use serde::{Deserialize, Serialize};

use crate::chunks::ChunkId;
use crate::ids::InstanceId;
use crate::images::{DesiredImages, ImageSource};
use crate::validate::{self, Invalid, Validate};

/// How the agent decides an instance's app is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// A TCP connection to the app port succeeds.
    Tcp,
    /// An HTTP request to `path` gets any HTTP response.
    Http { path: String },
}

/// One instance the host should be running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub id: InstanceId,
    pub owner: String,
    pub blueprint: String,
    pub revision: u32,
    /// The image reference containers are created from (see [`crate::images::ImageSpec`]).
    pub image: String,
    /// How to get the image if the host does not have it.
    pub image_source: ImageSource,
    /// Command and arguments; `None` keeps the image's own.
    pub command: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub memory_bytes: u64,
    /// CPU limit in billionths of a CPU (Docker's NanoCpus).
    pub nano_cpus: u64,
    pub app_port: u16,
    pub probe: Probe,
    /// How long the app may take to answer before the instance fails.
    pub start_timeout_ms: u64,
    /// The controller has seen this instance's container before. If the agent finds no
    /// container, it reports it missing instead of creating a new one: the user's
    /// environment vanished, and silently replacing it would hide that.
    pub expect_existing: bool,
    /// Dataset versions mounted read-only into the container, materialised on the
    /// host before it starts.
    pub datasets: Vec<DatasetMount>,
    /// The user's persistent volume, restored on the host before the container
    /// starts and saved back while it runs and when it stops.
    pub volume: Option<VolumeMount>,
}

/// A user's volume as the link names it: what to restore and where to mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// `OWNER/NAME`, for messages and the host's directory names.
    pub volume: String,
    /// The snapshot to restore; `None` for a volume with nothing saved yet.
    pub head: Option<ChunkId>,
    /// The volume's generation `head` is: commits name it as their base.
    pub generation: u64,
    /// Bytes of the head's files, for progress.
    pub bytes: u64,
    /// Absolute path inside the container.
    pub path: String,
    /// Seconds between checkpoints while the instance runs (0: only at stop).
    pub checkpoint_secs: u32,
    /// `UID:GID` the files belong to inside the container; `None` takes the
    /// image's numeric user (root when it names none).
    pub owner: Option<(u32, u32)>,
}

/// Longest volume name on the link (`OWNER/NAME`).
pub const MAX_VOLUME_NAME: usize = 192;

impl Validate for VolumeMount {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_len("volume.volume", &self.volume, MAX_VOLUME_NAME)?;
        validate::max_len("volume.path", &self.path, 1024)?;
        if !self.path.starts_with('/') || self.path.contains('\0') {
            return Err(Invalid::new("volume.path", "not an absolute path"));
        }
        Ok(())
    }
}

/// One immutable dataset version, as the link names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub name: String,
    pub version: u32,
    /// The version's manifest: what the agent fetches and verifies.
    pub manifest: ChunkId,
    /// Bytes of its files, for progress and cache room.
    pub bytes: u64,
}

/// A dataset version mounted into an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetMount {
    pub dataset: DatasetSpec,
    /// Absolute path inside the container.
    pub path: String,
}

/// The dataset versions a host should hold before any launch asks (pre-fetch, with
/// the blueprint's pre-pull policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredDatasets {
    pub prefetch: Vec<DatasetSpec>,
}

/// Most datasets one instance mounts.
pub const MAX_INSTANCE_DATASETS: usize = 16;
/// Most datasets in a host's pre-fetch set.
pub const MAX_PREFETCH_DATASETS: usize = 256;
/// Longest dataset name on the link.
pub const MAX_DATASET_NAME: usize = 63;

impl Validate for DatasetSpec {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_len("dataset.name", &self.name, MAX_DATASET_NAME)
    }
}

impl Validate for DatasetMount {
    fn validate(&self) -> Result<(), Invalid> {
        self.dataset.validate()?;
        validate::max_len("dataset.path", &self.path, 1024)?;
        if !self.path.starts_with('/') || self.path.contains('\0') {
            return Err(Invalid::new("dataset.path", "not an absolute path"));
        }
        Ok(())
    }
}

/// A change to a host's desired instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredUpdate {
    pub version: u64,
    /// `upsert` is the complete set: everything else must go.
    pub full: bool,
    pub upsert: Vec<DesiredInstance>,
    pub remove: Vec<InstanceId>,
    /// The host's desired image set and registry credentials; `None` leaves the last
    /// set as it is. Always present when `full`.
    pub images: Option<DesiredImages>,
    /// The host's dataset pre-fetch set; `None` leaves the last set as it is.
    /// Always present when `full`.
    pub datasets: Option<DesiredDatasets>,
}

/// Most instances in one update.
pub const MAX_DESIRED: usize = 4096;

/// Container operations one host runs at once unless told otherwise: enough to
/// keep an engine busy, few enough that none of them waits on the others for long.
/// The agent's default `--container-slots`; the controller's scheduler counts
/// launches beyond it as the host's queue.
pub const DEFAULT_CONTAINER_SLOTS: u32 = 4;

impl Validate for DesiredUpdate {
    fn validate(&self) -> Result<(), Invalid> {
        validate::max_items("desired.upsert", &self.upsert, MAX_DESIRED)?;
        validate::max_items("desired.remove", &self.remove, MAX_DESIRED)?;
        if let Some(images) = &self.images {
            images.validate()?;
        }
        if let Some(datasets) = &self.datasets {
            validate::max_items(
                "desired.datasets.prefetch",
                &datasets.prefetch,
                MAX_PREFETCH_DATASETS,
            )?;
            datasets.prefetch.iter().try_for_each(Validate::validate)?;
        }
        for d in &self.upsert {
            validate::max_len("desired.image", &d.image, crate::images::MAX_REFERENCE)?;
            if let ImageSource::Controller { archive, .. } = &d.image_source {
                if !crate::images::is_archive_hash(archive) {
                    return Err(Invalid::new("desired.image_source", "not a BLAKE3 hash"));
                }
            }
            validate::max_items("desired.env", &d.env, 256)?;
            if let Some(c) = &d.command {
                validate::max_items("desired.command", c, 64)?;
            }
            validate::max_items("desired.datasets", &d.datasets, MAX_INSTANCE_DATASETS)?;
            d.datasets.iter().try_for_each(Validate::validate)?;
            if let Some(v) = &d.volume {
                v.validate()?;
            }
        }
        Ok(())
    }
}

/// Where an instance is, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstancePhase {
    /// Getting ready: pulling the image, creating the container.
    Preparing { detail: String },
    /// The container runs; the app does not answer yet.
    Starting,
    /// The app answers at `address` (`IP:PORT` on the host's Cairn network).
    Running { address: String },
    /// The container stopped by itself.
    Exited { exit_code: i64, oom_killed: bool },
    /// It could not be started; `reason` is for the user (e.g. Docker's message).
    Failed { reason: String },
    /// The container is stopped and the instance's volume is being saved before
    /// it is removed: `"saving files"`, or `"save failed: …; retrying"`.
    Saving { detail: String },
    /// The container was removed because the instance is no longer desired.
    Removed,
    /// It was expected to exist, but there is no container.
    Missing,
}

/// One instance's phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: InstanceId,
    pub phase: InstancePhase,
}

impl Validate for InstanceReport {
    fn validate(&self) -> Result<(), Invalid> {
        match &self.phase {
            InstancePhase::Preparing { detail } | InstancePhase::Saving { detail } => {
                validate::max_len("report.detail", detail, 1024)
            }
            InstancePhase::Running { address } => validate::max_len("report.address", address, 64),
            InstancePhase::Failed { reason } => validate::max_len("report.reason", reason, 4096),
            _ => Ok(()),
        }
    }
}

/// A request from the controller to the agent, on a stream of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// The last `tail` lines of an instance's output.
    Logs { instance: InstanceId, tail: u32 },
    /// A byte tunnel to a running instance's app port, for the controller's proxy.
    ///
    /// The agent connects to the address it reported for the instance (it never
    /// connects anywhere the controller names, so a controller bug cannot turn it
    /// into an open relay), answers [`ControllerResponse::TunnelOpen`], and from then
    /// on the stream carries raw bytes in both directions until either side finishes.
    Tunnel { instance: InstanceId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerResponse {
    Logs {
        text: String,
    },
    /// The tunnel is connected; the stream is raw bytes from now on.
    TunnelOpen,
    Error {
        message: String,
    },
}

/// Most log bytes returned at once.
pub const MAX_LOG_BYTES: usize = 512 * 1024;
