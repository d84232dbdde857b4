//! Image garbage collection: keeps Docker's data root from filling up with images
//! nobody runs any more.
//!
//! When the file system holding Docker's data root is more used than the high-water
//! mark (`[images] gc_high_water_percent`, 85 by default), images that no container
//! uses and that this host is not asked to keep are removed, least recently used
//! first, until usage is under the low-water mark (`gc_low_water_percent`, 80).
//!
//! * [`plan`] — the pure planner: disk space, images, the references in use and the
//!   desired references → ordered removals.
//! * [`UsageLog`] — when each image last had a running container. Docker does not
//!   record it, so the agent keeps it in `STATE_DIR/image-usage.toml`.
//! * [`GcHandle`] — how the rest of the agent feeds in the desired set
//!   ([`GcHandle::set_desired`]) and reports containers created from an image
//!   ([`GcHandle::note_used`]); [`DesiredImagesFeed`] feeds it from the controller's
//!   desired updates.
//! * [`ImageGc`] — the periodic loop, behind [`GcBackend`] so it is tested without
//!   Docker; [`DockerGc`] is the real backend.
//!
//! Every decision is logged, for operators and for the end-to-end test that reads
//! the agent's log:
//! ```text
//! INFO  image gc: removing image=sha256:… tags=REPO:TAG,… size=BYTES last_used=MS|never
//! DEBUG image gc: keeping image=sha256:… tags=… reason=in-use|desired
//! INFO  image gc: done removed=N freed=BYTES usage_before=X% usage_after=Y%
//! ```
//! `tags` lists an untagged image's repo digests instead, or `<none>`; `last_used`
//! is milliseconds since the Unix epoch. A `removing` line whose removal then fails
//! is followed by an `image gc: not removed` line.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use cairn_shared::fsutil;
use cairn_shared::ids::InstanceId;
use cairn_shared::resources::DiskUsage;
use cairn_shared::workload::{DesiredUpdate, InstanceReport};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::runtime::Workloads;
use crate::state::{ImagesSettings, StateDir};

/// The file in the state directory that remembers when images were last used.
pub const USAGE_FILE: &str = "image-usage.toml";
/// How long after start the first pass runs (or the interval, if shorter): long
/// enough not to compete with adopting containers and the first connection, short
/// enough that a host started with a full disk is relieved soon.
pub const FIRST_PASS_DELAY: Duration = Duration::from_secs(10);
/// Most plan-and-remove rounds in one pass. Freed bytes are only an estimate (see
/// [`plan`]), so after each round the disk is read again and, if usage is still not
/// under the low-water mark, the next candidates are planned; a few rounds are
/// enough, the next pass continues.
const MAX_ROUNDS: usize = 4;
/// Notes of containers created since the last pass, kept at most; more than this
/// between two passes means the oldest are dropped, costing only precision.
const MAX_NOTES: usize = 1024;
/// Longest wait for a listing or an inspection.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one image removal: deleting the layers of a big image on a
/// slow disk takes a while.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Desired-set source: the controller's pre-pull set for this host.
pub const SOURCE_PREPULL: &str = "prepull";
/// Desired-set source: the images of the instances this host should run.
pub const SOURCE_INSTANCES: &str = "instances";

/// Why a pass, or one removal, failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The engine did not answer, or answered with an error.
    #[error("Docker Engine: {0}")]
    Docker(String),
    /// Docker refused to remove the image: a container started using it since the
    /// listing, or another image is built on it.
    #[error("Docker refused: {0}")]
    Conflict(String),
    /// The image went away before it was removed (someone else removed it).
    #[error("the image no longer exists")]
    Gone,
    /// The space of the data root's file system is unknown.
    #[error("disk usage of Docker's data root: {0}")]
    Disk(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------
// The planner
// ---------------------------------------------------------------------------------

/// The water marks, in percent of the data root's file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A run starts when usage is above this.
    pub high_water_percent: f64,
    /// ... and removes images until usage is under this.
    pub low_water_percent: f64,
}

impl Thresholds {
    pub fn from_settings(s: &ImagesSettings) -> Self {
        Thresholds {
            high_water_percent: s.gc_high_water_percent,
            low_water_percent: s.gc_low_water_percent,
        }
    }
}

/// One image as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcImage {
    /// `sha256:…`, the content-addressable id.
    pub id: String,
    /// `REPO:TAG` names.
    pub repo_tags: Vec<String>,
    /// `REPO@sha256:…` manifest digests.
    pub repo_digests: Vec<String>,
    /// Docker's size of the image, including layers shared with other images.
    pub size_bytes: u64,
    /// When the image was built (Unix seconds); for `docker import`, when imported.
    pub created_unix: i64,
    /// When a container last ran from it (ms since the epoch); `None` if never seen.
    pub last_used_ms: Option<u64>,
}

/// Why an image is never removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeepReason {
    /// A container, running or stopped, was created from it.
    InUse,
    /// In the pre-pull set, or the image of an instance this host should run.
    Desired,
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One word each, so the log field stays easy to match.
        f.write_str(match self {
            KeepReason::InUse => "in-use",
            KeepReason::Desired => "desired",
        })
    }
}

/// What one planning round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct GcPlan<'a> {
    /// Usage of the data root's file system now, in percent.
    pub usage_percent: f64,
    /// Usage is above the high-water mark. When false, nothing else is filled in.
    pub triggered: bool,
    /// Images to remove, in order.
    pub remove: Vec<&'a GcImage>,
    /// Images that must stay, and why.
    pub kept: Vec<(&'a GcImage, KeepReason)>,
    /// Sum of the sizes of `remove`: an upper bound of what is freed.
    pub freed_bytes: u64,
    /// Estimated usage after the removals, in percent.
    pub projected_percent: f64,
    /// Every candidate is in `remove` and projected usage is still not under the
    /// low-water mark: the rest is held by images in use or desired.
    pub exhausted: bool,
}

/// Usage in percent; 0 for a file system that reports no size (nothing to judge).
pub fn usage_percent(disk: DiskUsage) -> f64 {
    if disk.total_bytes == 0 {
        return 0.0;
    }
    let used = disk.total_bytes.saturating_sub(disk.free_bytes);
    used as f64 * 100.0 / disk.total_bytes as f64
}

