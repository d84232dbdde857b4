//! Users' volumes on this host: restored before an instance's container starts,
//! checkpointed while it runs, saved when it stops, and kept as a warm copy for
//! the owner's next launch here.
//!
//! Layout under `<state>/volumes`:
//!
//! * `work/<instance>/files` — the instance's copy, bind-mounted read-write;
//!   `work/<instance>/meta` what it started from (the volume's generation and
//!   head), written last, so a copy without one is a restore not yet finished;
//!   `work/<instance>/scan` the last save's [`ScanCache`] (restic's rule: a file
//!   is re-read only when its size, mtime, ctime or inode changed).
//! * `cache/<volume key>/` — the copy of the last instance of that volume that
//!   stopped here, kept after the controller acknowledged its final save, with
//!   its meta and scan cache: the next launch of the same head here takes it whole
//!   (one rename), a launch of a newer head copies what it still holds.
//!
//! Restores assemble in a staging directory and rename (a restore interrupted
//! anywhere leaves no tree or the whole tree, and resumes); a copy is deleted only
//! after the controller acknowledged the save that holds its files ([`save`]).

pub mod save;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_shared::chunks::manifest::{EntryKind, Limits, Manifest};
use cairn_shared::chunks::materialise::{force_remove, Assembly, Seed};
use cairn_shared::chunks::scan::{CachedFile, ScanCache};
use cairn_shared::chunks::{ChunkId, DEFAULT_PARAMS};
use cairn_shared::ids::InstanceId;
use cairn_shared::workload::VolumeMount;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::chunks::fetch::{
    fetch_chunks, ChunkSource, FetchOptions, FetchProgress, QuicChunkSource,
};

/// Warm copies kept on this host (one per volume, the most recently stopped).
pub const KEEP_WARM: usize = 8;

/// Why a volume could not be restored or saved; shown to users.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Link(String),
    #[error("the controller refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Scan(String),
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (what, p) = (what.to_string(), p.to_path_buf());
    move |e| VolumeError::Io(format!("{what} {}: {e}", p.display()))
}

/// What a host copy started from and how it is saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `OWNER/NAME`.
    pub volume: String,
    /// The generation of the head the copy matches (commits name it as base).
    pub generation: u64,
    /// The snapshot the copy matches (`None`: nothing saved yet).
    pub manifest: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub checkpoint_secs: u32,
    /// Set when a save came back as a conflict: the lease moved elsewhere, so
    /// checkpoints stop (the final save still goes, as another conflict).
    #[serde(default)]
    pub lease_lost: bool,
    /// A snapshot the controller halted (it would empty the volume or delete too
    /// much): not committed again while the files stay as they are.
    #[serde(default)]
    pub halted: Option<String>,
}

impl Meta {
    fn manifest_id(&self) -> Option<ChunkId> {
        self.manifest.as_deref().and_then(ChunkId::from_hex)
    }

    fn read(path: &Path) -> Option<Meta> {
        postcard::from_bytes(&std::fs::read(path).ok()?).ok()
    }

    fn write(&self, path: &Path) -> Result<(), VolumeError> {
        let bytes = postcard::to_allocvec(self).map_err(|e| VolumeError::Io(e.to_string()))?;
        cairn_shared::fsutil::write_atomic(path, &bytes, 0o600).map_err(io("writing", path))
    }
}

/// A short, path-safe key for a volume name.
fn volume_key(volume: &str) -> String {
    blake3::hash(volume.as_bytes()).to_hex()[..24].to_string()
}

/// The host's volume copies.
pub struct VolumeKeeper {
    root: PathBuf,
    source: QuicChunkSource,
    connection: watch::Receiver<Option<quinn::Connection>>,
    /// One restore or save at a time per instance.
    locks: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// When each instance was last checkpointed (or restored).
    last: Mutex<HashMap<InstanceId, Instant>>,
}

