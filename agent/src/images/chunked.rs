//! Image archives fetched as chunks, so two versions of a course image that share
//! their base layers share them on the wire too, not only on the controller.
//!
//! ```text
//! STATE_DIR/images/archives/<archive>/            the assembled archive (one file)
//! STATE_DIR/images/archives/<archive>.manifest    its manifest: what later fetches seed from
//! STATE_DIR/images/archives/<archive>.partial/    an assembly under way (resumed)
//! ```
//!
//! A fetch asks the controller for the archive's manifest
//! (`AgentRequest::FetchImageManifest`), lays the file out with
//! [`Assembly::prepare`], taking every chunk the archives kept here hold, fetches
//! the rest ([`fetch_chunks`]), and checks the whole file's BLAKE3 against the
//! archive's name before Docker sees it. After `docker load` the newest
//! [`KEEP_ARCHIVES`] archives stay as seeds for the next version; older ones go.
//! A controller that does not serve an archive as chunks (older, or an archive
//! pushed before archives were chunked) answers with a refusal, and the caller
//! fetches the archive whole instead ([`ChunkedError::Unsupported`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_shared::chunks::manifest::{EntryKind, Limits, Manifest};
use cairn_shared::chunks::materialise::{force_remove, Assembly, Seed};
use tokio::sync::watch;

use crate::chunks::fetch::{fetch_chunks, ChunkSource, FetchError, FetchOptions, FetchProgress};

/// Archives kept after loading, newest first: the seeds of the next version's fetch.
pub const KEEP_ARCHIVES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ChunkedError {
    /// The controller does not serve this archive as chunks: fetch it whole.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> ChunkedError {
    ChunkedError::Failed(e.to_string())
}

/// The chunked archives of one host.
pub struct ChunkedArchives {
    root: PathBuf,
    source: Arc<dyn ChunkSource>,
    /// Archives fetched and not yet kept or discarded (being loaded): never pruned
    /// by another pull's [`ChunkedArchives::keep`].
    busy: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for ChunkedArchives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedArchives")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The one file of an image manifest.
fn archive_file(m: &Manifest) -> Result<&str, ChunkedError> {
    match m.entries.as_slice() {
        [e] if matches!(e.kind, EntryKind::File { .. }) => Ok(&e.path),
        _ => Err(failed(
            "the controller's image manifest does not list exactly one file",
        )),
    }
}

/// The archives kept under `root` (other than `except`) with their manifests.
fn seeds(root: &Path, except: &str) -> Vec<Seed> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let archive = name.strip_suffix(".manifest")?.to_owned();
            if archive == except || !cairn_shared::images::is_archive_hash(&archive) {
                return None;
            }
            let bytes = std::fs::read(e.path()).ok()?;
            let manifest = Manifest::decode(&bytes, &Limits::DEFAULT).ok()?;
            let dir = root.join(&archive);
            dir.is_dir().then(|| Seed {
                root: dir,
                manifest: Arc::new(manifest),
                link: true,
            })
        })
        .collect()
}

impl ChunkedArchives {
    /// Archives under `root`, chunks from `source`.
    pub fn new(root: PathBuf, source: Arc<dyn ChunkSource>) -> Self {
        ChunkedArchives {
            root,
            source,
            busy: Default::default(),
        }
    }

    fn manifest_path(&self, archive: &str) -> PathBuf {
        self.root.join(format!("{archive}.manifest"))
    }

