//! Pushed image archives (`cairn images push`) on the chunk store: the commit that
//! checks an archive made of chunks already sent, the records, and the chunk lists
//! agents' fetches are served from.
//!
//! An archive is stored as content-defined chunks in the controller's
//! [`ChunkStore`] plus a one-file [`Manifest`] listing them (stored there too, under
//! its id), so two versions of a course image that share base layers share their
//! chunks. Records, in sled: `images/<blake3>` ([`ImageRecord`]), keyed by the whole
//! archive's BLAKE3, which agents verify after fetching it.
//!
//! A commit checks the manifest (one file, within `max_archive_bytes`), that every
//! chunk is present, then reads the archive back from the chunks
//! ([`super::chunked`], bounded memory) to check its BLAKE3 and its `docker save`
//! layout ([`super::inspect`], re-exported here), so a file Docker cannot load is
//! refused when it is pushed, with a reason, rather than when some host tries to
//! launch from it. Removing an image removes its record; its chunks go at the next
//! collection of the chunk store ([`Archives::live_chunks`] is the images' part of
//! the live set).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_shared::chunks::{ChunkId, ChunkRef, EntryKind, Limits, Manifest};
use cairn_shared::images::is_archive_hash;
use cairn_shared::reference::Reference;

use super::chunked::ChunkedReader;
pub use super::inspect::{inspect, ArchiveInfo, InspectError};
use crate::chunks::{ChunkStore, ChunkStoreError};
use crate::config::ImagesConfig;
use crate::store::{Store, StoreError, Tree};

/// Read size for hashing.
pub const READ_CHUNK: usize = 1 << 20;
/// Chunk ids asked about in one `contains` call.
const CONTAINS_BATCH: usize = 16 * 1024;

/// A committed archive, as stored and as the API shows it.
pub use cairn_api::images::ImageRecord;

#[derive(Debug, thiserror::Error)]
pub enum ArchivesError {
    #[error("no image archive {0} on this controller")]
    NotFound(String),
    #[error("the archive is {size} bytes; this controller accepts at most {max} bytes (images.max_archive_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{count} of the archive's {total} chunks are not on the controller; send them (POST /api/v1/chunks) and commit again")]
    ChunksMissing { count: usize, total: usize },
    #[error("the pushed chunks do not make the archive's BLAKE3 hash (the file changed while it was pushed, or the chunks were corrupted); push again")]
    HashMismatch,
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// A chunk the manifest lists could not be read back (missing, corrupt, short).
    #[error("image archive {archive}: {detail}")]
    Chunk { archive: String, detail: String },
    #[error("image archive {archive}: its manifest {manifest} is missing from the chunk store; push the image again")]
    ManifestLost { archive: String, manifest: String },
    #[error(transparent)]
    ChunkStore(#[from] ChunkStoreError),
    #[error("image archive check stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The archives of one controller.
pub struct Archives {
    store: Store,
    chunks: Arc<dyn ChunkStore>,
    max_archive_bytes: u64,
    /// Serialises decisions over records: a commit against a delete of the same
    /// archive.
    meta: Mutex<()>,
    /// Commits hold it shared from their "all chunks present" check until their
    /// record is written; the collector holds it exclusively while it marks and
    /// sweeps, so it never sweeps a chunk a commit has just found present.
    gc: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Archives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archives")
            .field("max_archive_bytes", &self.max_archive_bytes)
            .finish_non_exhaustive()
    }
}

/// The one file of an image manifest, or why the manifest is not an image's.
pub fn archive_chunks(m: &Manifest) -> Result<(&[ChunkRef], u64), String> {
    match m.entries.as_slice() {
        [e] => match &e.kind {
            EntryKind::File { chunks } => Ok((chunks.as_slice(), e.size)),
            _ => Err(format!(
                "the manifest's one entry {:?} is not a file; an image manifest lists one file, the archive",
                e.path
            )),
        },
        entries => Err(format!(
            "the manifest lists {} entries; an image manifest lists one file, the archive",
            entries.len()
        )),
    }
}

impl Archives {
    /// The archives in `store` (records) and `chunks` (bytes). Logs the records
    /// pushed before archives were chunked (they have no manifest and cannot be
    /// served: push them again).
    pub fn open(
        config: &ImagesConfig,
        store: Store,
        chunks: Arc<dyn ChunkStore>,
    ) -> Result<Self, ArchivesError> {
        let a = Archives {
            store,
            chunks,
            max_archive_bytes: config.max_archive_bytes,
            meta: Mutex::default(),
            gc: tokio::sync::RwLock::new(()),
        };
        for i in a.list()? {
            if ChunkId::from_hex(&i.manifest).is_none() {
                tracing::error!(archive = %i.archive, tags = ?i.tags, "image archive was pushed before archives were stored as chunks; agents cannot fetch it until it is pushed again");
            }
        }
        Ok(a)
    }

