//! Blueprints, the templates an administrator defines and users launch: the input as
//! submitted, the validated spec, the stored record with its revision, and the
//! answer to a refresh.
//!
//! [`BlueprintInput`] keeps every field optional and loosely typed on purpose: the
//! controller reports *all* problems, each with its field, instead of a serde error
//! that names none. The validated [`BlueprintSpec`] has the real types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use cairn_shared::images::ImageSource;

/// What runs inside, which decides readiness checks and per-app conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    Jupyter,
    Rstudio,
    Http,
}

impl AppKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jupyter" => Some(AppKind::Jupyter),
            "rstudio" => Some(AppKind::Rstudio),
            "http" => Some(AppKind::Http),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Jupyter => "jupyter",
            AppKind::Rstudio => "rstudio",
            AppKind::Http => "http",
        }
    }
}

impl std::fmt::Display for AppKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pool, or one blueprint, prefers to place instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fill the busiest host that fits, so idle hosts can be removed.
    #[default]
    Binpack,
    /// Use the emptiest host, so one host's failure touches few users.
    Spread,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A blueprint as submitted (`POST /api/v1/blueprints`, `PUT /api/v1/blueprints/{name}`):
/// everything optional, checked by the controller field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueprintInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    /// `jupyter`, `rstudio` or `http`.
    pub app: Option<String>,
    pub app_port: Option<i64>,
    pub memory_mib: Option<i64>,
    pub cpus: Option<f64>,
    pub max_lifetime_secs: Option<i64>,
    pub max_instances_per_user: Option<i64>,
    /// Place in the launch queue, -100 to 100 (default 0): higher goes first.
    #[serde(default)]
    pub priority: Option<i64>,
    pub placement: Option<BTreeMap<String, String>>,
    /// `binpack` or `spread`; the pool's choice when absent.
    #[serde(default)]
    pub strategy: Option<String>,
    /// `registry` (default: resolve the tag to a digest and pull it) or `never` (the
    /// image is already on every host, like Kubernetes' `imagePullPolicy: Never`).
    #[serde(default)]
    pub pull: Option<String>,
    /// Which hosts hold the image before anyone launches: `"all"` (default),
    /// `"none"`, or a number of hosts the scheduler picks.
    #[serde(default)]
    pub prepull: Option<PrepullInput>,
    /// Dataset versions mounted read-only into every instance, e.g.
    /// `[{ name = "course-data", version = "latest", path = "/data/course" }]`.
    #[serde(default)]
    pub datasets: Option<Vec<DatasetInput>>,
    /// The user's persistent files, e.g. `{ path = "/home/jovyan/work" }`: each
    /// user (or each named volume a launch picks) gets a volume restored there at
    /// launch and saved while the instance runs and when it stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeInput>,
    /// The group that owns it (default: `everyone`, every account). Its managers
    /// may edit it, and its members launch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Credits an hour of running costs (default 1, 0 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Seconds without a request or a WebSocket message after which an instance
    /// is stopped (default: the group's; 0 never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<i64>,
    pub enabled: Option<bool>,
}

/// A blueprint's persistent mount as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeInput {
    /// Absolute path inside the container.
    pub path: Option<String>,
    /// Minutes between checkpoints while an instance runs (default 5; fractions
    /// from 0.1; 0 saves only when it stops).
    #[serde(default)]
    pub checkpoint_minutes: Option<f64>,
    /// `UID:GID` that owns the files inside the container (default: the image's
    /// numeric user, root when it has none).
    #[serde(default)]
    pub owner: Option<String>,
}

/// A blueprint's persistent mount.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct BlueprintVolume {
    /// Absolute path inside the container.
    pub path: String,
    /// Seconds between checkpoints (0: only at stop).
    pub checkpoint_secs: u32,
    /// `(UID, GID)` of the files; `None` takes the image's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<(u32, u32)>,
}

/// One dataset mount as written: checked field by field like the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetInput {
    pub name: Option<String>,
    /// `"latest"` (default: the newest version when an instance is launched) or a
    /// version number from 1.
    #[serde(default)]
    pub version: Option<DatasetVersionInput>,
    /// Absolute path inside the container, e.g. `/data/course`.
    pub path: Option<String>,
}

/// A dataset version as written: `"latest"`, a number, or a number in a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DatasetVersionInput {
    Number(i64),
    Word(String),
}

/// A dataset a blueprint's instances mount, read-only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct BlueprintDataset {
    pub name: String,
    /// The pinned version; absent means the latest version at each launch (a
    /// running instance keeps the version it started with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Absolute path inside the container.
    pub path: String,
}

