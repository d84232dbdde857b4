//! The host's dataset cache: materialised versions that containers mount.
//!
//! ```text
//! STATE_DIR/datasets/chunks/                    manifests of the versions held (ChunkDir)
//! STATE_DIR/datasets/trees/<manifest>/          a materialised, verified version
//! STATE_DIR/datasets/trees/<manifest>.info      its size and when it was last used
//! STATE_DIR/datasets/trees/<manifest>.partial/  a version being assembled (resumed)
//! STATE_DIR/datasets/trees/<manifest>.unsynced  written, not yet flushed: the boot id
//! ```
//!
//! * One copy per version per host: every instance mounting it binds the same tree.
//! * The trees are the cache: a new version is assembled from the versions already
//!   here ([`Assembly::prepare`] hard-links each file they share, whole, and copies
//!   each chunk they share), and only the rest is fetched, each chunk written once,
//!   straight into the tree. There is no second copy of the bytes in a chunk cache.
//! * No flush on the way to a launch: a finished tree is marked `.unsynced` with the
//!   kernel's boot id and flushed in the background, then unmarked. A process crash
//!   loses nothing the page cache holds; only a reboot can, so at start a tree still
//!   marked with another boot's id is dropped (it is fetched again when needed).
//! * Single flight: however many launches ask for a version at once, one task
//!   fetches and materialises it; the others wait on the same shared future and
//!   watch the same progress.
//! * A tree appears under its final name only once it is whole and verified (it is
//!   assembled aside and renamed), so after a crash the directory itself says what
//!   is ready; an interrupted assembly's staging directory stays and is resumed, its
//!   chunks checked again, so the next fetch asks only for the rest.
//! * A size limit with LRU eviction of versions no desired instance mounts
//!   ([`super::evict`]), with their manifests and any staging directory no fetch is
//!   using.
//! * Pre-fetch: the controller's pre-fetch set is fetched in the background, one
//!   version at a time on fewer streams than a launch uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::chunks::dir::ChunkDir;
use cairn_shared::chunks::manifest::{Limits, Manifest};
use cairn_shared::chunks::materialise::{force_remove, sync_fs, Assembly, Seed};
use cairn_shared::chunks::ChunkId;
use cairn_shared::protocol::MAX_CACHED_DATASETS;
use cairn_shared::workload::DatasetSpec;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::evict::{plan_evictions, CacheEntry};
use crate::chunks::fetch::{
    fetch_chunks, fetch_manifest, ChunkSource, FetchError, FetchOptions, FetchProgress,
    QuicChunkSource, LAUNCH_STREAMS, PREFETCH_STREAMS,
};
use crate::state::DatasetsSettings;

/// How long a failed pre-fetch waits before it is tried again.
const PREFETCH_RETRY: Duration = Duration::from_secs(300);
/// How often the pre-fetch loop looks at its set when nothing wakes it.
const PREFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Trees a new version may take bytes from: the most recently used.
const MAX_SEEDS: usize = 8;

/// This boot of the kernel, to tell a process restart (the page cache survived)
/// from a reboot (unflushed writes may be lost).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}

/// What the cache remembers about a tree, next to it on disk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct TreeInfo {
    /// Disk it holds at most: its files' bytes (less when it shares files with
    /// another version through hard links).
    bytes: u64,
    last_used_ms: u64,
}

type Outcome = Shared<BoxFuture<'static, Result<PathBuf, String>>>;

/// One version being made ready (or ready): what waiting launches share.
#[derive(Clone)]
pub struct Flight {
    progress: watch::Receiver<FetchProgress>,
    outcome: Outcome,
    streams: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

impl Flight {
    fn ready(path: PathBuf, bytes: u64) -> Self {
        let (_, progress) = watch::channel(FetchProgress {
            done_bytes: bytes,
            total_bytes: bytes,
        });
        Flight {
            progress,
            outcome: futures::future::ready(Ok(path)).boxed().shared(),
            streams: Arc::new(AtomicUsize::new(LAUNCH_STREAMS)),
        }
    }

    /// Bytes fetched so far and in all.
    pub fn progress(&self) -> FetchProgress {
        *self.progress.borrow()
    }