    /// Bounds for an image manifest: one entry, at most `max_archive_bytes`.
    fn limits(&self) -> Limits {
        Limits {
            max_entries: 1,
            max_encoded_bytes: cairn_api::images::MAX_IMAGE_MANIFEST_BYTES,
            ..Limits::DEFAULT
        }
    }

    /// Checks an archive pushed as chunks and records it: `manifest_bytes` (one
    /// file) must list chunks all present, whose bytes hash to `archive` and make a
    /// `docker save` archive Docker can load. Returns the record and whether it is
    /// new (`false`: the archive was committed before).
    pub async fn commit(
        &self,
        manifest_bytes: &[u8],
        archive: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<(ImageRecord, bool), ArchivesError> {
        if !is_archive_hash(archive) {
            return Err(ArchivesError::Invalid(
                "archive must be the archive's BLAKE3 hash: 64 lowercase hexadecimal digits".into(),
            ));
        }
        let manifest = Manifest::decode(manifest_bytes, &self.limits())
            .map_err(|e| ArchivesError::Invalid(format!("invalid image manifest: {e}")))?;
        let (chunks, size) = archive_chunks(&manifest).map_err(ArchivesError::Invalid)?;
        let chunks = chunks.to_vec();
        if size > self.max_archive_bytes {
            return Err(ArchivesError::TooLarge {
                size,
                max: self.max_archive_bytes,
            });
        }
        // The smallest tar is its two zero end blocks.
        if size < 1024 {
            return Err(ArchivesError::Invalid(format!(
                "the archive is {size} bytes, too small for a tar archive (at least 1024)"
            )));
        }
        if let Some(existing) = self.get(archive) {
            if ChunkId::from_hex(&existing.manifest).is_some() {
                return Ok((existing, false));
            }
        }
        // The canonical encoding names the manifest, whatever bytes came in.
        let encoded = manifest.encode();
        let manifest_id = ChunkId::of(&encoded);
        let _no_gc = self.gc.read().await;
        let unique = manifest.unique_chunks();
        let mut missing = 0usize;
        for batch in unique.chunks(CONTAINS_BATCH) {
            let ids: Vec<ChunkId> = batch.iter().map(|c| c.id).collect();
            missing += self
                .chunks
                .contains(&ids)
                .await?
                .iter()
                .filter(|p| !**p)
                .count();
        }
        if missing > 0 {
            return Err(ArchivesError::ChunksMissing {
                count: missing,
                total: unique.len(),
            });
        }
        let info = {
            let store = self.chunks.clone();
            let rt = tokio::runtime::Handle::current();
            let expected = archive.to_string();
            tokio::task::spawn_blocking(move || verify(store, rt, chunks, &expected))
                .await
                .map_err(|e| ArchivesError::Stopped(e.to_string()))??
        };
        self.chunks.put(manifest_id, Bytes::from(encoded)).await?;
        let (record, new) = {
            let _meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
            match self.get(archive) {
                Some(existing) if ChunkId::from_hex(&existing.manifest).is_some() => {
                    (existing, false)
                }
                _ => {
                    let record = ImageRecord {
                        archive: archive.to_string(),
                        manifest: manifest_id.to_hex(),
                        size_bytes: size,
                        image_id: info.image_id.clone(),
                        tags: info.tags.clone(),
                        uploaded_ms: now_ms,
                        uploaded_by: by.to_string(),
                    };
                    self.store.put(Tree::Images, &record.archive, &record)?;
                    (record, true)
                }
            }
        };
        self.store.flush().await?;
        if new {
            tracing::info!(archive = %record.archive, manifest = %record.manifest, image = %record.image_id, tags = ?record.tags, size_bytes = record.size_bytes, layers = info.layers, by, "image archive committed");
        }
        Ok((record, new))
    }

    /// Every committed archive, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ArchivesError> {
        let mut all: Vec<ImageRecord> = self.store.all(Tree::Images)?;
        all.sort_by(|a, b| {
            b.uploaded_ms
                .cmp(&a.uploaded_ms)
                .then_with(|| a.archive.cmp(&b.archive))
        });
        Ok(all)
    }