impl BlueprintDataset {
    /// `NAME@VERSION` or `NAME@latest`.
    pub fn reference(&self) -> String {
        match self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => format!("{}@latest", self.name),
        }
    }
}

impl std::fmt::Display for BlueprintDataset {
    /// `NAME@VERSION → PATH`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} \u{2192} {}", self.reference(), self.path)
    }
}

/// `prepull` as written: a word or a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PrepullInput {
    Word(String),
    Hosts(i64),
}

/// How a blueprint's image reaches hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Resolve the tag to a digest when saved (or an uploaded image by its tag);
    /// pre-pull and pull on demand.
    #[default]
    Registry,
    /// Use the image as it is on each host; never pulled or pre-pulled.
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Registry => "registry",
            PullPolicy::Never => "never",
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which hosts hold a blueprint's image ahead of launches: `"all"`, `"none"` or
/// `{"hosts": N}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Prepull {
    /// Every host of the pool.
    #[default]
    All,
    /// None: pulled at the first launch on each host.
    None,
    /// This many hosts, picked by the scheduler.
    Hosts(u32),
}

impl std::fmt::Display for Prepull {
    /// As a blueprint file writes it: `all`, `none`, or the number of hosts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepull::All => f.write_str("all"),
            Prepull::None => f.write_str("none"),
            Prepull::Hosts(n) => write!(f, "{n}"),
        }
    }
}

/// A blueprint image as the controller resolved it when the blueprint was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResolvedImage {
    /// What instances run: `REGISTRY/REPO@sha256:…`, or `sha256:…` for an uploaded
    /// image, or the name as written for `pull = never`.
    pub reference: String,
    pub source: ImageSource,
    pub resolved_ms: u64,
}

/// A valid blueprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlueprintSpec {
    pub name: String,
    pub description: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub app: AppKind,
    pub app_port: u16,
    pub memory_mib: u64,
    pub cpus: f64,
    pub max_lifetime_secs: u64,
    pub max_instances_per_user: u32,
    /// Place in the launch queue, -100 to 100: a waiting launch of a higher priority
    /// is placed before older ones of a lower priority. It never preempts: running
    /// instances are not stopped to make room. 0 in records older than priorities.
    #[serde(default)]
    pub priority: i8,
    /// Labels a host must carry to run this blueprint, e.g. `gpu = "true"`.
    pub placement: BTreeMap<String, String>,
    /// Overrides the pool's placement strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub pull: PullPolicy,
    #[serde(default)]
    pub prepull: Prepull,
    /// Datasets mounted read-only into instances; empty in records older than
    /// datasets.
    #[serde(default)]
    pub datasets: Vec<BlueprintDataset>,
    /// The users' persistent files; `None` keeps nothing past an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<BlueprintVolume>,
    /// Set by the controller when the blueprint is saved (or refreshed); `None` only
    /// before resolution, or in records older than image resolution.
    #[serde(default)]
    pub resolved: Option<ResolvedImage>,
    /// The owning group; `None` is the default group, `everyone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Credits an hour of running costs.
    #[serde(default = "default_cost")]
    pub cost: f64,
    /// Idle seconds before an instance is stopped; `None` takes the group's, 0
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    pub enabled: bool,
}

fn default_cost() -> f64 {
    1.0
}

impl BlueprintSpec {
    /// The group that owns it.
    pub fn group(&self) -> &str {
        self.group
            .as_deref()
            .unwrap_or(crate::groups::DEFAULT_GROUP)
    }

    /// The image reference instances of this spec run.
    pub fn run_image(&self) -> &str {
        self.resolved
            .as_ref()
            .map(|r| r.reference.as_str())
            .unwrap_or(&self.image)
    }

    /// Where hosts get the image from.
    pub fn image_source(&self) -> ImageSource {
        match (&self.resolved, self.pull) {
            (Some(r), _) => r.source.clone(),
            (None, PullPolicy::Never) => ImageSource::Host,
            // Unresolved records from before resolution existed: Docker pulls by tag.
            (None, PullPolicy::Registry) => ImageSource::Registry,
        }
    }
}

/// The current state of a blueprint (`GET /api/v1/blueprints[/NAME]`): its spec's
/// fields beside the revision and times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlueprintRecord {
    pub revision: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(flatten)]
    pub spec: BlueprintSpec,
}

/// One saved revision (`GET /api/v1/blueprints/NAME/revisions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Revision {
    pub revision: u32,
    pub saved_ms: u64,
    pub spec: BlueprintSpec,
}

/// The answer to `POST /api/v1/blueprints/{name}/refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Refreshed {
    /// Whether the image now resolves to something else (and a new revision was
    /// saved).
    pub changed: bool,
    pub blueprint: BlueprintRecord,
}