    /// Makes the archive file whole and verified here, fetching only the chunks no
    /// kept archive holds; `on_bytes` is told (bytes in place, bytes in all).
    /// Until [`ChunkedArchives::keep`] or [`ChunkedArchives::discard`], the archive
    /// is not pruned.
    pub async fn fetch(
        &self,
        archive: &str,
        on_bytes: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<PathBuf, ChunkedError> {
        if !cairn_shared::images::is_archive_hash(archive) {
            return Err(failed(format!("archive {archive} is not a BLAKE3 hash")));
        }
        self.busy_set().insert(archive.to_string());
        let r = self.fetch_inner(archive, on_bytes).await;
        if r.is_err() {
            self.busy_set().remove(archive);
        }
        r
    }

    fn busy_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch_inner(
        &self,
        archive: &str,
        on_bytes: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<PathBuf, ChunkedError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| failed(format!("creating {}: {e}", self.root.display())))?;
        let dest = self.root.join(archive);
        let manifest_path = self.manifest_path(archive);
        // Kept from an earlier pull: checked again, then used as it is.
        if let Ok(bytes) = std::fs::read(&manifest_path) {
            if let Ok(m) = Manifest::decode(&bytes, &Limits::DEFAULT) {
                let file = dest.join(archive_file(&m)?);
                if self.verify(archive, &file).await.is_ok() {
                    let size = m.total_bytes();
                    on_bytes(size, size);
                    return Ok(file);
                }
            }
            self.remove_files(archive);
        }
        let bytes = match self.source.image_manifest(archive).await {
            Ok(b) => b,
            Err(FetchError::Refused(m)) => return Err(ChunkedError::Unsupported(m)),
            Err(e) => return Err(failed(e)),
        };
        let manifest = Manifest::decode(&bytes, &Limits::DEFAULT)
            .map_err(|e| failed(format!("the image manifest of {archive} is refused: {e}")))?;
        let name = archive_file(&manifest)?.to_owned();
        let total: u64 = manifest
            .unique_chunks()
            .iter()
            .map(|c| u64::from(c.len))
            .sum();
        let seeds = {
            let (root, except) = (self.root.clone(), archive.to_string());
            tokio::task::spawn_blocking(move || seeds(&root, &except))
                .await
                .map_err(failed)?
        };
        let (tree, found) = {
            let (m, d) = (Arc::new(manifest), dest.clone());
            tokio::task::spawn_blocking(move || Assembly::prepare(m, &d, &seeds))
                .await
                .map_err(failed)?
                .map_err(failed)?
        };
        let tree = Arc::new(tree);
        let (tx, mut rx) = watch::channel(FetchProgress {
            done_bytes: total.saturating_sub(found.missing_bytes),
            total_bytes: total,
        });
        on_bytes(total.saturating_sub(found.missing_bytes), total);
        let opts = FetchOptions::default();
        let fetching = fetch_chunks(self.source.clone(), tree.clone(), &opts, &tx);
        tokio::pin!(fetching);
        let stats = loop {
            tokio::select! {
                r = &mut fetching => break r.map_err(failed)?,
                Ok(()) = rx.changed() => {
                    let p = *rx.borrow_and_update();
                    on_bytes(p.done_bytes, p.total_bytes);
                }
            }
        };
        tracing::info!(
            %archive,
            fetched_bytes = stats.bytes_fetched,
            copied_bytes = found.seeded_bytes,
            resumed_bytes = found.resumed_bytes,
            "image archive chunks in place"
        );
        let t = tree.clone();
        tokio::task::spawn_blocking(move || t.finish(false))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        let file = dest.join(&name);
        if let Err(e) = self.verify(archive, &file).await {
            self.remove_files(archive);
            return Err(e);
        }
        std::fs::write(&manifest_path, &bytes)
            .map_err(|e| failed(format!("writing {}: {e}", manifest_path.display())))?;
        on_bytes(total, total);
        Ok(file)
    }