/// Decides which images to remove. Pure: no I/O, no clock.
///
/// Nothing is removed unless usage is above `high_water_percent`. Then candidates —
/// images matched by no reference in `in_use` (the images of all containers, running
/// or stopped, Cairn's or not) nor in `desired` — are taken in removal order until
/// projected usage is under `low_water_percent`.
///
/// Removal order is least recently used first, with images *never* seen used before
/// all used ones, oldest `created` first, and the id as the last tie-break so the
/// order is deterministic. Why never-used first: an image no container has run from
/// since the agent began tracking shows no demand at all on this host (a pre-pull
/// dropped from the set, a leftover of an operator), while a recently used image is
/// the best guess at the next launch, which the scheduler sends here precisely
/// because the image is cached. Among never-used images creation time is the only
/// age there is.
///
/// Docker's image size includes layers shared with other images, so removing an
/// image may free less than its size: `freed_bytes` and `projected_percent` are
/// estimates (upper and lower bounds). The executor reads the disk again after the
/// removals and plans again if usage is still not under the low-water mark.
pub fn plan<'a>(
    disk: DiskUsage,
    images: &'a [GcImage],
    in_use: &BTreeSet<String>,
    desired: &BTreeSet<String>,
    t: Thresholds,
) -> GcPlan<'a> {
    let usage = usage_percent(disk);
    let mut out = GcPlan {
        usage_percent: usage,
        triggered: false,
        remove: vec![],
        kept: vec![],
        freed_bytes: 0,
        projected_percent: usage,
        exhausted: false,
    };
    if disk.total_bytes == 0 || usage <= t.high_water_percent {
        return out;
    }
    out.triggered = true;

    let mut candidates = vec![];
    for img in images {
        if in_use.iter().any(|r| reference_matches(img, r)) {
            out.kept.push((img, KeepReason::InUse));
        } else if desired.iter().any(|r| reference_matches(img, r)) {
            out.kept.push((img, KeepReason::Desired));
        } else {
            candidates.push(img);
        }
    }
    candidates.sort_by(|a, b| {
        (
            a.last_used_ms.is_some(),
            a.last_used_ms,
            a.created_unix,
            &a.id,
        )
            .cmp(&(
                b.last_used_ms.is_some(),
                b.last_used_ms,
                b.created_unix,
                &b.id,
            ))
    });

    let total = disk.total_bytes as f64;
    let target = total * t.low_water_percent / 100.0;
    let mut used = disk.total_bytes.saturating_sub(disk.free_bytes);
    for img in candidates {
        if (used as f64) < target {
            break;
        }
        used = used.saturating_sub(img.size_bytes);
        out.freed_bytes = out.freed_bytes.saturating_add(img.size_bytes);
        out.remove.push(img);
    }
    out.projected_percent = used as f64 * 100.0 / total;
    out.exhausted = (used as f64) >= target;
    out
}

/// Whether `reference` names `img`: by id (`sha256:…`, or a prefix of at least 12
/// hex digits as Docker accepts), by repo digest (`REPO@sha256:…`) or by tag
/// (`REPO[:TAG]`, `latest` when omitted). Docker Hub names are compared in their
/// short form, so `docker.io/library/busybox` is `busybox`.
///
/// A false match only keeps an image that could have gone, so where Docker's
/// grammar is ambiguous (a bare hex string may be a name or an id) both readings
/// count.
pub fn reference_matches(img: &GcImage, reference: &str) -> bool {
    let r = reference.trim();
    if r.is_empty() {
        return false;
    }
    if id_matches(&img.id, r) {
        return true;
    }
    if let Some((name, digest)) = r.split_once('@') {
        // `REPO:TAG@sha256:…` is pinned by the digest; the tag is decoration.
        let name = familiar(split_tag(name).0);
        return img.repo_digests.iter().any(|d| {
            d.split_once('@')
                .is_some_and(|(n, dg)| dg == digest && familiar(n) == name)
        });
    }
    let (name, tag) = split_tag(r);
    let (name, tag) = (familiar(name), tag.unwrap_or("latest"));
    img.repo_tags.iter().any(|t| {
        let (n, tg) = split_tag(t);
        tg.unwrap_or("latest") == tag && familiar(n) == name
    })
}

fn id_matches(id: &str, r: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let bare_id = id.strip_prefix("sha256:").unwrap_or(id);
    let bare_ref = match r.strip_prefix("sha256:") {
        Some(rest) => rest,
        None if r.len() >= 12 => r,
        None => return false,
    };
    hex(bare_ref)
        && (bare_ref == bare_id || (bare_ref.len() >= 12 && bare_id.starts_with(bare_ref)))
}

/// `REPO[:TAG]` split; the tag is after the last ':' that follows the last '/', so
/// a registry port (`127.0.0.1:5000/x`) is not a tag.
fn split_tag(name: &str) -> (&str, Option<&str>) {
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    }
}

/// A repository name in Docker's short ("familiar") form.
fn familiar(name: &str) -> &str {
    let rest = match name.split_once('/') {
        Some(("docker.io" | "index.docker.io", rest)) => rest,
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            return name
        }
        _ => name,
    };
    match rest.strip_prefix("library/") {
        Some(short) if !short.contains('/') => short,
        _ => rest,
    }
}

// ---------------------------------------------------------------------------------
// Last-used tracking
// ---------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    /// Image id → when a container last ran from it, ms since the epoch.
    #[serde(default)]
    last_used_ms: BTreeMap<String, u64>,
    /// Ids of the images this agent pulled or loaded itself: the only ones it may
    /// remove. An image the operator put on the host (a `pull = "never"` blueprint's,
    /// a base image of their own) cannot be fetched again by Cairn, so removing it
    /// could break a blueprint for good.
    #[serde(default)]
    brought: BTreeSet<String>,
}

/// When each image last had a container, in `STATE_DIR/image-usage.toml`.
///
/// A cache: a missing or unreadable file only means every image looks never used
/// until containers are seen again. Entries of images that no longer exist are
/// dropped every pass, so the file is as small as the image list.
#[derive(Debug)]
pub struct UsageLog {
    path: PathBuf,
    entries: BTreeMap<String, u64>,
    brought: BTreeSet<String>,
    dirty: bool,
}

impl UsageLog {
    /// Reads the log of `dir`; a missing file is an empty log, a damaged one is
    /// logged and replaced.
    pub fn load(dir: &StateDir) -> Self {
        let path = dir.root().join(USAGE_FILE);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => match toml::from_str::<UsageFile>(&text) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "image gc: the image usage file is damaged; starting afresh");
                    UsageFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsageFile::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "image gc: cannot read the image usage file; starting afresh");
                UsageFile::default()
            }
        };
        UsageLog {
            path,
            entries: file.last_used_ms,
            brought: file.brought,
            dirty: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_used(&self, image_id: &str) -> Option<u64> {
        self.entries.get(image_id).copied()
    }

    /// Records a use of `image_id` at `at_ms`; an older time than the recorded one
    /// is ignored (notes can arrive out of order).
    pub fn touch(&mut self, image_id: &str, at_ms: u64) {
        let e = self.entries.entry(image_id.to_owned()).or_insert(0);
        if at_ms > *e {
            *e = at_ms;
            self.dirty = true;
        }
    }

    /// Records that this agent pulled or loaded image `image_id`.
    pub fn mark_brought(&mut self, image_id: &str) {
        self.dirty |= self.brought.insert(image_id.to_owned());
    }

    /// Whether this agent brought image `image_id` (and so may remove it).
    pub fn brought(&self, image_id: &str) -> bool {
        self.brought.contains(image_id)
    }

    /// Drops entries of images for which `exists` is false.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        let before = self.entries.len() + self.brought.len();
        self.entries.retain(|id, _| exists(id));
        self.brought.retain(|id| exists(id));
        self.dirty |= self.entries.len() + self.brought.len() != before;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the log if it changed, atomically (temporary file, fsync, rename), off
    /// the async threads: the agent runs on one thread and fsync may be slow.
    pub async fn save(&mut self) -> Result<(), GcError> {
        if !self.dirty {
            return Ok(());
        }
        let file = UsageFile {
            last_used_ms: self.entries.clone(),
            brought: self.brought.clone(),
        };
        let body = toml::to_string(&file).map_err(|e| GcError::Io {
            context: format!("encoding {}", self.path.display()),
            source: std::io::Error::other(e),
        })?;
        let text = format!(
            "# Written by cairn-agent: when a container last ran from each image (ms since the\n# Unix epoch), for image garbage collection. Safe to delete.\n{body}"
        );
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, text.as_bytes(), 0o600))
            .await
            .map_err(|e| GcError::Io {
                context: format!("writing {}", self.path.display()),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| GcError::Io {
                context: format!("writing {}", self.path.display()),
                source,
            })?;
        self.dirty = false;
        Ok(())
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// The handle: desired set in, container creations in
// ---------------------------------------------------------------------------------

struct Shared {
    /// Desired references by source; replaced whole per source.
    desired: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Becomes true with the first desired set.
    known: watch::Sender<bool>,
    /// `(image reference or id, ms)` of containers created since the last pass.
    notes: Mutex<Vec<(String, u64)>>,
    /// References pulled or loaded by this agent since the last pass.
    brought: Mutex<Vec<String>>,
}

/// The collector's inputs from the rest of the agent; cheap to clone.
///
/// * The desired set: every component that wants images kept sets its own source
///   with [`GcHandle::set_desired`] — [`SOURCE_PREPULL`] for the controller's
///   pre-pull set, [`SOURCE_INSTANCES`] for the images of desired instances — and
///   replaces it whole on every change. The collector keeps the union. **Until the
///   first set arrives nothing is removed**: right after a start the agent does not
///   yet know which images the controller wants kept, like the supervisor, which
///   removes no container before the first desired state.
/// * Container creations: the runtime calls [`GcHandle::note_used`] with the image
///   reference (or id) when it creates a container, so an image whose container ran
///   only between two passes still counts as used.
#[derive(Clone)]
pub struct GcHandle(Arc<Shared>);

impl std::fmt::Debug for GcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcHandle").finish_non_exhaustive()
    }
}