    /// The materialised tree, or why it could not be made.
    pub async fn wait(&self) -> Result<PathBuf, String> {
        self.outcome.clone().await
    }
}

#[derive(Default)]
struct Inner {
    trees: BTreeMap<ChunkId, TreeInfo>,
    flights: HashMap<ChunkId, Flight>,
    /// Versions desired instances mount; `None` until the supervisor first says,
    /// and until then nothing is evicted (after a restart every tree may be
    /// mounted by a container the agent has not adopted yet).
    in_use: Option<HashSet<ChunkId>>,
    prefetch: Vec<DatasetSpec>,
    /// Pre-fetches that failed, and when (ms), so they are not hammered.
    prefetch_failed: HashMap<ChunkId, u64>,
}

/// The dataset cache of one host.
pub struct DatasetCache {
    trees_dir: PathBuf,
    chunks: Arc<ChunkDir>,
    source: Arc<dyn ChunkSource>,
    connection: watch::Sender<Option<quinn::Connection>>,
    limit: u64,
    inner: Mutex<Inner>,
    wake: Notify,
    /// Bumped whenever a version becomes ready, so the link reports it at once
    /// (the scheduler's data locality and waiting launches see it a heartbeat
    /// sooner).
    readied: watch::Sender<u64>,
}

impl std::fmt::Debug for DatasetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetCache")
            .field("trees_dir", &self.trees_dir)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn hex_name(name: &str) -> Option<ChunkId> {
    ChunkId::from_hex(name)
}

/// Bytes of the regular files under `dir` (not following symlinks).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

/// Removes a directory tree that may hold read-only directories (materialised
/// trees keep the modes of the dataset).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match force_remove(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl DatasetCache {
    /// Opens (creating) the cache under `root` with chunks from the link; see
    /// [`DatasetCache::set_connection`].
    pub fn open(root: &Path, settings: &DatasetsSettings) -> Result<Arc<Self>, CacheError> {
        let (connection, rx) = watch::channel(None);
        Self::build(
            root,
            settings,
            Arc::new(QuicChunkSource::new(rx)),
            connection,
        )
    }

    /// Like [`DatasetCache::open`], with chunks from `source`.
    pub fn with_source(
        root: &Path,
        settings: &DatasetsSettings,
        source: Arc<dyn ChunkSource>,
    ) -> Result<Arc<Self>, CacheError> {
        let (connection, _) = watch::channel(None);
        Self::build(root, settings, source, connection)
    }

    fn build(
        root: &Path,
        settings: &DatasetsSettings,
        source: Arc<dyn ChunkSource>,
        connection: watch::Sender<Option<quinn::Connection>>,
    ) -> Result<Arc<Self>, CacheError> {
        let trees_dir = root.join("trees");
        std::fs::create_dir_all(&trees_dir)
            .map_err(io(format!("creating {}", trees_dir.display())))?;
        let chunks_dir = root.join("chunks");
        let chunks =
            ChunkDir::open(&chunks_dir).map_err(io(format!("opening {}", chunks_dir.display())))?;
        let trees = Self::index(&trees_dir)?;
        tracing::info!(
            versions = trees.len(),
            limit = settings.cache_limit_bytes,
            "dataset cache opened"
        );
        Ok(Arc::new(DatasetCache {
            trees_dir,
            chunks: Arc::new(chunks),
            source,
            connection,
            limit: settings.cache_limit_bytes,
            inner: Mutex::new(Inner {
                trees,
                ..Inner::default()
            }),
            wake: Notify::new(),
            readied: watch::channel(0).0,
        }))
    }