impl std::fmt::Debug for VolumeKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeKeeper")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl VolumeKeeper {
    /// The keeper under `root`, talking to the controller on `connection`.
    pub fn open(
        root: &Path,
        connection: watch::Receiver<Option<quinn::Connection>>,
    ) -> Result<Arc<Self>, VolumeError> {
        for d in [root.join("work"), root.join("cache")] {
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        Ok(Arc::new(VolumeKeeper {
            root: root.to_path_buf(),
            source: QuicChunkSource::new(connection.clone()),
            connection,
            locks: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
        }))
    }

    /// A watch of the link to the controller, for [`link_renewed`].
    pub fn link(&self) -> watch::Receiver<Option<quinn::Connection>> {
        let mut rx = self.connection.clone();
        rx.borrow_and_update();
        rx
    }

    fn work(&self, id: &InstanceId) -> PathBuf {
        self.root.join("work").join(id.as_str())
    }

    fn warm(&self, volume: &str) -> PathBuf {
        self.root.join("cache").join(volume_key(volume))
    }

    fn lock_of(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// Instances with a copy on this host (restored, or being saved).
    pub fn instances(&self) -> Vec<InstanceId> {
        let Ok(rd) = std::fs::read_dir(self.root.join("work")) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| InstanceId::parse(&e.file_name().to_string_lossy()).ok())
            .collect()
    }

    /// Whether `id` has a copy here that a stop must save first.
    pub fn holds(&self, id: &InstanceId) -> bool {
        self.work(id).join("meta").is_file()
    }

    /// Whether `id` is due a checkpoint (and none is under way).
    pub fn checkpoint_due(&self, id: &InstanceId) -> bool {
        let Some(meta) = Meta::read(&self.work(id).join("meta")) else {
            return false;
        };
        if meta.checkpoint_secs == 0 || meta.lease_lost {
            return false;
        }
        let last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied();
        let due = last.is_none_or(|t| t.elapsed().as_secs() >= u64::from(meta.checkpoint_secs));
        due && self.lock_of(id).try_lock().is_ok()
    }

    /// Makes `id`'s copy of `vm` ready and returns the directory to mount: the copy
    /// already here, the warm copy of the same head, or the head assembled from
    /// what this host holds and the chunks fetched. Files belong to `owner`.
    pub async fn restore(
        &self,
        id: &InstanceId,
        vm: &VolumeMount,
        owner: (u32, u32),
        progress: &watch::Sender<FetchProgress>,
    ) -> Result<PathBuf, VolumeError> {
        let started = Instant::now();
        let lock = self.lock_of(id);
        let _g = lock.lock().await;
        let work = self.work(id);
        let files = work.join("files");
        let meta_path = work.join("meta");
        if meta_path.is_file() && files.is_dir() {
            return Ok(files);
        }
        let mut how = "new";
        let mut fetched = 0u64;
        std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
        let warm = self.warm(&vm.volume);
        let warm_meta = Meta::read(&warm.join("meta"));
        let head_hex = vm.head.map(|h| h.to_hex());
        let mut restored: Option<Arc<Manifest>> = None;
        if files.is_dir() {
            // Renamed into place before an interrupted restore wrote its meta.
        } else if vm.head.is_none() {
            std::fs::create_dir_all(&files).map_err(io("creating", &files))?;
        } else if warm_meta.as_ref().is_some_and(|m| m.manifest == head_hex)
            && warm.join("files").is_dir()
        {
            // The last copy stopped here is the head: take it whole.
            std::fs::rename(warm.join("files"), &files).map_err(io("moving", &files))?;
            let _ = std::fs::rename(warm.join("scan"), work.join("scan"));
            let _ = std::fs::copy(warm.join("manifest"), work.join("manifest"));
            let _ = force_remove(&warm);
            how = "kept";
            tracing::info!(instance = %id, volume = %vm.volume, "volume restored from the copy kept on this host");
        } else {
            let head = vm.head.ok_or_else(|| VolumeError::Io("no head".into()))?;
            let (manifest, bytes) = self.fetch_manifest(head).await?;
            let manifest = Arc::new(manifest);
            cairn_shared::fsutil::write_atomic(&work.join("manifest"), &bytes, 0o600)
                .map_err(io("writing", &work))?;
            let seeds: Vec<Seed> =
                match (&warm_meta, warm_meta.as_ref().and_then(Meta::manifest_id)) {
                    (Some(_), Some(mid)) if warm.join("files").is_dir() => {
                        match self.fetch_manifest_local(&warm, mid) {
                            Some(m) => vec![Seed {
                                root: warm.join("files"),
                                manifest: Arc::new(m),
                                // The copy becomes writable: never share an inode.
                                link: false,
                            }],
                            None => vec![],
                        }
                    }
                    _ => vec![],
                };
            let (m, f) = (manifest.clone(), files.clone());
            let (assembly, prepared) =
                tokio::task::spawn_blocking(move || Assembly::prepare(m, &f, &seeds))
                    .await
                    .map_err(|e| VolumeError::Io(e.to_string()))?
                    .map_err(|e| VolumeError::Io(format!("laying out the files: {e}")))?;
            let total = manifest.total_bytes();
            progress.send_replace(FetchProgress {
                done_bytes: total.saturating_sub(prepared.missing_bytes),
                total_bytes: total,
            });
            let assembly = Arc::new(assembly);
            let source: Arc<dyn ChunkSource> = Arc::new(self.source.clone());
            fetch_chunks(source, assembly.clone(), &FetchOptions::default(), progress)
                .await
                .map_err(|e| VolumeError::Link(e.to_string()))?;
            let a = assembly.clone();
            // Durable before the container writes into it: a power cut must not
            // leave a restored copy with holes that a later save would commit.
            tokio::task::spawn_blocking(move || a.finish(true))
                .await
                .map_err(|e| VolumeError::Io(e.to_string()))?
                .map_err(|e| VolumeError::Io(format!("finishing the files: {e}")))?;
            restored = Some(manifest);
            how = "fetched";
            fetched = prepared.missing_bytes;
            crate::metrics::volume_bytes("down", fetched);
            tracing::debug!(instance = %id, volume = %vm.volume, seeded = prepared.seeded_bytes, fetched, "volume assembled");
        }
        let f = files.clone();
        tokio::task::spawn_blocking(move || chown_tree(&f, owner))
            .await
            .map_err(|e| VolumeError::Io(e.to_string()))??;
        if let Some(manifest) = restored {
            // What the tree holds now is the head: its scan cache is the
            // manifest's, with the stat after the chown (which changes ctimes).
            let f = files.clone();
            if let Ok(c) = tokio::task::spawn_blocking(move || cache_of(&f, &manifest)).await {
                let _ = c.save(&work.join("scan"));
            }
        }
        let meta = Meta {
            volume: vm.volume.clone(),
            generation: vm.generation,
            manifest: head_hex,
            uid: owner.0,
            gid: owner.1,
            checkpoint_secs: vm.checkpoint_secs,
            lease_lost: false,
            halted: None,
        };
        meta.write(&meta_path)?;
        tracing::info!(instance = %id, volume = %vm.volume, how, fetched_bytes = fetched, elapsed_ms = started.elapsed().as_millis() as u64, "volume restored");
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        Ok(files)
    }

    /// Snapshot `id`'s manifest from the controller, verified, and its bytes.
    async fn fetch_manifest(&self, id: ChunkId) -> Result<(Manifest, Vec<u8>), VolumeError> {
        let bytes = self
            .source
            .manifest(id)
            .await
            .map_err(|e| VolumeError::Link(e.to_string()))?;
        if !id.verifies(&bytes) {
            return Err(VolumeError::Link(format!(
                "snapshot {id} arrived corrupt: its bytes do not match its name"
            )));
        }
        let m = Manifest::decode(&bytes, &Limits::DEFAULT).map_err(|e| {
            VolumeError::Link(format!("snapshot {id} is not a valid manifest: {e}"))
        })?;
        Ok((m, bytes))
    }

    /// The manifest bytes `id`'s copy matches (kept beside it), if they are there
    /// and verify: what a save sends its delta from.
    pub(crate) fn base_manifest(&self, id: &InstanceId, meta: &Meta) -> Option<(ChunkId, Vec<u8>)> {
        let mid = meta.manifest_id()?;
        let bytes = std::fs::read(self.work(id).join("manifest")).ok()?;
        mid.verifies(&bytes).then_some((mid, bytes))
    }

    /// The manifest a warm copy was saved as, kept beside it.
    fn fetch_manifest_local(&self, warm: &Path, id: ChunkId) -> Option<Manifest> {
        let bytes = std::fs::read(warm.join("manifest")).ok()?;
        id.verifies(&bytes).then_some(())?;
        Manifest::decode(&bytes, &Limits::DEFAULT).ok()
    }

    /// After the controller acknowledged `id`'s final save as the head (`manifest`
    /// bytes): the copy becomes the volume's warm copy here; any other outcome
    /// (the snapshot is stored, just not as head) deletes it.
    fn retire(&self, id: &InstanceId, meta: &Meta, head: Option<&[u8]>) -> Result<(), VolumeError> {
        let work = self.work(id);
        if let Some(bytes) = head {
            let warm = self.warm(&meta.volume);
            let _ = force_remove(&warm);
            std::fs::create_dir_all(&warm).map_err(io("creating", &warm))?;
            std::fs::rename(work.join("files"), warm.join("files"))
                .map_err(io("keeping", &warm))?;
            let _ = std::fs::rename(work.join("scan"), warm.join("scan"));
            cairn_shared::fsutil::write_atomic(&warm.join("manifest"), bytes, 0o600)
                .map_err(io("writing", &warm))?;
            meta.write(&warm.join("meta"))?;
            self.evict_warm();
        }
        force_remove(&work).map_err(io("removing", &work))?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Keeps the [`KEEP_WARM`] most recently kept warm copies.
    fn evict_warm(&self) {
        let Ok(rd) = std::fs::read_dir(self.root.join("cache")) else {
            return;
        };
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let t = std::fs::metadata(e.path().join("meta"))
                    .ok()?
                    .modified()
                    .ok()?;
                Some((t, e.path()))
            })
            .collect();
        all.sort();
        let excess = all.len().saturating_sub(KEEP_WARM);
        for (_, p) in all.into_iter().take(excess) {
            let _ = force_remove(&p);
        }
    }
}