impl Default for GcHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl GcHandle {
    pub fn new() -> Self {
        GcHandle(Arc::new(Shared {
            desired: Mutex::new(BTreeMap::new()),
            known: watch::Sender::new(false),
            notes: Mutex::new(vec![]),
            brought: Mutex::new(vec![]),
        }))
    }

    /// Replaces the references `source` wants kept: image ids (`sha256:…`), digest
    /// references (`REPO@sha256:…`) or names (`REPO[:TAG]`).
    pub fn set_desired<I, S>(&self, source: &str, references: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: BTreeSet<String> = references.into_iter().map(Into::into).collect();
        self.set_sources([(source, set)]);
    }

    /// Replaces several sources at once, so a pass never sees one updated without
    /// the other.
    fn set_sources<'a>(&self, sets: impl IntoIterator<Item = (&'a str, BTreeSet<String>)>) {
        {
            let mut all = self.0.desired.lock().unwrap_or_else(|p| p.into_inner());
            for (source, set) in sets {
                all.insert(source.to_owned(), set);
            }
        }
        self.0.known.send_replace(true);
    }

    /// The union of every source's references; `None` until one has been set.
    pub fn desired(&self) -> Option<BTreeSet<String>> {
        if !*self.0.known.borrow() {
            return None;
        }
        let all = self.0.desired.lock().unwrap_or_else(|p| p.into_inner());
        Some(all.values().flatten().cloned().collect())
    }

    /// Records that a container was just created from `image` (a reference or id).
    pub fn note_used(&self, image: &str) {
        self.note_used_at(image, now_ms());
    }

    fn note_used_at(&self, image: &str, at_ms: u64) {
        let mut notes = self.0.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() >= MAX_NOTES {
            notes.remove(0);
        }
        notes.push((image.to_owned(), at_ms));
    }

    /// Records that this agent just pulled or loaded `reference`: from then on the
    /// image is one the collector may remove when nothing uses or wants it.
    pub fn note_brought(&self, reference: &str) {
        let mut b = self.0.brought.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_NOTES {
            b.remove(0);
        }
        b.push(reference.to_owned());
    }

    fn take_brought(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.brought.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_notes(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.0.notes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn is_desired(&self, img: &GcImage) -> bool {
        let all = self.0.desired.lock().unwrap_or_else(|p| p.into_inner());
        all.values().flatten().any(|r| reference_matches(img, r))
    }
}

/// Wraps the supervisor as the link sees it, and feeds the [`GcHandle`] the images
/// the controller wants: the pre-pull set ([`SOURCE_PREPULL`]) and the images of the
/// desired instances ([`SOURCE_INSTANCES`]). Updates pass through unchanged; only
/// updates the supervisor accepted are followed, so both stay on the same version.
pub struct DesiredImagesFeed {
    inner: Arc<dyn Workloads>,
    gc: GcHandle,
    instances: Mutex<BTreeMap<InstanceId, String>>,
}

impl std::fmt::Debug for DesiredImagesFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredImagesFeed").finish_non_exhaustive()
    }
}

impl DesiredImagesFeed {
    pub fn new(inner: Arc<dyn Workloads>, gc: GcHandle) -> Self {
        DesiredImagesFeed {
            inner,
            gc,
            instances: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Workloads for DesiredImagesFeed {
    fn apply(&self, update: DesiredUpdate) -> bool {
        let full = update.full;
        let remove = update.remove.clone();
        let upsert: Vec<(InstanceId, String)> = update
            .upsert
            .iter()
            .map(|d| (d.id.clone(), d.image.clone()))
            .collect();
        let prepull: Option<Vec<String>> = update
            .images
            .as_ref()
            .map(|i| i.prepull.iter().map(|s| s.reference.clone()).collect());
        if !self.inner.apply(update) {
            return false;
        }
        let images: BTreeSet<String> = {
            let mut map = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            if full {
                map.clear();
            }
            for id in &remove {
                map.remove(id);
            }
            map.extend(upsert);
            map.values().cloned().collect()
        };
        // A full update always carries the pre-pull set, so the first time the set
        // counts as known it holds both sources.
        let mut sets = vec![(SOURCE_INSTANCES, images)];
        if let Some(prepull) = prepull {
            sets.push((SOURCE_PREPULL, prepull.into_iter().collect()));
        }
        self.gc.set_sources(sets);
        true
    }

    fn snapshot(&self) -> Vec<InstanceReport> {
        self.inner.snapshot()
    }

    fn drain(&self) -> Vec<InstanceReport> {
        self.inner.drain()
    }

    fn changed(&self) -> &Notify {
        self.inner.changed()
    }

    fn isolation(&self) -> cairn_shared::resources::Isolation {
        self.inner.isolation()
    }

    fn logs(&self, instance: InstanceId, tail: u32) -> BoxFuture<'_, Result<String, String>> {
        self.inner.logs(instance, tail)
    }

    fn app_address(&self, instance: &InstanceId) -> Option<std::net::SocketAddr> {
        self.inner.app_address(instance)
    }

    fn images(&self) -> Option<Arc<crate::images::pull::ImageManager>> {
        self.inner.images()
    }
}

// ---------------------------------------------------------------------------------
// The executor
// ---------------------------------------------------------------------------------

/// One container as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcContainer {
    /// The id of the image it was created from.
    pub image_id: Option<String>,
    /// The reference it was created with; used only when the id is missing.
    pub image: Option<String>,
    /// Running (or paused, or restarting) now.
    pub running: bool,
}

/// What the collector needs from the engine; Docker in production
/// ([`DockerGc`]), a fake in tests.
pub trait GcBackend: Send + Sync + 'static {
    /// Space of the file system that holds the engine's data root.
    fn disk(&self) -> impl Future<Output = Result<DiskUsage, GcError>> + Send;
    /// Top-level images (not intermediate layers), `last_used_ms` left `None`.
    fn images(&self) -> impl Future<Output = Result<Vec<GcImage>, GcError>> + Send;
    /// Every container, running or not.
    fn containers(&self) -> impl Future<Output = Result<Vec<GcContainer>, GcError>> + Send;
    /// Removes the image without force: [`GcError::Conflict`] if a container uses
    /// it, [`GcError::Gone`] if it is not there.
    fn remove(&self, image: &GcImage) -> impl Future<Output = Result<(), GcError>> + Send;
}