    /// The committed archive with this BLAKE3 hash.
    pub fn get(&self, archive: &str) -> Option<ImageRecord> {
        if !is_archive_hash(archive) {
            return None;
        }
        match self.store.get(Tree::Images, archive) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%archive, error = %e, "cannot read image record");
                None
            }
        }
    }

    /// The newest committed archive carrying the tag `tag` exactly, or `tag:latest`
    /// when `tag` names no tag (as Docker reads `busybox` as `busybox:latest`).
    pub fn by_tag(&self, tag: &str) -> Option<ImageRecord> {
        let latest = implicit_latest(tag);
        let all = match self.list() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list image records");
                return None;
            }
        };
        // `list` is newest first.
        all.into_iter().find(|r| {
            r.tags
                .iter()
                .any(|t| t == tag || latest.as_deref() == Some(t.as_str()))
        })
    }

    /// Removes a committed archive's record; its chunks go at the next collection
    /// (a fetch under way keeps the chunks it has not read yet until then). Whether
    /// anything still uses it is the caller's question (the API refuses while an
    /// enabled blueprint does).
    pub fn remove(&self, archive: &str) -> Result<ImageRecord, ArchivesError> {
        let _meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let rec = self
            .get(archive)
            .ok_or_else(|| ArchivesError::NotFound(archive.to_string()))?;
        self.store.remove(Tree::Images, archive)?;
        tracing::info!(%archive, manifest = %rec.manifest, image = %rec.image_id, tags = ?rec.tags, "image archive removed");
        Ok(rec)
    }

    /// A committed archive's record and chunk list, for serving it over the link.
    pub async fn open_archive(
        &self,
        archive: &str,
    ) -> Result<(ImageRecord, Vec<ChunkRef>), ArchivesError> {
        let rec = self
            .get(archive)
            .ok_or_else(|| ArchivesError::NotFound(archive.to_string()))?;
        let manifest = self.manifest_of(&rec).await?;
        let (chunks, size) = archive_chunks(&manifest).map_err(|e| ArchivesError::Chunk {
            archive: archive.to_string(),
            detail: e,
        })?;
        if size != rec.size_bytes {
            return Err(ArchivesError::Chunk {
                archive: archive.to_string(),
                detail: format!(
                    "its manifest lists {size} bytes, its record {}",
                    rec.size_bytes
                ),
            });
        }
        Ok((rec, chunks.to_vec()))
    }

    /// The decoded manifest of a record, from the chunk store (verified there).
    async fn manifest_of(&self, rec: &ImageRecord) -> Result<Manifest, ArchivesError> {
        let lost = || ArchivesError::ManifestLost {
            archive: rec.archive.clone(),
            manifest: rec.manifest.clone(),
        };
        let id = ChunkId::from_hex(&rec.manifest).ok_or_else(lost)?;
        let bytes = self.chunks.get(id).await?.ok_or_else(lost)?;
        Manifest::decode(&bytes, &self.limits()).map_err(|e| ArchivesError::Chunk {
            archive: rec.archive.clone(),
            detail: format!("its stored manifest is invalid: {e}"),
        })
    }

    /// Keeps commits out while the chunk store is collected: hold the guard from
    /// marking ([`Archives::live_chunks`]) to the end of the sweep.
    pub async fn pause_commits(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gc.write().await
    }

    /// The images' part of the chunk store's live set: every image manifest and
    /// every chunk it lists. A manifest that cannot be read stops the collection
    /// (an error) rather than letting its chunks be swept.
    pub async fn live_chunks(&self) -> Result<HashSet<ChunkId>, ArchivesError> {
        let mut live = HashSet::new();
        for rec in self.list()? {
            let Some(id) = ChunkId::from_hex(&rec.manifest) else {
                continue; // pushed before chunking: nothing of it is in the store
            };
            live.insert(id);
            let m = self.manifest_of(&rec).await?;
            live.extend(m.unique_chunks().iter().map(|c| c.id));
        }
        Ok(live)
    }
}