/// The scan cache of a tree that is exactly `m` (just restored): each file's chunk
/// list from the manifest with its stat now, so the next save reads nothing that
/// did not change.
fn cache_of(root: &Path, m: &Manifest) -> ScanCache {
    use std::os::unix::fs::MetadataExt;
    let mut files = std::collections::BTreeMap::new();
    for e in &m.entries {
        if let EntryKind::File { chunks } = &e.kind {
            if let Ok(md) = std::fs::symlink_metadata(root.join(&e.path)) {
                files.insert(
                    e.path.clone(),
                    CachedFile {
                        size: md.size(),
                        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
                        inode: md.ino(),
                        dev: md.dev(),
                        chunks: chunks.clone(),
                    },
                );
            }
        }
    }
    ScanCache {
        params: DEFAULT_PARAMS,
        files,
    }
}

/// Gives every entry of the tree (and the root) to `owner`, leaving those that
/// already belong to it alone (a chown changes the ctime, which would make the
/// next save re-read the file).
fn chown_tree(root: &Path, owner: (u32, u32)) -> Result<(), VolumeError> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
        if md.uid() != owner.0 || md.gid() != owner.1 {
            std::os::unix::fs::lchown(&p, Some(owner.0), Some(owner.1))
                .map_err(io("changing the owner of", &p))?;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io("reading", &p))? {
                stack.push(e.map_err(io("reading", &p))?.path());
            }
        }
    }
    Ok(())
}

/// Resolves when `rx` (from [`VolumeKeeper::link`]) sees a new connection: a save
/// that failed for want of the link is tried again at once.
pub async fn link_renewed(mut rx: watch::Receiver<Option<quinn::Connection>>) {
    loop {
        if rx.changed().await.is_err() {
            // The link is gone for good (shutting down): nothing to wait for.
            std::future::pending::<()>().await;
        }
        if rx.borrow_and_update().is_some() {
            return;
        }
    }
}