/// What one pass did; for tests and callers that want more than the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// Nothing was considered: the desired set is not known yet.
    pub waiting_for_desired: bool,
    /// Usage when the pass began (`None` when it stopped before reading the disk).
    pub usage_before: Option<f64>,
    /// Usage after the removals.
    pub usage_after: Option<f64>,
    /// Ids removed, in order.
    pub removed: Vec<String>,
    /// Sum of the removed images' sizes (an estimate of the bytes freed).
    pub freed_bytes: u64,
}

/// The periodic collector.
pub struct ImageGc<B> {
    backend: B,
    handle: GcHandle,
    usage: UsageLog,
    thresholds: Thresholds,
    interval: Duration,
    clock: fn() -> u64,
    /// The last pass's error, so a lasting failure is warned about once.
    last_error: Option<String>,
    /// The last pass could not get under the low-water mark; warned about once.
    stuck: bool,
    /// The "waiting for the desired set" line was logged.
    waiting_logged: bool,
}

impl<B> std::fmt::Debug for ImageGc<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageGc")
            .field("thresholds", &self.thresholds)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A percentage for the log: `91.3%`, or `unknown` for NaN.
struct Percent(f64);

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_nan() {
            f.write_str("unknown")
        } else {
            write!(f, "{:.1}%", self.0)
        }
    }
}

/// A last-used time for the log: ms since the epoch, or `never`.
struct LastUsed(Option<u64>);

impl std::fmt::Display for LastUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms}"),
            None => f.write_str("never"),
        }
    }
}

/// An image's names for the log, comma-separated, without spaces.
fn names(img: &GcImage) -> String {
    let list = if img.repo_tags.is_empty() {
        &img.repo_digests
    } else {
        &img.repo_tags
    };
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

impl<B: GcBackend> ImageGc<B> {
    /// A collector with the thresholds and interval of `settings` (validated when
    /// `agent.toml` is loaded) and the usage log of `state_dir`.
    pub fn new(
        backend: B,
        handle: GcHandle,
        state_dir: &StateDir,
        settings: &ImagesSettings,
    ) -> Self {
        ImageGc {
            backend,
            handle,
            usage: UsageLog::load(state_dir),
            thresholds: Thresholds::from_settings(settings),
            interval: Duration::from_secs(settings.gc_interval_secs.max(1)),
            clock: now_ms,
            last_error: None,
            stuck: false,
            waiting_logged: false,
        }
    }

    /// Passes every interval until `shutdown`; the first one shortly after start,
    /// and one as soon as the first desired set arrives if a pass was waiting for it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            high_water = %Percent(self.thresholds.high_water_percent),
            low_water = %Percent(self.thresholds.low_water_percent),
            interval_secs = self.interval.as_secs(),
            usage_file = %self.usage.path().display(),
            "image gc: started"
        );
        let mut known = self.handle.0.known.subscribe();
        let mut delay = FIRST_PASS_DELAY.min(self.interval);
        let mut waiting = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                r = known.changed(), if waiting => {
                    if r.is_err() {
                        // Cannot happen while `self` holds the handle; fall back to the
                        // interval rather than spin.
                        waiting = false;
                        continue;
                    }
                }
            }
            delay = self.interval;
            match self.pass().await {
                Ok(report) => {
                    waiting = report.waiting_for_desired;
                    if self.last_error.take().is_some() {
                        tracing::info!("image gc: working again");
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(error = %text, "image gc: pass failed again");
                    } else {
                        tracing::warn!(error = %text, "image gc: pass failed; trying again next interval");
                    }
                    self.last_error = Some(text);
                }
            }
        }
    }

    /// One pass: records which images are in use, then, if the desired set is
    /// known and the disk is above the high-water mark, removes images.
    pub async fn pass(&mut self) -> Result<PassReport, GcError> {
        let mut report = PassReport::default();
        let mut images = self.backend.images().await?;
        let mut containers = self.backend.containers().await?;
        self.track(&images, &containers);
        if let Err(e) = self.usage.save().await {
            // Only precision is lost; collection goes on with what is in memory.
            tracing::warn!(error = %e, "image gc: cannot save image usage");
        }
        let Some(mut desired) = self.handle.desired() else {
            if !self.waiting_logged {
                tracing::info!("image gc: waiting for the controller's desired images before removing anything");
                self.waiting_logged = true;
            }
            report.waiting_for_desired = true;
            return Ok(report);
        };

        let t = self.thresholds;
        let mut disk = self.backend.disk().await?;
        let before = usage_percent(disk);
        report.usage_before = Some(before);
        let mut thresholds = t;
        let mut exhausted = false;
        let mut in_use_count = 0;
        let mut desired_count = 0;
        // Images Docker refused to remove this pass; a container holds them, so they
        // count as in use in later rounds rather than being tried again.
        let mut refused: BTreeSet<String> = BTreeSet::new();
        let mut told: BTreeSet<(String, KeepReason)> = BTreeSet::new();
        let mut disk_known = true;
        for round in 0..MAX_ROUNDS {
            self.fill_last_used(&mut images);
            let mut in_use = in_use_references(&containers);
            in_use.extend(refused.iter().cloned());
            // Only images this agent brought are candidates; see `UsageFile::brought`.
            let ours: Vec<GcImage> = images
                .iter()
                .filter(|i| self.usage.brought(&i.id))
                .cloned()
                .collect();
            let p = plan(disk, &ours, &in_use, &desired, thresholds);
            if !p.triggered {
                if round == 0 {
                    tracing::debug!(usage = %Percent(p.usage_percent), high_water = %Percent(t.high_water_percent), "image gc: below the high-water mark");
                }
                break;
            }
            if round == 0 {
                tracing::info!(usage = %Percent(p.usage_percent), high_water = %Percent(t.high_water_percent), low_water = %Percent(t.low_water_percent), candidates = p.remove.len(), "image gc: above the high-water mark");
            }
            for (img, reason) in &p.kept {
                // Later rounds plan over the same images: say each decision once.
                if told.insert((img.id.clone(), *reason)) {
                    tracing::debug!(image = %img.id, tags = %names(img), reason = %reason, "image gc: keeping");
                }
            }
            in_use_count = p
                .kept
                .iter()
                .filter(|(_, r)| *r == KeepReason::InUse)
                .count();
            desired_count = p.kept.len() - in_use_count;
            exhausted = p.exhausted;
            let mut removed_this_round = 0;
            for img in &p.remove {
                // The desired set may have grown since it was read (a launch came
                // in): check once more right before removing.
                if self.handle.is_desired(img) {
                    tracing::debug!(image = %img.id, tags = %names(img), reason = %KeepReason::Desired, "image gc: keeping");
                    exhausted = false;
                    continue;
                }
                tracing::info!(
                    image = %img.id,
                    tags = %names(img),
                    size = img.size_bytes,
                    last_used = %LastUsed(img.last_used_ms),
                    "image gc: removing"
                );
                match self.backend.remove(img).await {
                    Ok(()) => {
                        removed_this_round += 1;
                        report.removed.push(img.id.clone());
                        report.freed_bytes = report.freed_bytes.saturating_add(img.size_bytes);
                    }
                    Err(GcError::Gone) => {
                        tracing::info!(image = %img.id, reason = %"gone", "image gc: not removed");
                    }
                    Err(GcError::Conflict(msg)) => {
                        // Became used between listing and removal: exactly what the
                        // rule protects, not a failure.
                        tracing::info!(image = %img.id, reason = %"conflict", error = %msg, "image gc: not removed");
                        refused.insert(img.id.clone());
                        exhausted = false;
                    }
                    Err(e) => {
                        tracing::warn!(image = %img.id, reason = %"error", error = %e, "image gc: not removed");
                        exhausted = false;
                    }
                }
            }
            // From here on a failure ends the run but not the pass: what was removed
            // still gets its summary.
            match self.backend.disk().await {
                Ok(d) => disk = d,
                Err(e) => {
                    tracing::warn!(error = %e, "image gc: cannot read the disk after removing images");
                    disk_known = false;
                    break;
                }
            }
            if removed_this_round == 0 || usage_percent(disk) < t.low_water_percent || exhausted {
                break;
            }
            // A run in progress continues down to the low-water mark.
            thresholds.high_water_percent = t.low_water_percent;
            match (self.backend.images().await, self.backend.containers().await) {
                (Ok(i), Ok(c)) => (images, containers) = (i, c),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "image gc: cannot list again; the next pass continues");
                    break;
                }
            }
            if let Some(d) = self.handle.desired() {
                desired = d;
            }
        }
        // NaN when unknown: printed as `unknown`, and compares false to every mark.
        let after = if disk_known {
            usage_percent(disk)
        } else {
            f64::NAN
        };
        report.usage_after = disk_known.then_some(after);
        let ids: BTreeSet<&str> = report.removed.iter().map(String::as_str).collect();
        self.usage.retain(|id| !ids.contains(id));
        if !report.removed.is_empty() {
            tracing::info!(
                removed = report.removed.len(),
                freed = report.freed_bytes,
                usage_before = %Percent(before),
                usage_after = %Percent(after),
                "image gc: done"
            );
            if let Err(e) = self.usage.save().await {
                tracing::warn!(error = %e, "image gc: cannot save image usage");
            }
        }
        let still_high = report
            .usage_before
            .is_some_and(|b| b > t.high_water_percent)
            && after >= t.low_water_percent;
        if still_high && !self.stuck {
            tracing::warn!(
                usage = %Percent(after),
                low_water = %Percent(t.low_water_percent),
                in_use = in_use_count,
                desired = desired_count,
                no_more_candidates = exhausted,
                "image gc: still not under the low-water mark; the rest is held by images in use or desired, or by other data"
            );
        }
        self.stuck = still_high;
        Ok(report)
    }

    /// Marks the images of running containers used now, applies notes of created
    /// containers, and forgets images that are gone.
    fn track(&mut self, images: &[GcImage], containers: &[GcContainer]) {
        let now = (self.clock)();
        let resolve = |reference: &str| -> Vec<&str> {
            images
                .iter()
                .filter(|i| reference_matches(i, reference))
                .map(|i| i.id.as_str())
                .collect()
        };
        for c in containers.iter().filter(|c| c.running) {
            match (&c.image_id, &c.image) {
                (Some(id), _) => self.usage.touch(id, now),
                (None, Some(r)) => {
                    for id in resolve(r) {
                        self.usage.touch(id, now);
                    }
                }
                (None, None) => {}
            }
        }
        for (reference, at) in self.handle.take_notes() {
            for id in resolve(&reference) {
                self.usage.touch(id, at);
            }
        }
        for reference in self.handle.take_brought() {
            for id in resolve(&reference) {
                self.usage.mark_brought(id);
            }
        }
        let live: BTreeSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.usage.retain(|id| live.contains(id));
    }

    fn fill_last_used(&self, images: &mut [GcImage]) {
        for img in images {
            img.last_used_ms = self.usage.last_used(&img.id);
        }
    }
}