    /// Rebuilds the index from disk: every `<manifest>` directory is a whole
    /// version (only a finished assembly gets that name), unless it is still marked
    /// unflushed by an earlier boot; `<manifest>.partial` directories stay to be
    /// resumed; anything else an interrupted build or eviction left is removed.
    fn index(trees_dir: &Path) -> Result<BTreeMap<ChunkId, TreeInfo>, CacheError> {
        let mut trees = BTreeMap::new();
        let mut infos = HashSet::new();
        let mut unsynced = vec![];
        let rd =
            std::fs::read_dir(trees_dir).map_err(io(format!("reading {}", trees_dir.display())))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some(id) = hex_name(&name) {
                if path.is_dir() {
                    let info = std::fs::read(trees_dir.join(format!("{name}.info")))
                        .ok()
                        .and_then(|b| postcard::from_bytes::<TreeInfo>(&b).ok())
                        .unwrap_or_else(|| TreeInfo {
                            bytes: du(&path),
                            last_used_ms: 0,
                        });
                    trees.insert(id, info);
                    continue;
                }
            } else if let Some(id) = name.strip_suffix(".info").and_then(hex_name) {
                infos.insert(id);
                continue;
            } else if let Some(id) = name.strip_suffix(".unsynced").and_then(hex_name) {
                unsynced.push(id);
                continue;
            } else if name.strip_suffix(".partial").and_then(hex_name).is_some() && path.is_dir() {
                continue;
            }
            tracing::info!(path = %path.display(), "removing a leftover of an interrupted dataset build");
            let _ = if path.is_dir() {
                remove_tree(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
        let boot = boot_id();
        let mut flush = false;
        for id in unsynced {
            let marker = trees_dir.join(format!("{id}.unsynced"));
            let same_boot = match std::fs::read_to_string(&marker) {
                Ok(s) => boot.is_some() && Some(s.trim()) == boot.as_deref(),
                // Removed since the listing: a flush finished in between.
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            if same_boot {
                // Only the process restarted: the page cache holds the tree.
                flush = true;
            } else if trees.remove(&id).is_some() {
                tracing::warn!(manifest = %id, "dropping a dataset version written before a reboot and never flushed; it is fetched again when needed");
                let _ = remove_tree(&trees_dir.join(id.to_hex()));
            }
        }
        if flush {
            sync_fs(trees_dir).map_err(io(format!("flushing {}", trees_dir.display())))?;
        }
        for id in trees.keys() {
            let _ = std::fs::remove_file(trees_dir.join(format!("{id}.unsynced")));
        }
        for id in infos.difference(&trees.keys().copied().collect()) {
            let _ = std::fs::remove_file(trees_dir.join(format!("{id}.info")));
        }
        Ok(trees)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link's current connection (`None` while it is down): fetches use it.
    pub fn set_connection(&self, connection: Option<quinn::Connection>) {
        let up = connection.is_some();
        self.connection.send_replace(connection);
        if up {
            self.wake.notify_one();
        }
    }

    /// Follows the link's connection (the volume keeper saves and restores on it).
    pub fn connection(&self) -> watch::Receiver<Option<quinn::Connection>> {
        self.connection.subscribe()
    }

    /// Where version `manifest` lives once materialised.
    pub fn tree_path(&self, manifest: &ChunkId) -> PathBuf {
        self.trees_dir.join(manifest.to_hex())
    }

    /// The chunk cache.
    pub fn chunk_dir(&self) -> &Arc<ChunkDir> {
        &self.chunks
    }

    /// Versions materialised and ready, for heartbeats.
    pub fn ready(&self) -> Vec<ChunkId> {
        self.lock()
            .trees
            .keys()
            .take(MAX_CACHED_DATASETS)
            .copied()
            .collect()
    }

    /// The versions desired instances mount: never evicted.
    pub fn set_in_use(&self, in_use: HashSet<ChunkId>) {
        self.lock().in_use = Some(in_use);
    }

    /// Replaces the pre-fetch set; fetching follows in the background.
    pub fn set_prefetch(&self, prefetch: Vec<DatasetSpec>) {
        let mut inner = self.lock();
        if inner.prefetch != prefetch {
            tracing::info!(versions = prefetch.len(), "dataset pre-fetch set updated");
            inner.prefetch = prefetch;
            inner.prefetch_failed.clear();
            drop(inner);
            self.wake.notify_one();
        }
    }

    /// Makes version `spec` ready: at once if it is, joining the flight under way if
    /// there is one, else starting one. `launch` flights use every stream; a launch
    /// that joins a pre-fetch speeds it up.
    pub fn ensure(self: &Arc<Self>, spec: &DatasetSpec, launch: bool) -> Flight {
        let id = spec.manifest;
        let mut inner = self.lock();
        if let Some(info) = inner.trees.get_mut(&id) {
            if launch {
                info.last_used_ms = cairn_shared::time::now_ms();
                let (info, path) = (*info, self.info_path(&id));
                // Best effort: a lost update only makes the version look older.
                let _ = std::fs::write(path, postcard::to_allocvec(&info).unwrap_or_default());
            }
            return Flight::ready(self.tree_path(&id), info.bytes);
        }
        if let Some(f) = inner.flights.get(&id) {
            if launch {
                f.streams.store(LAUNCH_STREAMS, Ordering::Relaxed);
            }
            return f.clone();
        }
        let (tx, rx) = watch::channel(FetchProgress {
            done_bytes: 0,
            total_bytes: spec.bytes,
        });
        let streams = Arc::new(AtomicUsize::new(if launch {
            LAUNCH_STREAMS
        } else {
            PREFETCH_STREAMS
        }));
        let me = self.clone();
        let (spec2, streams2) = (spec.clone(), streams.clone());
        let task = tokio::spawn(async move {
            use tracing::Instrument;
            let span = tracing::info_span!("dataset", name = %spec2.name, version = spec2.version, manifest = %spec2.manifest);
            let r = me
                .clone()
                .build_version(&spec2, tx, streams2, launch)
                .instrument(span)
                .await;
            me.finish(&spec2.manifest, &r);
            r.map(|(path, _)| path)
        });
        let outcome = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the dataset task failed: {e}")))
        }
        .boxed()
        .shared();
        let flight = Flight {
            progress: rx,
            outcome,
            streams,
        };
        inner.flights.insert(id, flight.clone());
        flight
    }

    fn info_path(&self, id: &ChunkId) -> PathBuf {
        self.trees_dir.join(format!("{id}.info"))
    }

    /// Records a finished flight: the tree joins the index in the same step as the
    /// flight leaves, so [`DatasetCache::ensure`] always sees one or the other.
    fn finish(&self, id: &ChunkId, r: &Result<(PathBuf, TreeInfo), String>) {
        let mut inner = self.lock();
        inner.flights.remove(id);
        if let Ok((_, info)) = r {
            inner.trees.insert(*id, *info);
            drop(inner);
            self.readied.send_modify(|n| *n += 1);
        }
    }

    /// Changes whenever a version becomes ready.
    pub fn readied(&self) -> watch::Receiver<u64> {
        self.readied.subscribe()
    }

    async fn build_version(
        self: Arc<Self>,
        spec: &DatasetSpec,
        progress: watch::Sender<FetchProgress>,
        streams: Arc<AtomicUsize>,
        launch: bool,
    ) -> Result<(PathBuf, TreeInfo), String> {
        let id = spec.manifest;
        let started = std::time::Instant::now();
        let manifest = self
            .manifest_with_retries(id)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = manifest.total_bytes();
        let short_by = self.make_room(bytes, id).await;
        if short_by > 0 {
            if !launch {
                return Err(format!(
                    "no room in the dataset cache: {short_by} bytes over its limit of {} even after evicting every unused version",
                    self.limit
                ));
            }
            tracing::warn!(
                short_by,
                limit = self.limit,
                "dataset cache over its limit: every cached version is in use"
            );
        }
        let total_bytes: u64 = manifest
            .unique_chunks()
            .iter()
            .map(|c| u64::from(c.len))
            .sum();
        // Lay the tree out, taking what the versions already here hold.
        let seeds = self.seeds(&id).await;
        let dest = self.tree_path(&id);
        let (tree, found) = {
            let (manifest, dest) = (Arc::new(manifest), dest.clone());
            tokio::task::spawn_blocking(move || Assembly::prepare(manifest, &dest, &seeds))
                .await
                .map_err(|e| format!("writing the tree: {e}"))?
                .map_err(|e| format!("writing the tree: {e}"))?
        };
        progress.send_replace(FetchProgress {
            done_bytes: total_bytes.saturating_sub(found.missing_bytes),
            total_bytes,
        });
        let tree = Arc::new(tree);
        let opts = FetchOptions {
            streams,
            ..FetchOptions::default()
        };
        let stats = fetch_chunks(self.source.clone(), tree.clone(), &opts, &progress)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            fetched_chunks = stats.chunks_fetched,
            fetched_bytes = stats.bytes_fetched,
            linked_files = found.linked_files,
            linked_bytes = found.linked_bytes,
            copied_bytes = found.seeded_bytes,
            resumed_bytes = found.resumed_bytes,
            "dataset chunks in place"
        );
        // Marked before it gets its name, unmarked once flushed (see the module doc).
        let marker = self.trees_dir.join(format!("{id}.unsynced"));
        let boot = boot_id().unwrap_or_default();
        std::fs::write(&marker, boot).map_err(|e| format!("writing {}: {e}", marker.display()))?;
        let t = tree.clone();
        let path = tokio::task::spawn_blocking(move || t.finish(false))
            .await
            .map_err(|e| format!("writing the tree: {e}"))?
            .map_err(|e| format!("writing the tree: {e}"))?;
        let trees_dir = self.trees_dir.clone();
        tokio::task::spawn_blocking(move || match sync_fs(&trees_dir) {
            Ok(()) => {
                let _ = std::fs::remove_file(&marker);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot flush the dataset cache; the version stays marked unflushed")
            }
        });
        let info = TreeInfo {
            bytes,
            last_used_ms: cairn_shared::time::now_ms(),
        };
        let _ = std::fs::write(
            self.info_path(&id),
            postcard::to_allocvec(&info).unwrap_or_default(),
        );
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            bytes,
            "dataset version ready"
        );
        Ok((path, info))
    }

    /// The versions here a new one may take bytes from, most recently used first.
    async fn seeds(&self, building: &ChunkId) -> Vec<Seed> {
        let mut ids: Vec<(u64, ChunkId)> = self
            .lock()
            .trees
            .iter()
            .filter(|(id, _)| *id != building)
            .map(|(id, info)| (info.last_used_ms, *id))
            .collect();
        ids.sort_by(|a, b| b.cmp(a));
        ids.truncate(MAX_SEEDS);
        let (chunks, trees_dir) = (self.chunks.clone(), self.trees_dir.clone());
        tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .filter_map(|(_, id)| {
                    let bytes = chunks.get_manifest(&id).ok()??;
                    let manifest = Manifest::decode(&bytes, &Limits::DEFAULT).ok()?;
                    Some(Seed {
                        root: trees_dir.join(id.to_hex()),
                        manifest: Arc::new(manifest),
                        link: true,
                    })
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    async fn manifest_with_retries(&self, id: ChunkId) -> Result<Manifest, FetchError> {
        // The most recently used version here is the likeliest base of a delta
        // (a new version of a dataset follows the one its instances used).
        let base = self
            .lock()
            .trees
            .iter()
            .filter(|(t, _)| **t != id)
            .max_by_key(|(_, info)| info.last_used_ms)
            .map(|(t, _)| *t);
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match fetch_manifest(self.source.as_ref(), &self.chunks, id, base).await {
                Err(e) if e.is_transient() && attempt < 5 => {
                    tracing::info!(error = %e, attempt, "manifest fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                r => return r,
            }
        }
    }

    /// Evicts versions until `incoming` bytes fit (never `incoming_id`, versions in
    /// use, or versions in flight); returns by how much it still falls short.
    async fn make_room(&self, incoming: u64, incoming_id: ChunkId) -> u64 {
        let plan = {
            let inner = self.lock();
            let entries: Vec<CacheEntry> = inner
                .trees
                .iter()
                .map(|(id, info)| CacheEntry {
                    manifest: *id,
                    bytes: info.bytes,
                    last_used_ms: info.last_used_ms,
                    in_use: *id == incoming_id
                        || inner.flights.contains_key(id)
                        || inner.in_use.as_ref().is_none_or(|u| u.contains(id)),
                })
                .collect();
            plan_evictions(&entries, self.limit, incoming)
        };
        if plan.evict.is_empty() {
            return plan.short_by;
        }
        self.evict(&plan.evict).await;
        plan.short_by
    }

    /// Removes versions from the index and the disk, then the chunks no remaining
    /// version (kept, in flight, wanted) needs.
    async fn evict(&self, victims: &[ChunkId]) {
        let (keep_manifests, trash) = {
            let mut inner = self.lock();
            let mut trash = vec![];
            for id in victims {
                // Checked again under the lock: a launch may have claimed it since.
                let in_use = inner.in_use.as_ref().is_none_or(|u| u.contains(id));
                if !in_use && inner.trees.remove(id).is_some() {
                    trash.push(*id);
                }
            }
            let mut keep: HashSet<ChunkId> = inner.trees.keys().copied().collect();
            keep.extend(inner.flights.keys().copied());
            keep.extend(inner.prefetch.iter().map(|s| s.manifest));
            keep.extend(inner.in_use.iter().flatten().copied());
            (keep, trash)
        };
        let trees_dir = self.trees_dir.clone();
        let chunks = self.chunks.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in &trash {
                tracing::info!(manifest = %id, "evicting a dataset version from the cache");
                let path = trees_dir.join(id.to_hex());
                // Renamed aside first, so the name never points at half a tree.
                let aside = trees_dir.join(format!(".evicted-{id}"));
                let target = if std::fs::rename(&path, &aside).is_ok() { aside } else { path };
                if let Err(e) = remove_tree(&target) {
                    tracing::warn!(path = %target.display(), error = %e, "cannot remove an evicted dataset tree");
                }
                let _ = std::fs::remove_file(trees_dir.join(format!("{id}.info")));
                let _ = std::fs::remove_file(trees_dir.join(format!("{id}.unsynced")));
            }
            // Manifests of versions gone (and chunks an older agent cached).
            let mut freed = 0u64;
            match chunks.list() {
                Ok(all) => {
                    for (id, len, _) in all {
                        if !keep_manifests.contains(&id) && chunks.remove(&id).unwrap_or(false) {
                            freed += len;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the manifest cache"),
            }
            // Staging directories no fetch is resuming.
            if let Ok(rd) = std::fs::read_dir(&trees_dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(id) = name.strip_suffix(".partial").and_then(hex_name) else {
                        continue;
                    };
                    if !keep_manifests.contains(&id) {
                        tracing::info!(manifest = %id, "removing a dataset version's unfinished assembly");
                        let _ = remove_tree(&e.path());
                    }
                }
            }
            tracing::info!(versions = trash.len(), other_bytes_freed = freed, "dataset cache eviction done");
        })
        .await;
    }

    /// Fetches the pre-fetch set in the background until `shutdown`, one version at
    /// a time.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = {
                let inner = self.lock();
                let now = cairn_shared::time::now_ms();
                inner
                    .prefetch
                    .iter()
                    .find(|s| {
                        !inner.trees.contains_key(&s.manifest)
                            && !inner.flights.contains_key(&s.manifest)
                            && inner.prefetch_failed.get(&s.manifest).is_none_or(|t| {
                                now.saturating_sub(*t) > PREFETCH_RETRY.as_millis() as u64
                            })
                    })
                    .cloned()
            };
            if let Some(spec) = next {
                if self.connection.borrow().is_some() || self.connection.receiver_count() == 0 {
                    let flight = self.ensure(&spec, false);
                    let r = tokio::select! {
                        r = flight.wait() => r,
                        _ = shutdown.cancelled() => return,
                    };
                    if let Err(e) = r {
                        tracing::warn!(dataset = %spec.name, version = spec.version, error = %e, "pre-fetch failed");
                        self.lock()
                            .prefetch_failed
                            .insert(spec.manifest, cairn_shared::time::now_ms());
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(PREFETCH_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::chunks::fetch::testing::{version, FakeSource, Shared as FakeShared};

    fn open(root: &Path, src: &Arc<FakeSource>, limit: u64) -> Arc<DatasetCache> {
        DatasetCache::with_source(
            root,
            &DatasetsSettings {
                cache_limit_bytes: limit,
            },
            Arc::new(FakeShared(src.clone())),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn concurrent_launches_of_one_version_fetch_it_once() {
        let tmp = tempfile::tempdir().unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let src = Arc::new(FakeSource {
            gate: Some(gate.clone()),
            ..FakeSource::default()
        });
        let spec = version(&src, "course", 20, 3000);
        let cache = open(tmp.path(), &src, 1 << 30);
        let flights: Vec<Flight> = (0..5).map(|_| cache.ensure(&spec, true)).collect();
        gate.add_permits(1000);
        let mut paths = vec![];
        for f in &flights {
            paths.push(f.wait().await.unwrap());
        }
        assert!(paths.iter().all(|p| *p == paths[0]));
        assert_eq!(src.manifests_served.load(Ordering::SeqCst), 1);
        assert_eq!(src.served.lock().unwrap().len(), 20);
        assert_eq!(std::fs::read(paths[0].join("file3")).unwrap().len(), 3000);
        assert_eq!(cache.ready(), vec![spec.manifest]);
        // Later launches find it ready.
        let f = cache.ensure(&spec, true);
        assert_eq!(f.progress().percent(), 100);
        assert_eq!(f.wait().await.unwrap(), paths[0]);
        assert_eq!(src.served.lock().unwrap().len(), 20);
    }

    #[tokio::test]
    async fn the_cache_survives_a_restart_and_drops_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let spec = version(&src, "course", 3, 1000);
        {
            let cache = open(tmp.path(), &src, 1 << 30);
            cache.ensure(&spec, true).wait().await.unwrap();
        }
        let trees = tmp.path().join("trees");
        let leftover = trees.join(format!(".evicted-{}", ChunkId::of(b"x")));
        std::fs::create_dir_all(leftover.join("sub")).unwrap();
        // An assembly cut short stays to be resumed.
        let partial = trees.join(format!("{}.partial", ChunkId::of(b"y")));
        std::fs::create_dir_all(&partial).unwrap();
        let cache = open(tmp.path(), &src, 1 << 30);
        assert!(!leftover.exists());
        assert!(partial.exists());
        assert_eq!(cache.ready(), vec![spec.manifest]);
        cache.ensure(&spec, true).wait().await.unwrap();
        assert_eq!(src.manifests_served.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_tree_unflushed_before_a_reboot_is_dropped_and_one_of_this_boot_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let a = version(&src, "a", 2, 1000);
        let b = version(&src, "b", 2, 1000);
        {
            let cache = open(tmp.path(), &src, 1 << 30);
            cache.ensure(&a, true).wait().await.unwrap();
            cache.ensure(&b, true).wait().await.unwrap();
        }
        let trees = tmp.path().join("trees");
        // The background flushes end by removing their markers.
        for _ in 0..500 {
            let marked = std::fs::read_dir(&trees)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".unsynced"));
            if !marked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // As if the flush had not happened: a from an earlier boot, b from this one.
        std::fs::write(
            trees.join(format!("{}.unsynced", a.manifest)),
            "another-boot",
        )
        .unwrap();
        std::fs::write(
            trees.join(format!("{}.unsynced", b.manifest)),
            boot_id().unwrap(),
        )
        .unwrap();
        let cache = open(tmp.path(), &src, 1 << 30);
        assert_eq!(cache.ready(), vec![b.manifest]);
        assert!(!cache.tree_path(&a.manifest).exists());
        assert!(!trees.join(format!("{}.unsynced", b.manifest)).exists());
        // a comes back from the controller when asked for.
        cache.ensure(&a, true).wait().await.unwrap();
        assert!(cache.tree_path(&a.manifest).join("file1").exists());
    }

    #[tokio::test]
    async fn a_new_version_links_what_it_shares_with_one_here_and_fetches_the_rest() {
        use cairn_shared::chunks::manifest::{Entry, EntryKind};
        use cairn_shared::chunks::{ChunkRef, DEFAULT_PARAMS};
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let file = |name: &str, bytes: &[u8]| Entry {
            path: name.into(),
            kind: EntryKind::File {
                chunks: vec![ChunkRef {
                    id: src.add(bytes),
                    len: bytes.len() as u32,
                }],
            },
            mode: 0o644,
            size: bytes.len() as u64,
            mtime_ns: 7,
        };
        let spec = |tag: &str, entries: Vec<Entry>| {
            let m = Manifest::new(DEFAULT_PARAMS, entries);
            DatasetSpec {
                name: "course".into(),
                version: if tag == "1" { 1 } else { 2 },
                manifest: src.add(&m.encode()),
                bytes: m.total_bytes(),
            }
        };
        let v1 = spec(
            "1",
            vec![file("same", b"unchanged bytes"), file("old", b"old bytes")],
        );
        let v2 = spec(
            "2",
            vec![file("same", b"unchanged bytes"), file("old", b"new bytes")],
        );
        let cache = open(tmp.path(), &src, 1 << 30);
        let p1 = cache.ensure(&v1, true).wait().await.unwrap();
        src.served.lock().unwrap().clear();
        let p2 = cache.ensure(&v2, true).wait().await.unwrap();
        assert_eq!(*src.served.lock().unwrap(), vec![ChunkId::of(b"new bytes")]);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&p1.join("same")), ino(&p2.join("same")));
        assert_eq!(std::fs::read(p2.join("old")).unwrap(), b"new bytes");
        assert_eq!(std::fs::read(p1.join("old")).unwrap(), b"old bytes");
    }

    #[tokio::test]
    async fn unused_versions_are_evicted_lru_with_their_manifests_and_used_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        // Each version costs 4000 bytes; the limit holds two.
        let a = version(&src, "a", 4, 1000);
        let b = version(&src, "b", 4, 1000);
        let c = version(&src, "c", 4, 1000);
        let cache = open(tmp.path(), &src, 9_000);
        cache.set_in_use([a.manifest].into());
        cache.ensure(&a, true).wait().await.unwrap();
        cache.ensure(&b, true).wait().await.unwrap();
        assert!(cache.chunk_dir().contains(&b.manifest));
        // A staging directory nobody resumes goes with the next eviction.
        let stale = cache
            .trees_dir
            .join(format!("{}.partial", ChunkId::of(b"z")));
        std::fs::create_dir_all(&stale).unwrap();
        // c needs room: b goes (a is in use though older), with its manifest.
        cache.ensure(&c, true).wait().await.unwrap();
        let mut ready = cache.ready();
        ready.sort();
        let mut want = vec![a.manifest, c.manifest];
        want.sort();
        assert_eq!(ready, want);
        assert!(!cache.tree_path(&b.manifest).exists());
        assert!(!cache.chunk_dir().contains(&b.manifest));
        assert!(!stale.exists());
        assert!(cache.tree_path(&a.manifest).join("file0").exists());
    }

    #[tokio::test]
    async fn a_prefetch_is_fetched_in_the_background_and_a_launch_joins_it() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let spec = version(&src, "pre", 5, 2000);
        let cache = open(tmp.path(), &src, 1 << 30);
        let stop = CancellationToken::new();
        tokio::spawn(cache.clone().run(stop.clone()));
        cache.set_prefetch(vec![spec.clone()]);
        let path = cache.ensure(&spec, true).wait().await.unwrap();
        assert!(path.join("file4").exists());
        assert_eq!(src.manifests_served.load(Ordering::SeqCst), 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_failure_names_the_chunk_and_is_not_remembered_as_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let spec = version(&src, "bad", 2, 1000);
        let bad = *src
            .objects
            .lock()
            .unwrap()
            .keys()
            .find(|k| **k != spec.manifest)
            .unwrap();
        src.corrupt.lock().unwrap().insert(bad);
        let cache = open(tmp.path(), &src, 1 << 30);
        let err = cache.ensure(&spec, true).wait().await.unwrap_err();
        assert_eq!(err, format!("chunk {bad} is corrupt on the controller"));
        assert!(cache.ready().is_empty());
        // Once repaired, a new launch tries again.
        src.corrupt.lock().unwrap().clear();
        cache.ensure(&spec, true).wait().await.unwrap();
    }
}