    /// Checks the whole file hashes to the archive's name.
    async fn verify(&self, archive: &str, file: &Path) -> Result<(), ChunkedError> {
        let f = file.to_path_buf();
        let actual = tokio::task::spawn_blocking(move || cairn_shared::images::blake3_file(&f))
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("hashing {}: {e}", file.display())))?;
        if actual != archive {
            return Err(failed(format!(
                "archive {archive} failed verification (its BLAKE3 hash is {actual})"
            )));
        }
        Ok(())
    }

    /// Removes an archive kept here (Docker would not load it, or it failed its
    /// check).
    pub fn discard(&self, archive: &str) {
        self.busy_set().remove(archive);
        self.remove_files(archive);
    }

    fn remove_files(&self, archive: &str) {
        let _ = force_remove(&self.root.join(archive));
        let _ = std::fs::remove_file(self.manifest_path(archive));
    }

    /// After `archive` is loaded: it is the newest seed; archives beyond the newest
    /// [`KEEP_ARCHIVES`] go.
    pub fn keep(&self, archive: &str) {
        self.busy_set().remove(archive);
        // Rewritten to mark it newest (the manifest's mtime orders the seeds).
        if let Ok(bytes) = std::fs::read(self.manifest_path(archive)) {
            let _ = std::fs::write(self.manifest_path(archive), bytes);
        }
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut kept: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let archive = name.strip_suffix(".manifest")?.to_owned();
                let mtime = e.metadata().ok()?.modified().ok()?;
                Some((mtime, archive))
            })
            .collect();
        kept.sort_by(|a, b| b.cmp(a));
        let busy = self.busy_set().clone();
        for (_, old) in kept.into_iter().skip(KEEP_ARCHIVES) {
            if busy.contains(&old) {
                continue;
            }
            tracing::info!(archive = %old, "removing an image archive no longer kept as a seed");
            self.remove_files(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::chunks::fetch::testing::{FakeSource, Shared};
    use cairn_shared::chunks::manifest::Entry;
    use cairn_shared::chunks::{ChunkId, ChunkRef, DEFAULT_PARAMS};

    /// An archive of `parts` (each one chunk) served by `src`; returns its name.
    fn archive(src: &FakeSource, parts: &[Vec<u8>]) -> String {
        let chunks: Vec<ChunkRef> = parts
            .iter()
            .map(|p| ChunkRef {
                id: src.add(p),
                len: p.len() as u32,
            })
            .collect();
        let whole: Vec<u8> = parts.concat();
        let m = Manifest::new(
            DEFAULT_PARAMS,
            vec![Entry {
                path: "archive.tar".into(),
                kind: EntryKind::File { chunks },
                mode: 0o600,
                size: whole.len() as u64,
                mtime_ns: 0,
            }],
        );
        let name = ChunkId::of(&whole).to_hex();
        src.image_manifests
            .lock()
            .unwrap()
            .insert(name.clone(), m.encode());
        name
    }

    fn part(tag: u8) -> Vec<u8> {
        (0..5000u32).map(|i| (i as u8) ^ tag).collect()
    }

    #[tokio::test]
    async fn a_second_archive_fetches_only_the_chunks_the_first_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let base = [part(1), part(2), part(3)];
        let v1 = archive(
            &src,
            &[base[0].clone(), base[1].clone(), base[2].clone(), part(4)],
        );
        let v2 = archive(
            &src,
            &[base[0].clone(), base[1].clone(), base[2].clone(), part(5)],
        );
        let a = ChunkedArchives::new(tmp.path().join("archives"), Arc::new(Shared(src.clone())));
        // Fetched, and still being loaded by another pull all along.
        let busy = archive(&src, &[part(7)]);
        a.fetch(&busy, &|_, _| {}).await.unwrap();
        src.served.lock().unwrap().clear();
        let p1 = a.fetch(&v1, &|_, _| {}).await.unwrap();
        assert_eq!(cairn_shared::images::blake3_file(&p1).unwrap(), v1);
        a.keep(&v1);
        assert_eq!(src.served.lock().unwrap().len(), 4);
        src.served.lock().unwrap().clear();
        let last = std::sync::Mutex::new((0, 0));
        let p2 = a
            .fetch(&v2, &|d, t| *last.lock().unwrap() = (d, t))
            .await
            .unwrap();
        assert_eq!(cairn_shared::images::blake3_file(&p2).unwrap(), v2);
        assert_eq!(*src.served.lock().unwrap(), vec![ChunkId::of(&part(5))]);
        assert_eq!(*last.lock().unwrap(), (20_000, 20_000));
        a.keep(&v2);
        // Kept: asked again, nothing is fetched.
        src.served.lock().unwrap().clear();
        a.fetch(&v1, &|_, _| {}).await.unwrap();
        assert!(src.served.lock().unwrap().is_empty());
        a.keep(&v1);
        // Only the newest KEEP_ARCHIVES stay, besides one still being loaded.
        let v3 = archive(&src, &[part(9)]);
        a.fetch(&v3, &|_, _| {}).await.unwrap();
        a.keep(&v3);
        let manifests = std::fs::read_dir(tmp.path().join("archives"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
            .count();
        assert_eq!(manifests, KEEP_ARCHIVES + 1);
        assert!(tmp.path().join("archives").join(&busy).is_dir());
        a.keep(&busy);
        let manifests = std::fs::read_dir(tmp.path().join("archives"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
            .count();
        assert_eq!(manifests, KEEP_ARCHIVES);
    }

    #[tokio::test]
    async fn a_file_that_is_not_the_archive_is_refused_and_an_unknown_one_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let real = archive(&src, &[part(1)]);
        // The controller's manifest for a name describes other bytes.
        let liar = ChunkId::of(b"something else").to_hex();
        let m = src.image_manifests.lock().unwrap()[&real].clone();
        src.image_manifests.lock().unwrap().insert(liar.clone(), m);
        let a = ChunkedArchives::new(tmp.path().join("archives"), Arc::new(Shared(src.clone())));
        let e = a.fetch(&liar, &|_, _| {}).await.unwrap_err();
        assert!(e.to_string().contains("failed verification"), "{e}");
        assert!(!tmp.path().join("archives").join(&liar).exists());
        let unknown = ChunkId::of(b"never pushed").to_hex();
        assert!(matches!(
            a.fetch(&unknown, &|_, _| {}).await,
            Err(ChunkedError::Unsupported(_))
        ));
        assert!(matches!(
            a.fetch("../../etc", &|_, _| {}).await,
            Err(ChunkedError::Failed(_))
        ));
    }
}