/// The references that pin images: each container's image id, or the reference it
/// was created with when the engine did not say the id.
fn in_use_references(containers: &[GcContainer]) -> BTreeSet<String> {
    containers
        .iter()
        .filter_map(|c| c.image_id.clone().or_else(|| c.image.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------
// The Docker backend
// ---------------------------------------------------------------------------------

/// [`GcBackend`] on the Docker Engine the `docker` CLI would use. Connects on first
/// use, and again until it works.
#[derive(Debug, Default)]
pub struct DockerGc {
    client: tokio::sync::OnceCell<Docker>,
}

fn describe(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn bounded<T>(
    what: &str,
    limit: Duration,
    f: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, GcError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| GcError::Docker(format!("{what}: {}", describe(&e)))),
        Err(_) => Err(GcError::Docker(format!(
            "{what}: no answer within {} s",
            limit.as_secs()
        ))),
    }
}

/// How an image deletion ended.
enum Deleted {
    Yes,
    NotFound,
    Conflict(String),
}

impl DockerGc {
    pub fn new() -> Self {
        Self::default()
    }

    async fn docker(&self) -> Result<&Docker, GcError> {
        self.client
            .get_or_try_init(|| async {
                // Like the CLI, an empty DOCKER_HOST means unset; bollard would reject
                // it as a URI without a scheme.
                let docker = if std::env::var_os("DOCKER_HOST").is_some_and(|h| h.is_empty()) {
                    Docker::connect_with_local_defaults()
                } else {
                    Docker::connect_with_defaults()
                }
                .map_err(|e| GcError::Docker(format!("connecting: {}", describe(&e))))?;
                bounded(
                    "negotiating the API version",
                    CALL_TIMEOUT,
                    docker.negotiate_version(),
                )
                .await
            })
            .await
    }

    async fn delete(&self, name: &str) -> Result<Deleted, GcError> {
        let opts = RemoveImageOptionsBuilder::new()
            .force(false)
            .noprune(false)
            .build();
        let docker = self.docker().await?;
        match tokio::time::timeout(REMOVE_TIMEOUT, docker.remove_image(name, Some(opts), None))
            .await
        {
            Ok(Ok(_)) => Ok(Deleted::Yes),
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => Ok(Deleted::NotFound),
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            })) => Ok(Deleted::Conflict(message)),
            Ok(Err(e)) => Err(GcError::Docker(format!(
                "removing {name}: {}",
                describe(&e)
            ))),
            Err(_) => Err(GcError::Docker(format!(
                "removing {name}: no answer within {} s",
                REMOVE_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl GcBackend for DockerGc {
    async fn disk(&self) -> Result<DiskUsage, GcError> {
        let docker = self.docker().await?;
        let info = bounded("info", CALL_TIMEOUT, docker.info()).await?;
        let root = info
            .docker_root_dir
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                GcError::Disk("the engine does not say where its data root is".into())
            })?;
        tokio::task::spawn_blocking(move || {
            let real = match std::fs::canonicalize(&root) {
                Ok(p) => p,
                // An engine on another machine (DOCKER_HOST=tcp://…): its disk is not
                // ours to measure, and guessing would remove images for nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(GcError::Disk(format!(
                        "{root} does not exist on this machine; is the engine remote?"
                    )))
                }
                Err(_) => PathBuf::from(&root),
            };
            crate::facts::system::disk_usage_at(&real)
                .ok_or_else(|| GcError::Disk(format!("no mounted file system holds {root}")))
        })
        .await
        .map_err(|e| GcError::Disk(e.to_string()))?
    }

    async fn images(&self) -> Result<Vec<GcImage>, GcError> {
        let docker = self.docker().await?;
        let list = bounded(
            "listing images",
            CALL_TIMEOUT,
            docker.list_images(Some(ListImagesOptionsBuilder::new().all(false).build())),
        )
        .await?;
        // Old engines list untagged images as `<none>:<none>` / `<none>@<none>`.
        let real = |names: Vec<String>| -> Vec<String> {
            names
                .into_iter()
                .filter(|n| !n.starts_with("<none>"))
                .collect()
        };
        Ok(list
            .into_iter()
            .map(|i| GcImage {
                id: i.id,
                repo_tags: real(i.repo_tags),
                repo_digests: real(i.repo_digests),
                size_bytes: u64::try_from(i.size).unwrap_or(0),
                created_unix: i.created,
                last_used_ms: None,
            })
            .collect())
    }

    async fn containers(&self) -> Result<Vec<GcContainer>, GcError> {
        use bollard::models::ContainerSummaryStateEnum as S;
        let docker = self.docker().await?;
        let list = bounded(
            "listing containers",
            CALL_TIMEOUT,
            docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build())),
        )
        .await?;
        Ok(list
            .into_iter()
            .map(|c| GcContainer {
                image_id: c.image_id.filter(|i| !i.is_empty()),
                image: c.image.filter(|i| !i.is_empty()),
                running: matches!(c.state, Some(S::RUNNING | S::PAUSED | S::RESTARTING)),
            })
            .collect())
    }

    async fn remove(&self, image: &GcImage) -> Result<(), GcError> {
        match self.delete(&image.id).await? {
            Deleted::Yes => return Ok(()),
            Deleted::NotFound => return Err(GcError::Gone),
            // Docker removes by id without force only an image whose names all lie in
            // one repository with at most one tag; otherwise its names must go first.
            // Any other conflict (a container, a child image) is final.
            Deleted::Conflict(msg) if msg.contains("referenced in multiple repositories") => {}
            Deleted::Conflict(msg) => return Err(GcError::Conflict(msg)),
        }
        // Removing a name never touches a container; removing the last name deletes
        // the image, with the same in-use check as removal by id.
        for name in image.repo_tags.iter().chain(&image.repo_digests) {
            if let Deleted::Conflict(msg) = self.delete(name).await? {
                return Err(GcError::Conflict(msg));
            }
        }
        match self.delete(&image.id).await? {
            // Gone now means the last untag took it.
            Deleted::Yes | Deleted::NotFound => Ok(()),
            Deleted::Conflict(msg) => Err(GcError::Conflict(msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn img(id: &str, tags: &[&str], size_gb: u64, created: i64, last: Option<u64>) -> GcImage {
        GcImage {
            id: full_id(id),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![],
            size_bytes: size_gb * GB,
            created_unix: created,
            last_used_ms: last,
        }
    }

    /// A real-looking id (64 hex digits) made from a readable name.
    fn full_id(short: &str) -> String {
        format!("sha256:{:0<64}", hex::encode(short))
    }

    fn disk(used_gb: u64) -> DiskUsage {
        DiskUsage {
            total_bytes: 100 * GB,
            free_bytes: (100 - used_gb) * GB,
        }
    }

    const T: Thresholds = Thresholds {
        high_water_percent: 85.0,
        low_water_percent: 80.0,
    };

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn ids(p: &GcPlan<'_>) -> Vec<String> {
        p.remove.iter().map(|i| i.id.clone()).collect()
    }

    #[test]
    fn below_the_high_water_mark_nothing_happens() {
        let images = vec![img("a1", &["a:1"], 10, 1, None)];
        for used in [0, 50, 85] {
            let p = plan(disk(used), &images, &set(&[]), &set(&[]), T);
            assert!(!p.triggered, "{used}");
            assert!(p.remove.is_empty() && p.kept.is_empty());
        }
        // A file system without a size is never judged full.
        let empty = DiskUsage {
            total_bytes: 0,
            free_bytes: 0,
        };
        assert!(!plan(empty, &images, &set(&[]), &set(&[]), T).triggered);
    }

    #[test]
    fn removes_least_recently_used_first_never_used_oldest_first() {
        let images = vec![
            img("u2", &["u:2"], 1, 10, Some(2_000)),
            img("n2", &["n:2"], 1, 20, None),
            img("u1", &["u:1"], 1, 30, Some(1_000)),
            img("n1", &["n:1"], 1, 5, None),
            // Same creation time: the id decides, so the order is stable.
            img("n3", &["n:3"], 1, 20, None),
        ];
        let p = plan(disk(99), &images, &set(&[]), &set(&[]), T);
        assert!(p.triggered);
        assert_eq!(
            ids(&p),
            ["n1", "n2", "n3", "u1", "u2"].map(full_id).to_vec()
        );
        assert!(p.exhausted);
        assert_eq!(p.freed_bytes, 5 * GB);
        assert!((p.projected_percent - 94.0).abs() < 1e-9);
    }

    #[test]
    fn stops_once_projected_usage_is_under_low_water() {
        let images = vec![
            img("a", &["a:1"], 4, 1, None),
            img("b", &["b:1"], 3, 2, None),
            img("c", &["c:1"], 3, 3, None),
            img("d", &["d:1"], 3, 4, None),
        ];
        // 90 used, target under 80: 90-4=86, -3=83, -3=80 (not under), -3=77.
        let p = plan(disk(90), &images, &set(&[]), &set(&[]), T);
        assert_eq!(ids(&p), ["a", "b", "c", "d"].map(full_id).to_vec());
        assert!(!p.exhausted);
        // 88 used: 84, 81, 78 → three removals, the fourth image stays.
        let p = plan(disk(88), &images, &set(&[]), &set(&[]), T);
        assert_eq!(ids(&p), ["a", "b", "c"].map(full_id).to_vec());
        assert!(!p.exhausted);
        assert!((p.projected_percent - 78.0).abs() < 1e-9);
    }

    #[test]
    fn in_use_and_desired_images_are_kept() {
        let mut by_digest = img("dg", &[], 1, 1, None);
        by_digest.repo_digests = vec!["127.0.0.1:5000/nb@sha256:feed".into()];
        let images = vec![
            img("used", &["x:1"], 1, 1, None),
            img("tag", &["jupyter/base:2024"], 1, 1, None),
            by_digest,
            img("byid", &[], 1, 1, None),
            img("hub", &["busybox:latest"], 1, 1, None),
            img("free", &["free:1"], 1, 1, None),
        ];
        let in_use = set(&[&full_id("used")]);
        let desired = set(&[
            "jupyter/base:2024",
            "127.0.0.1:5000/nb@sha256:feed",
            &full_id("byid"),
            "docker.io/library/busybox",
        ]);
        let p = plan(disk(99), &images, &in_use, &desired, T);
        assert_eq!(ids(&p), vec![full_id("free")]);
        assert!(p.exhausted);
        let kept: Vec<(String, KeepReason)> =
            p.kept.iter().map(|(i, r)| (i.id.clone(), *r)).collect();
        assert_eq!(
            kept,
            vec![
                (full_id("used"), KeepReason::InUse),
                (full_id("tag"), KeepReason::Desired),
                (full_id("dg"), KeepReason::Desired),
                (full_id("byid"), KeepReason::Desired),
                (full_id("hub"), KeepReason::Desired),
            ]
        );
    }

    #[test]
    fn in_use_wins_over_desired_in_the_reason() {
        let images = vec![img("a", &["a:1"], 1, 1, None)];
        let p = plan(disk(99), &images, &set(&["a:1"]), &set(&["a:1"]), T);
        assert_eq!(p.kept[0].1, KeepReason::InUse);
    }

    #[test]
    fn with_nothing_removable_the_plan_is_exhausted_and_empty() {
        let images = vec![img("a", &["a:1"], 1, 1, None)];
        let p = plan(disk(99), &images, &set(&[&full_id("a")]), &set(&[]), T);
        assert!(p.triggered && p.remove.is_empty() && p.exhausted);
        let p = plan(disk(99), &[], &set(&[]), &set(&[]), T);
        assert!(p.triggered && p.remove.is_empty() && p.exhausted);
    }

    #[test]
    fn low_water_zero_removes_every_candidate() {
        // What the end-to-end test does: thresholds so low that usage is always above.
        let t = Thresholds {
            high_water_percent: 1.0,
            low_water_percent: 0.0,
        };
        let images = vec![
            img("b", &["b:1"], 1, 2, None),
            img("a", &["a:1"], 1, 1, None),
            img("k", &["k:1"], 1, 0, None),
        ];
        let p = plan(disk(5), &images, &set(&[]), &set(&["k:1"]), t);
        assert_eq!(ids(&p), ["a", "b"].map(full_id).to_vec());
    }

    #[test]
    fn references_match_like_docker() {
        let mut i = img(
            "x",
            &["busybox:latest", "127.0.0.1:5000/x/y:v1"],
            1,
            1,
            None,
        );
        i.id = format!("sha256:{:0<64}", "abcdef0123456789");
        i.repo_digests = vec!["busybox@sha256:d1".into()];
        let m = |r: &str| reference_matches(&i, r);
        // Tags, with Docker Hub's long forms and the implied `latest`.
        assert!(m("busybox"));
        assert!(m("busybox:latest"));
        assert!(m("library/busybox"));
        assert!(m("docker.io/library/busybox:latest"));
        assert!(m("index.docker.io/library/busybox"));
        assert!(m("127.0.0.1:5000/x/y:v1"));
        assert!(!m("127.0.0.1:5000/x/y"));
        assert!(!m("busybox:1"));
        assert!(!m("other/busybox"));
        assert!(!m("127.0.0.1:5000/busybox"));
        // Digests, with or without a tag in front.
        assert!(m("busybox@sha256:d1"));
        assert!(m("docker.io/library/busybox:latest@sha256:d1"));
        assert!(!m("busybox@sha256:d2"));
        assert!(!m("other@sha256:d1"));
        // Ids: full, with or without the algorithm, and long-enough prefixes.
        assert!(m(&i.id.clone()));
        assert!(m(i.id.strip_prefix("sha256:").unwrap()));
        assert!(m("sha256:abcdef012345"));
        assert!(m("abcdef012345"));
        assert!(!m("abcdef01"));
        assert!(!m("sha256:abcdef01234x"));
        assert!(!m(""));
    }

    #[test]
    fn tags_and_names_split_around_registry_ports() {
        assert_eq!(split_tag("a:1"), ("a", Some("1")));
        assert_eq!(split_tag("h:5000/a"), ("h:5000/a", None));
        assert_eq!(split_tag("h:5000/a:2"), ("h:5000/a", Some("2")));
        assert_eq!(familiar("docker.io/library/a"), "a");
        assert_eq!(familiar("docker.io/u/a"), "u/a");
        assert_eq!(familiar("library/a"), "a");
        assert_eq!(familiar("localhost/library/a"), "localhost/library/a");
        assert_eq!(familiar("reg.example/a"), "reg.example/a");
    }

    #[test]
    fn usage_log_round_trips_and_stays_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut log = UsageLog::load(&dir);
            assert!(log.is_empty());
            log.touch("sha256:a", 10);
            log.touch("sha256:a", 5); // older: ignored
            log.touch("sha256:b", 7);
            log.save().await.unwrap();
            let mut back = UsageLog::load(&dir);
            assert_eq!(back.last_used("sha256:a"), Some(10));
            assert_eq!(back.last_used("sha256:b"), Some(7));
            back.retain(|id| id == "sha256:b");
            back.save().await.unwrap();
            assert_eq!(UsageLog::load(&dir).len(), 1);
            // A damaged file is a fresh start, not an error.
            std::fs::write(tmp.path().join(USAGE_FILE), "not = [toml").unwrap();
            assert!(UsageLog::load(&dir).is_empty());
        });
    }

    #[test]
    fn handle_unions_sources_and_knows_when_it_has_been_told() {
        let h = GcHandle::new();
        assert_eq!(h.desired(), None);
        h.set_desired(SOURCE_PREPULL, ["a:1", "b:1"]);
        h.set_desired(SOURCE_INSTANCES, ["b:1", "c:1"]);
        assert_eq!(h.desired(), Some(set(&["a:1", "b:1", "c:1"])));
        h.set_desired(SOURCE_PREPULL, Vec::<String>::new());
        assert_eq!(h.desired(), Some(set(&["b:1", "c:1"])));
        for i in 0..MAX_NOTES + 5 {
            h.note_used_at(&format!("x:{i}"), i as u64);
        }
        let notes = h.take_notes();
        assert_eq!(notes.len(), MAX_NOTES);
        assert_eq!(notes[0].1, 5);
        assert!(h.take_notes().is_empty());
    }

    // --- the executor, on a fake engine -------------------------------------------

    #[derive(Default)]
    struct FakeState {
        total: u64,
        used: u64,
        images: Vec<GcImage>,
        containers: Vec<GcContainer>,
        removed: Vec<String>,
        /// Ids whose removal Docker refuses.
        conflicts: BTreeSet<String>,
        /// Bytes actually freed per removal, as a fraction of the size (shared layers).
        freed_fraction: f64,
        passes: usize,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    impl Fake {
        fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.0.lock().unwrap()
        }
    }

    impl GcBackend for Fake {
        async fn disk(&self) -> Result<DiskUsage, GcError> {
            let s = self.st();
            Ok(DiskUsage {
                total_bytes: s.total,
                free_bytes: s.total - s.used,
            })
        }
        async fn images(&self) -> Result<Vec<GcImage>, GcError> {
            let mut s = self.st();
            s.passes += 1;
            Ok(s.images.clone())
        }
        async fn containers(&self) -> Result<Vec<GcContainer>, GcError> {
            Ok(self.st().containers.clone())
        }
        async fn remove(&self, image: &GcImage) -> Result<(), GcError> {
            let mut s = self.st();
            if s.conflicts.contains(&image.id) {
                return Err(GcError::Conflict("image is being used".into()));
            }
            let Some(pos) = s.images.iter().position(|i| i.id == image.id) else {
                return Err(GcError::Gone);
            };
            let gone = s.images.remove(pos);
            let freed = (gone.size_bytes as f64 * s.freed_fraction) as u64;
            s.used -= freed;
            s.removed.push(gone.id);
            Ok(())
        }
    }

    fn settings(high: f64, low: f64, interval: u64) -> ImagesSettings {
        ImagesSettings {
            gc_high_water_percent: high,
            gc_low_water_percent: low,
            gc_interval_secs: interval,
            ..Default::default()
        }
    }

    fn running(id: &str) -> GcContainer {
        GcContainer {
            image_id: Some(full_id(id)),
            image: None,
            running: true,
        }
    }

    fn stopped(id: &str) -> GcContainer {
        GcContainer {
            running: false,
            ..running(id)
        }
    }

    fn fake(used_gb: u64, images: Vec<GcImage>, containers: Vec<GcContainer>) -> Fake {
        Fake(Arc::new(Mutex::new(FakeState {
            total: 100 * GB,
            used: used_gb * GB,
            images,
            containers,
            freed_fraction: 1.0,
            ..Default::default()
        })))
    }

    #[tokio::test]
    async fn a_pass_removes_unused_undesired_images_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            95,
            vec![
                img("new", &["new:1"], 1, 30, None),
                img("old", &["old:1"], 1, 10, None),
                img("run", &["run:1"], 1, 1, None),
                img("stop", &["stop:1"], 1, 1, None),
                img("want", &["want:1"], 1, 1, None),
                img("mid", &["mid:1"], 1, 20, None),
                // The oldest of all, but the operator's: never removed.
                img("local", &["local:1"], 1, 0, None),
            ],
            vec![running("run"), stopped("stop")],
        );
        let h = GcHandle::new();
        for t in ["new:1", "old:1", "run:1", "stop:1", "want:1", "mid:1"] {
            h.note_brought(t);
        }
        let mut gc = ImageGc::new(
            f.clone(),
            h.clone(),
            &StateDir::new(tmp.path()),
            &settings(1.0, 0.0, 60),
        );

        // Nothing goes before the desired set is known.
        let r = gc.pass().await.unwrap();
        assert!(r.waiting_for_desired && r.removed.is_empty());
        assert!(f.st().removed.is_empty());

        h.set_desired(SOURCE_PREPULL, ["want:1"]);
        let r = gc.pass().await.unwrap();
        assert_eq!(r.removed, ["old", "mid", "new"].map(full_id).to_vec());
        assert_eq!(f.st().removed, r.removed);
        assert_eq!(r.freed_bytes, 3 * GB);
        assert_eq!(r.usage_before, Some(95.0));
        assert_eq!(r.usage_after, Some(92.0));
        // The running container's image was recorded as used; removed ones are not kept.
        let log = UsageLog::load(&StateDir::new(tmp.path()));
        assert!(log.last_used(&full_id("run")).is_some());
        assert_eq!(log.len(), 1);
    }

    #[tokio::test]
    async fn recently_used_images_go_last_and_notes_count_as_use() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            90,
            vec![
                img("a", &["a:1"], 4, 1, None),
                img("b", &["b:1"], 4, 2, None),
                img("c", &["c:1"], 4, 3, None),
            ],
            vec![],
        );
        let h = GcHandle::new();
        for t in ["a:1", "b:1", "c:1"] {
            h.note_brought(t);
        }
        h.set_desired(SOURCE_INSTANCES, Vec::<String>::new());
        let mut gc = ImageGc::new(
            f.clone(),
            h.clone(),
            &StateDir::new(tmp.path()),
            &settings(85.0, 80.0, 60),
        );
        gc.clock = || 1_000;
        // A container was created from `a` and removed again between passes.
        h.note_used_at("a:1", 500);
        let r = gc.pass().await.unwrap();
        // 90 → 86 (b) → 82 (c) → 78 (a): a was used, so it goes last.
        assert_eq!(r.removed, ["b", "c", "a"].map(full_id).to_vec());
    }

    #[tokio::test]
    async fn shared_layers_mean_more_rounds_and_conflicts_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            90,
            vec![
                img("a", &["a:1"], 4, 1, None),
                img("b", &["b:1"], 4, 2, None),
                img("c", &["c:1"], 4, 3, None),
                img("d", &["d:1"], 4, 4, None),
                img("e", &["e:1"], 4, 5, None),
            ],
            vec![],
        );
        {
            let mut s = f.st();
            // Each removal frees half the image's size.
            s.freed_fraction = 0.5;
            s.conflicts.insert(full_id("a"));
        }
        let h = GcHandle::new();
        for t in ["a:1", "b:1", "c:1", "d:1", "e:1"] {
            h.note_brought(t);
        }
        h.set_desired(SOURCE_PREPULL, Vec::<String>::new());
        let mut gc = ImageGc::new(
            f.clone(),
            h,
            &StateDir::new(tmp.path()),
            &settings(85.0, 80.0, 60),
        );
        let r = gc.pass().await.unwrap();
        // Round 1 plans a, b, c (90-12=78), but a is refused and b, c free 2 each: 86.
        // Round 2 plans d, e (86-8=78), not a again; they free 4: 82. Round 3 finds
        // no candidate left.
        assert_eq!(r.removed, ["b", "c", "d", "e"].map(full_id).to_vec());
        assert_eq!(r.usage_after, Some(82.0));
        assert_eq!(f.st().images.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_soon_after_start_then_every_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let f = fake(
            50,
            vec![
                img("a", &["a:1"], 1, 1, None),
                img("b", &["b:1"], 1, 2, None),
            ],
            vec![],
        );
        let h = GcHandle::new();
        h.note_brought("a:1");
        h.note_brought("b:1");
        let gc = ImageGc::new(
            f.clone(),
            h.clone(),
            &StateDir::new(tmp.path()),
            &settings(85.0, 80.0, 60),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(gc.run(stop.clone()));
        let passes = || f.st().passes;

        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(passes(), 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(passes(), 1, "first pass after {FIRST_PASS_DELAY:?}");

        // Waiting for the desired set: its arrival triggers a pass at once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(passes(), 1);
        h.set_desired(SOURCE_PREPULL, ["a:1"]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(passes(), 2);

        // Then every interval.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(passes(), 3);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(passes(), 4);

        // The disk fills: the next pass removes what it may.
        f.st().used = 99 * GB;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(f.st().removed, vec![full_id("b")]);

        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_feed_tracks_instances_and_prepull_from_accepted_updates() {
        use cairn_shared::images::{DesiredImages, ImageSource, ImageSpec};
        use cairn_shared::workload::{DesiredInstance, Probe};

        #[derive(Default)]
        struct Accept {
            version: Mutex<Option<u64>>,
            changed: Notify,
        }
        impl Workloads for Accept {
            fn apply(&self, u: DesiredUpdate) -> bool {
                let mut v = self.version.lock().unwrap();
                if !u.full && *v != Some(u.version - 1) {
                    return false;
                }
                *v = Some(u.version);
                true
            }
            fn snapshot(&self) -> Vec<InstanceReport> {
                vec![]
            }
            fn drain(&self) -> Vec<InstanceReport> {
                vec![]
            }
            fn changed(&self) -> &Notify {
                &self.changed
            }
            fn logs(&self, _: InstanceId, _: u32) -> BoxFuture<'_, Result<String, String>> {
                Box::pin(async { Ok(String::new()) })
            }
            fn app_address(&self, _: &InstanceId) -> Option<std::net::SocketAddr> {
                None
            }
            fn isolation(&self) -> cairn_shared::resources::Isolation {
                cairn_shared::resources::Isolation::Enforced
            }
        }

        let inst = |image: &str| DesiredInstance {
            id: InstanceId::generate(),
            owner: "u".into(),
            blueprint: "b".into(),
            revision: 1,
            image: image.into(),
            image_source: ImageSource::Host,
            command: None,
            env: vec![],
            memory_bytes: 1,
            nano_cpus: 1,
            app_port: 8888,
            probe: Probe::Tcp,
            start_timeout_ms: 1,
            expect_existing: false,
        };
        let h = GcHandle::new();
        let feed = DesiredImagesFeed::new(Arc::new(Accept::default()), h.clone());
        let (one, two) = (inst("one:1"), inst("two:1"));
        let one_id = one.id.clone();
        assert!(feed.apply(DesiredUpdate {
            version: 1,
            full: true,
            upsert: vec![one, two],
            remove: vec![],
            images: Some(DesiredImages {
                prepull: vec![ImageSpec {
                    reference: "pre@sha256:ab".into(),
                    source: ImageSource::Registry,
                }],
                credentials: vec![],
            }),
        }));
        assert_eq!(h.desired(), Some(set(&["one:1", "two:1", "pre@sha256:ab"])));
        // A change: one instance gone, the pre-pull set untouched.
        assert!(feed.apply(DesiredUpdate {
            version: 2,
            full: false,
            upsert: vec![],
            remove: vec![one_id],
            images: None,
        }));
        assert_eq!(h.desired(), Some(set(&["two:1", "pre@sha256:ab"])));
        // A gap is refused by the supervisor, so the feed ignores it too.
        assert!(!feed.apply(DesiredUpdate {
            version: 9,
            full: false,
            upsert: vec![inst("three:1")],
            remove: vec![],
            images: None,
        }));
        assert_eq!(h.desired(), Some(set(&["two:1", "pre@sha256:ab"])));
    }
}