/// `name:latest` for a reference without a tag or digest, else `None`.
fn implicit_latest(reference: &str) -> Option<String> {
    Reference::parse(reference)
        .ok()
        .filter(|r| r.tag().is_none() && r.digest().is_none())
        .map(|_| format!("{reference}:latest"))
}

pub use cairn_shared::images::blake3_file;

/// Reads the archive back from its chunks: its BLAKE3, then its layout. Blocking
/// (run on the blocking pool); memory is one chunk at a time.
fn verify(
    store: Arc<dyn ChunkStore>,
    rt: tokio::runtime::Handle,
    chunks: Vec<ChunkRef>,
    expected: &str,
) -> Result<ArchiveInfo, ArchivesError> {
    use std::io::{Read, Seek};
    let chunk_err = |e: std::io::Error| ArchivesError::Chunk {
        archive: expected.to_string(),
        detail: e.to_string(),
    };
    let mut r = ChunkedReader::new(store, rt, chunks);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = r.read(&mut buf).map_err(chunk_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finalize().to_hex().as_str() != expected {
        return Err(ArchivesError::HashMismatch);
    }
    r.rewind().map_err(chunk_err)?;
    Ok(inspect(std::io::BufReader::with_capacity(64 * 1024, r))?)
}

/// An image manifest for `data` (what `cairn images push` builds), for tests here
/// and in the link's tests.
#[cfg(test)]
pub(crate) fn manifest_for(data: &[u8], params: cairn_shared::chunks::Params) -> Manifest {
    let chunks = cairn_shared::chunks::chunk_bytes(data, params);
    Manifest::new(
        params,
        vec![cairn_shared::chunks::Entry {
            path: "image.tar".into(),
            kind: EntryKind::File { chunks },
            mode: 0o644,
            size: data.len() as u64,
            mtime_ns: 0,
        }],
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::images::chunked::tests::MemChunks;
    use crate::images::inspect::fixtures::classic;
    use cairn_shared::chunks::Params;

    #[test]
    fn implicit_tags() {
        assert_eq!(
            implicit_latest("busybox").as_deref(),
            Some("busybox:latest")
        );
        assert_eq!(
            implicit_latest("127.0.0.1:5000/x").as_deref(),
            Some("127.0.0.1:5000/x:latest")
        );
        assert_eq!(implicit_latest("x:1"), None);
        assert_eq!(implicit_latest("x@sha256:00"), None);
    }

    const SMALL: Params = Params::with_avg(1024);

    fn archives(dir: &std::path::Path, max: u64) -> (Archives, Arc<MemChunks>) {
        let store = Store::open(&dir.join("state")).unwrap();
        let config = ImagesConfig {
            max_archive_bytes: max,
            ..Default::default()
        };
        let chunks = Arc::new(MemChunks::default());
        (
            Archives::open(&config, store, chunks.clone()).unwrap(),
            chunks,
        )
    }

    /// A test archive, its manifest, and its hash; the chunks are not stored.
    fn pushed(tags: &[&str]) -> (Vec<u8>, Manifest, String) {
        let (tar, _) = classic(tags);
        let m = manifest_for(&tar, SMALL);
        let hash = blake3::hash(&tar).to_hex().to_string();
        (tar, m, hash)
    }

    fn send(chunks: &MemChunks, tar: &[u8], m: &Manifest) {
        let (list, _) = archive_chunks(m).unwrap();
        chunks.put_all(tar, list);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_needs_every_chunk_then_checks_and_records_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, chunks) = archives(tmp.path(), 1 << 20);
        let (tar, m, hash) = pushed(&["t:1"]);
        let (list, _) = archive_chunks(&m).unwrap();
        assert!(list.len() > 2, "{}", list.len());
        // All but one chunk sent: refused, naming how many are missing.
        chunks.put_all(&tar, list);
        chunks.map.lock().unwrap().remove(&list[1].id);
        let e = a
            .commit(&m.encode(), &hash, "admin", 1_000)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ArchivesError::ChunksMissing { count: 1, .. }),
            "{e}"
        );
        assert!(a.list().unwrap().is_empty());
        send(&chunks, &tar, &m);
        let (rec, new) = a
            .commit(&m.encode(), &hash, "teacher", 2_000)
            .await
            .unwrap();
        assert!(new);
        assert_eq!(rec.archive, hash);
        assert_eq!(rec.manifest, m.id().to_hex());
        assert_eq!(rec.size_bytes, tar.len() as u64);
        assert_eq!(rec.uploaded_by, "teacher");
        assert_eq!(rec.tags, vec!["t:1".to_string()]);
        assert!(rec.image_id.starts_with("sha256:"));
        // The manifest is in the chunk store, and it and its chunks are live.
        assert!(chunks.map.lock().unwrap().contains_key(&m.id()));
        let live = a.live_chunks().await.unwrap();
        assert!(live.contains(&m.id()));
        assert!(list.iter().all(|c| live.contains(&c.id)));
        assert_eq!(live.len(), m.unique_chunks().len() + 1);
        // Served as the same chunk list.
        let (r, served) = a.open_archive(&hash).await.unwrap();
        assert_eq!((r, served.as_slice()), (rec.clone(), list));
        // Committing again finds it.
        let (again, new) = a.commit(&m.encode(), &hash, "admin", 3_000).await.unwrap();
        assert!(!new);
        assert_eq!(again, rec);
        assert_eq!(a.by_tag("t:1").unwrap().archive, hash);
        assert!(a.by_tag("t").is_none());
        // Removed: the record goes, and with it the chunks' liveness.
        a.remove(&hash).unwrap();
        assert!(a.get(&hash).is_none());
        assert!(a.live_chunks().await.unwrap().is_empty());
        assert!(matches!(
            a.open_archive(&hash).await.unwrap_err(),
            ArchivesError::NotFound(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_bytes_and_bad_manifests_are_refused_with_a_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, chunks) = archives(tmp.path(), 16384);
        let (tar, m, hash) = pushed(&["t:1"]);
        send(&chunks, &tar, &m);
        // Chunks that do not make the hash claimed.
        let other = "ab".repeat(32);
        let e = a.commit(&m.encode(), &other, "admin", 1).await.unwrap_err();
        assert!(matches!(e, ArchivesError::HashMismatch), "{e}");
        // A chunk corrupted in the store is named.
        let (list, _) = archive_chunks(&m).unwrap();
        chunks.corrupt(list[0].id, &vec![7u8; list[0].len as usize]);
        let e = a.commit(&m.encode(), &hash, "admin", 1).await.unwrap_err();
        assert!(
            matches!(&e, ArchivesError::Chunk { detail, .. } if detail.contains("corrupt")),
            "{e}"
        );
        // Not a docker save archive: the inspector's reason.
        let mut plain = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        plain
            .append_data(&mut h, "hello.txt", &b"hi\n"[..])
            .unwrap();
        let plain = plain.into_inner().unwrap();
        let pm = manifest_for(&plain, SMALL);
        send(&chunks, &plain, &pm);
        let e = a
            .commit(
                &pm.encode(),
                blake3::hash(&plain).to_hex().as_ref(),
                "admin",
                1,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a docker save archive: manifest.json missing"
        );
        // Too large for this controller, before anything is read.
        let big = manifest_for(&vec![1u8; 20000], SMALL);
        let e = a
            .commit(&big.encode(), &hash, "admin", 1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ArchivesError::TooLarge {
                    size: 20000,
                    max: 16384
                }
            ),
            "{e}"
        );
        // Two files, or garbage, or a bad hash.
        let mut two = m.clone();
        let mut second = two.entries[0].clone();
        second.path = "other.tar".into();
        two.entries.push(second);
        let e = a
            .commit(&two.encode(), &hash, "admin", 1)
            .await
            .unwrap_err();
        assert!(matches!(e, ArchivesError::Invalid(_)), "{e}");
        let e = a.commit(b"garbage", &hash, "admin", 1).await.unwrap_err();
        assert!(e.to_string().starts_with("invalid image manifest"), "{e}");
        let e = a.commit(&m.encode(), "nope", "admin", 1).await.unwrap_err();
        assert!(matches!(e, ArchivesError::Invalid(_)), "{e}");
        assert!(a.list().unwrap().is_empty());
    }
}
