//! Uploaded image archives (`cairn images push`): a resumable upload area, the
//! committed archives agents fetch over the link, and their records.
//!
//! Files, under the data directory:
//!
//! * `images/uploads/<upload id>.part` — an upload in progress. Its length *is* the
//!   upload's offset: bytes that arrived before a dropped connection stay, and the
//!   next `PATCH` (or the next `cairn images push` of the same file) continues there.
//! * `images/archives/<blake3>.tar` — a committed archive, named by its BLAKE3 hash,
//!   which agents check after fetching it.
//!
//! Records, in sled: `image_uploads/<upload id>` ([`UploadRecord`]) and
//! `images/<blake3>` ([`ImageRecord`]).
//!
//! A commit checks size and hash, then reads the `docker save` tar ([`inspect`]), so
//! a file Docker cannot load is refused when it is pushed, with a reason, rather than
//! when some host tries to launch from it. Abandoned uploads are removed after
//! [`UPLOAD_TTL_MS`] without a byte.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::images::is_archive_hash;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::config::ImagesConfig;
use crate::store::{Store, StoreError, Tree};

/// An upload without a new byte for this long is removed (24 h).
pub const UPLOAD_TTL_MS: u64 = 24 * 3600 * 1000;
/// Most uploads in progress at once; each may hold up to `max_archive_bytes` of disk.
pub const MAX_UPLOADS: usize = 32;
/// How long a request waits for another one on the same upload (a client retrying
/// while the server has not yet noticed its previous connection dropped).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// Read size for hashing and for serving archives.
pub const READ_CHUNK: usize = 1 << 20;

/// Largest `manifest.json` read into memory.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest image config read into memory (they are a few KiB).
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most members of an archive indexed while inspecting it (a `docker save` archive
/// has a handful per layer).
const MAX_MEMBERS: usize = 100_000;
/// Most tags one archive may carry, and the longest tag.
const MAX_TAGS: usize = 100;
const MAX_TAG_LEN: usize = 255;
/// Symbolic links followed in a row inside an archive (old-style `docker save`
/// links identical layers to one copy).
const MAX_LINK_HOPS: usize = 8;

/// A committed archive, as stored and as the API shows it.
pub use cairn_api::images::ImageRecord;

/// An upload in progress. The offset is not stored: it is the part file's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: String,
    pub blake3: String,
    pub size_bytes: u64,
    pub created_ms: u64,
    /// Last time bytes arrived (or the upload was created); drives expiry.
    pub updated_ms: u64,
    pub created_by: String,
}

/// An upload and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    pub id: String,
    pub blake3: String,
    pub size_bytes: u64,
    /// Bytes received so far: where the next `PATCH` starts.
    pub offset: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// An upload as the API answers about it: not done yet.
impl From<UploadStatus> for cairn_api::images::UploadAnswer {
    fn from(s: UploadStatus) -> Self {
        cairn_api::images::UploadAnswer {
            id: Some(s.id),
            blake3: s.blake3,
            size_bytes: s.size_bytes,
            offset: s.offset,
            done: false,
            image: None,
        }
    }
}

/// What starting an upload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// A new, empty upload.
    Created(UploadStatus),
    /// An unfinished upload of the same bytes: continue it from its offset.
    Resumed(UploadStatus),
    /// The archive is already committed; nothing to send.
    Committed(ImageRecord),
}

/// What a `docker save` archive holds, as far as the controller needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// `sha256:<config hex>`.
    pub image_id: String,
    pub tags: Vec<String>,
    pub layers: usize,
}

/// Why an archive is not one `docker save` image.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("not a docker save archive: cannot read it as a tar file ({0})")]
    NotTar(String),
    #[error("not a docker save archive: manifest.json missing")]
    NoManifest,
    #[error("not a docker save archive: manifest.json is invalid ({0})")]
    BadManifest(String),
    #[error("not a docker save archive: manifest.json lists no image")]
    NoImage,
    #[error("the archive holds {0} images; push one image per archive (`docker save NAME:TAG -o FILE.tar`)")]
    SeveralImages(usize),
    #[error("not a docker save archive: it has more than {MAX_MEMBERS} files")]
    TooManyMembers,
    #[error("not a docker save archive: the image config {0:?} named in manifest.json is missing")]
    ConfigMissing(String),
    #[error(
        "not a docker save archive: the image config's name {0:?} does not carry its sha256 digest"
    )]
    ConfigName(String),
    #[error("the archive is damaged: the image config {path:?} has sha256 {actual}, not the {expected} its name says")]
    ConfigDigest {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("not a docker save archive: layer {0:?} named in manifest.json is missing")]
    LayerMissing(String),
    #[error("not a docker save archive: the image config is invalid ({0})")]
    BadConfig(String),
    #[error("the archive is damaged: layer {path:?} has digest {actual}, not {expected}")]
    LayerDigest {
        path: String,
        expected: String,
        actual: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ArchivesError {
    #[error("no upload {0} (it was committed or cancelled, or expired after 24 h without data); run `cairn images push` again")]
    UploadNotFound(String),
    #[error("no image archive {0} on this controller")]
    NotFound(String),
    #[error("the archive is {size} bytes; this controller accepts at most {max} bytes (images.max_archive_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("the upload is at byte {current}, not {requested}; continue from byte {current}")]
    OffsetMismatch { current: u64, requested: u64 },
    #[error("the request carries more bytes than the archive's declared size of {size} bytes; the upload keeps the first {size}")]
    PastEnd { size: u64 },
    #[error("another request is writing to upload {0}; retry in a moment")]
    Busy(String),
    #[error("the upload is incomplete: {have} of {size} bytes received; send the rest before committing")]
    Incomplete { have: u64, size: u64 },
    #[error("the uploaded bytes do not match the archive's BLAKE3 hash (corrupted in transit or changed on disk); push again")]
    HashMismatch,
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("too many unfinished uploads ({0}); finish or cancel one, or wait for abandoned ones to expire")]
    TooManyUploads(usize),
    #[error("the request body broke off after {written} bytes ({detail}); they are kept, continue from the upload's offset")]
    Body { written: u64, detail: String },
    #[error("image archive store: {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchivesError {
    let path = path.to_path_buf();
    move |source| ArchivesError::Io { what, path, source }
}

/// Whether `s` is an upload id as [`Archives::begin`] makes them: `u-` and 16 hex.
pub fn is_upload_id(s: &str) -> bool {
    s.strip_prefix("u-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The uploads and archives of one controller.
#[derive(Debug)]
pub struct Archives {
    store: Store,
    uploads_dir: PathBuf,
    archives_dir: PathBuf,
    max_archive_bytes: u64,
    /// One writer per upload: a `PATCH`, commit or cancel holds its upload's lock, so
    /// two requests never append to one file at once.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises decisions over several records: one upload per archive, and a
    /// commit against a delete of the same archive.
    meta: Mutex<()>,
}

impl Archives {
    /// Opens the store under `data_root/images`, creating it, and sweeps what a
    /// crash or an old run left: part files without a record, archives without a
    /// record, and expired uploads.
    pub fn open(
        data_root: &Path,
        config: &ImagesConfig,
        store: Store,
        now_ms: u64,
    ) -> Result<Self, ArchivesError> {
        let root = data_root.join("images");
        let uploads_dir = root.join("uploads");
        let archives_dir = root.join("archives");
        for d in [&root, &uploads_dir, &archives_dir] {
            cairn_shared::fsutil::create_private_dir(d)
                .map_err(io_err("cannot create directory", d))?;
        }
        let a = Archives {
            store,
            uploads_dir,
            archives_dir,
            max_archive_bytes: config.max_archive_bytes,
            busy: Mutex::default(),
            meta: Mutex::default(),
        };
        a.sweep()?;
        a.expire_uploads(now_ms);
        Ok(a)
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.uploads_dir.join(format!("{id}.part"))
    }

    fn archive_path(&self, archive: &str) -> PathBuf {
        self.archives_dir.join(format!("{archive}.tar"))
    }

    /// Removes files no record points at (left by a crash between a file operation
    /// and its record), so they cannot fill the disk unseen.
    fn sweep(&self) -> Result<(), ArchivesError> {
        let uploads: Vec<UploadRecord> = self.store.all(Tree::ImageUploads)?;
        let images: Vec<ImageRecord> = self.store.all(Tree::Images)?;
        let keep_parts: Vec<String> = uploads.iter().map(|u| format!("{}.part", u.id)).collect();
        let keep_archives: Vec<String> = images
            .iter()
            .map(|i| format!("{}.tar", i.archive))
            .collect();
        for (dir, keep) in [
            (&self.uploads_dir, keep_parts),
            (&self.archives_dir, keep_archives),
        ] {
            let entries = std::fs::read_dir(dir).map_err(io_err("cannot list", dir))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    tracing::warn!(file = %e.path().display(), "removing an image file no record refers to");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for i in &images {
            let p = self.archive_path(&i.archive);
            if !p.exists() {
                tracing::error!(archive = %i.archive, path = %p.display(), "image archive file is missing; agents cannot fetch it until it is pushed again");
            }
        }
        Ok(())
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.entry(id.to_string()).or_default().clone()
    }

    fn forget_lock(&self, id: &str) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(id);
    }

    async fn hold(&self, id: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, ArchivesError> {
        tokio::time::timeout(BUSY_WAIT, self.lock_for(id).lock_owned())
            .await
            .map_err(|_| ArchivesError::Busy(id.to_string()))
    }

    fn upload(&self, id: &str) -> Result<UploadRecord, ArchivesError> {
        if !is_upload_id(id) {
            return Err(ArchivesError::UploadNotFound(id.to_string()));
        }
        self.store
            .get(Tree::ImageUploads, id)?
            .ok_or_else(|| ArchivesError::UploadNotFound(id.to_string()))
    }

    /// Bytes received for an upload: its part file's length (0 if it is missing).
    fn received(&self, id: &str) -> Result<u64, ArchivesError> {
        let p = self.part_path(id);
        match std::fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err("cannot read", &p)(e)),
        }
    }

    fn status_of(&self, rec: &UploadRecord) -> Result<UploadStatus, ArchivesError> {
        Ok(UploadStatus {
            id: rec.id.clone(),
            blake3: rec.blake3.clone(),
            size_bytes: rec.size_bytes,
            offset: self.received(&rec.id)?,
            created_ms: rec.created_ms,
            updated_ms: rec.updated_ms,
        })
    }

    /// Starts an upload of `size_bytes` bytes hashing to `blake3`, or finds the
    /// unfinished one of the same bytes (how a second `push` resumes), or the archive
    /// if it is already committed.
    pub fn begin(
        &self,
        blake3: &str,
        size_bytes: u64,
        by: &str,
        now_ms: u64,
    ) -> Result<Begin, ArchivesError> {
        if !is_archive_hash(blake3) {
            return Err(ArchivesError::Invalid(
                "blake3 must be the archive's BLAKE3 hash: 64 lowercase hexadecimal digits".into(),
            ));
        }
        // The smallest tar is its two zero end blocks.
        if size_bytes < 1024 {
            return Err(ArchivesError::Invalid(format!(
                "size_bytes {size_bytes} is too small for a tar archive (at least 1024)"
            )));
        }
        if size_bytes > self.max_archive_bytes {
            return Err(ArchivesError::TooLarge {
                size: size_bytes,
                max: self.max_archive_bytes,
            });
        }
        self.expire_uploads(now_ms);
        let _meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(img) = self.get(blake3) {
            return Ok(Begin::Committed(img));
        }
        let uploads: Vec<UploadRecord> = self.store.all(Tree::ImageUploads)?;
        if let Some(u) = uploads
            .iter()
            .find(|u| u.blake3 == blake3 && u.size_bytes == size_bytes)
        {
            return Ok(Begin::Resumed(self.status_of(u)?));
        }
        if uploads.len() >= MAX_UPLOADS {
            return Err(ArchivesError::TooManyUploads(uploads.len()));
        }
        let id = format!("u-{}", hex::encode(rand::random::<[u8; 8]>()));
        let rec = UploadRecord {
            id: id.clone(),
            blake3: blake3.to_string(),
            size_bytes,
            created_ms: now_ms,
            updated_ms: now_ms,
            created_by: by.to_string(),
        };
        let p = self.part_path(&id);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io_err("cannot create", &p))?;
        self.store.put(Tree::ImageUploads, &id, &rec)?;
        tracing::info!(upload = %id, archive = %blake3, size_bytes, by, "image upload started");
        Ok(Begin::Created(self.status_of(&rec)?))
    }

    /// Where an upload stands.
    pub fn status(&self, id: &str) -> Result<UploadStatus, ArchivesError> {
        let rec = self.upload(id)?;
        self.status_of(&rec)
    }

    /// Appends a request body to an upload. `offset` must be the upload's current
    /// length (the client's idea of where it is); `declared_len`, the request's
    /// `Content-Length` if it has one, lets a body that would go past the end be
    /// refused before a byte is read. Bytes are written as they arrive, and whatever
    /// arrived before the body broke off is kept and made durable.
    pub async fn append<S, B, E>(
        &self,
        id: &str,
        offset: u64,
        declared_len: Option<u64>,
        mut body: S,
        now_ms: u64,
    ) -> Result<UploadStatus, ArchivesError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        self.upload(id)?;
        let _guard = self.hold(id).await?;
        // Committed, cancelled or expired while this request waited.
        let mut rec = self.upload(id)?;
        let path = self.part_path(id);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io_err("cannot open", &path))?;
        let current = file
            .metadata()
            .await
            .map_err(io_err("cannot read", &path))?
            .len();
        if offset != current {
            return Err(ArchivesError::OffsetMismatch {
                current,
                requested: offset,
            });
        }
        let room = rec.size_bytes.saturating_sub(current);
        if declared_len.is_some_and(|n| n > room) {
            return Err(ArchivesError::PastEnd {
                size: rec.size_bytes,
            });
        }
        let mut written = 0u64;
        let mut outcome = Ok(());
        while let Some(chunk) = body.next().await {
            let bytes = match chunk {
                Ok(b) => b,
                Err(e) => {
                    outcome = Err(ArchivesError::Body {
                        written,
                        detail: e.to_string(),
                    });
                    break;
                }
            };
            let bytes = bytes.as_ref();
            let fits = bytes
                .len()
                .min(usize::try_from(room - written).unwrap_or(usize::MAX));
            if let Err(e) = file.write_all(&bytes[..fits]).await {
                outcome = Err(io_err("cannot write", &path)(e));
                break;
            }
            written += fits as u64;
            if fits < bytes.len() {
                outcome = Err(ArchivesError::PastEnd {
                    size: rec.size_bytes,
                });
                break;
            }
        }
        // Whatever was written is the resume point: make it durable either way.
        let synced = async {
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        if let Err(e) = synced {
            return Err(io_err("cannot write", &path)(e));
        }
        if written > 0 {
            rec.updated_ms = now_ms;
            self.store.put(Tree::ImageUploads, id, &rec)?;
        }
        let offset = current + written;
        match &outcome {
            Ok(()) => {
                tracing::debug!(upload = %id, offset, written, "image upload appended")
            }
            Err(e) => {
                tracing::info!(upload = %id, offset, written, error = %e, "image upload request ended early")
            }
        }
        outcome?;
        Ok(UploadStatus {
            offset,
            ..self.status_of(&rec)?
        })
    }

    /// Verifies a complete upload (size, BLAKE3, `docker save` layout) and makes it a
    /// committed archive. A hash mismatch or an archive Docker could not load
    /// discards the upload: its bytes are known to be wrong. Returns the record and
    /// whether it is new (`false`: the same archive was committed meanwhile).
    pub async fn commit(
        &self,
        id: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<(ImageRecord, bool), ArchivesError> {
        self.upload(id)?;
        let _guard = self.hold(id).await?;
        let rec = self.upload(id)?;
        let have = self.received(id)?;
        if have != rec.size_bytes {
            return Err(ArchivesError::Incomplete {
                have,
                size: rec.size_bytes,
            });
        }
        let path = self.part_path(id);
        let expected = rec.blake3.clone();
        let checked = {
            let path = path.clone();
            let shown = path.clone();
            tokio::task::spawn_blocking(move || verify(&path, &expected))
                .await
                .map_err(|e| ArchivesError::Io {
                    what: "verification stopped for",
                    path: shown,
                    source: std::io::Error::other(e.to_string()),
                })?
        };
        let info = match checked {
            Ok(info) => info,
            Err(e @ (ArchivesError::HashMismatch | ArchivesError::Inspect(_))) => {
                tracing::warn!(upload = %id, archive = %rec.blake3, error = %e, "image upload refused at commit; discarding it");
                self.discard(id)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let (record, new) = {
            let _meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
            match self.get(&rec.blake3) {
                Some(existing) => {
                    self.discard(id)?;
                    (existing, false)
                }
                None => {
                    let target = self.archive_path(&rec.blake3);
                    std::fs::rename(&path, &target).map_err(io_err("cannot move", &path))?;
                    if let Ok(d) = std::fs::File::open(&self.archives_dir) {
                        let _ = d.sync_all();
                    }
                    let record = ImageRecord {
                        archive: rec.blake3.clone(),
                        size_bytes: rec.size_bytes,
                        image_id: info.image_id.clone(),
                        tags: info.tags.clone(),
                        uploaded_ms: now_ms,
                        uploaded_by: by.to_string(),
                    };
                    self.store.put(Tree::Images, &record.archive, &record)?;
                    self.store.remove(Tree::ImageUploads, id)?;
                    self.forget_lock(id);
                    (record, true)
                }
            }
        };
        self.store.flush().await?;
        if new {
            tracing::info!(archive = %record.archive, image = %record.image_id, tags = ?record.tags, size_bytes = record.size_bytes, layers = info.layers, by, "image archive committed");
        }
        Ok((record, new))
    }

    /// Cancels an upload and removes its bytes.
    pub async fn cancel(&self, id: &str) -> Result<(), ArchivesError> {
        self.upload(id)?;
        let _guard = self.hold(id).await?;
        self.upload(id)?;
        self.discard(id)?;
        tracing::info!(upload = %id, "image upload cancelled");
        Ok(())
    }

    /// Removes an upload's record and part file. The caller holds its lock (or knows
    /// nobody does).
    fn discard(&self, id: &str) -> Result<(), ArchivesError> {
        self.store.remove(Tree::ImageUploads, id)?;
        let p = self.part_path(id);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove", &p)(e)),
        }
        self.forget_lock(id);
        Ok(())
    }

    /// Removes uploads that received nothing for [`UPLOAD_TTL_MS`]; one a request is
    /// writing to right now is left alone.
    pub fn expire_uploads(&self, now_ms: u64) {
        let uploads: Vec<UploadRecord> = match self.store.all(Tree::ImageUploads) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "cannot list image uploads for expiry");
                return;
            }
        };
        for u in uploads {
            if u.updated_ms.saturating_add(UPLOAD_TTL_MS) > now_ms {
                continue;
            }
            let lock = self.lock_for(&u.id);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            match self.discard(&u.id) {
                Ok(()) => {
                    tracing::info!(upload = %u.id, archive = %u.blake3, idle_ms = now_ms.saturating_sub(u.updated_ms), "abandoned image upload removed")
                }
                Err(e) => {
                    tracing::error!(upload = %u.id, error = %e, "cannot remove abandoned image upload")
                }
            }
        }
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

    /// Uploads in progress, oldest first.
    pub fn uploads(&self) -> Result<Vec<UploadStatus>, ArchivesError> {
        let mut all: Vec<UploadRecord> = self.store.all(Tree::ImageUploads)?;
        all.sort_by_key(|u| u.created_ms);
        all.iter().map(|u| self.status_of(u)).collect()
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

    /// Removes a committed archive and its file. Whether anything still uses it is
    /// the caller's question (the API refuses while an enabled blueprint does).
    pub fn remove(&self, archive: &str) -> Result<ImageRecord, ArchivesError> {
        let _meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let rec = self
            .get(archive)
            .ok_or_else(|| ArchivesError::NotFound(archive.to_string()))?;
        self.store.remove(Tree::Images, archive)?;
        let p = self.archive_path(archive);
        // A fetch under way keeps reading its open file; the name goes now.
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove", &p)(e)),
        }
        tracing::info!(%archive, image = %rec.image_id, tags = ?rec.tags, "image archive removed");
        Ok(rec)
    }

    /// Opens a committed archive for reading, for the link: the file and its record.
    /// A file whose length is not the recorded size is refused, not served.
    pub async fn open_archive(
        &self,
        archive: &str,
    ) -> Result<(tokio::fs::File, ImageRecord), ArchivesError> {
        let rec = self
            .get(archive)
            .ok_or_else(|| ArchivesError::NotFound(archive.to_string()))?;
        let p = self.archive_path(archive);
        let f = tokio::fs::File::open(&p)
            .await
            .map_err(io_err("cannot open", &p))?;
        let len = f.metadata().await.map_err(io_err("cannot read", &p))?.len();
        if len != rec.size_bytes {
            return Err(ArchivesError::Io {
                what: "damaged archive file (wrong length)",
                path: p,
                source: std::io::Error::other(format!(
                    "{len} bytes on disk, {} recorded",
                    rec.size_bytes
                )),
            });
        }
        Ok((f, rec))
    }
}

/// `name:latest` for a reference without a tag or digest, else `None`.
fn implicit_latest(reference: &str) -> Option<String> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    (!last.contains(':') && !reference.contains('@')).then(|| format!("{reference}:latest"))
}

pub use cairn_shared::images::blake3_file;

/// Checks a complete upload: its BLAKE3, then its layout. Blocking.
fn verify(path: &Path, expected: &str) -> Result<ArchiveInfo, ArchivesError> {
    let actual = blake3_file(path).map_err(io_err("cannot read", path))?;
    if actual != expected {
        return Err(ArchivesError::HashMismatch);
    }
    let f = std::fs::File::open(path).map_err(io_err("cannot open", path))?;
    Ok(inspect(std::io::BufReader::new(f))?)
}

/// One member of an archive, as far as inspection cares.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// A member path with `./` prefixes, empty and `.` components, and a trailing `/`
/// removed; `..` is resolved, and `None` if it climbs out of the archive.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = vec![];
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Reads a `docker save` archive: `manifest.json` must list exactly one image whose
/// config is present and matches the sha256 its name carries, and whose layers are
/// all present and match the config's `rootfs.diff_ids`. Works for both the classic layout (`<hex>.json`, `<id>/layer.tar`)
/// and the OCI one of Docker 25+ (`blobs/sha256/<hex>`).
pub fn inspect<R: Read + Seek>(reader: R) -> Result<ArchiveInfo, InspectError> {
    let not_tar = |e: std::io::Error| InspectError::NotTar(e.to_string());
    let mut archive = tar::Archive::new(reader);
    let mut members: HashMap<String, Member> = HashMap::new();
    let mut manifest: Option<Vec<u8>> = None;
    {
        let entries = archive.entries_with_seek().map_err(not_tar)?;
        for entry in entries {
            let mut entry = entry.map_err(not_tar)?;
            if members.len() >= MAX_MEMBERS {
                return Err(InspectError::TooManyMembers);
            }
            let Some(name) = entry.path().ok().and_then(|p| normalize(&p)) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // A symlink is relative to its own directory; a hard link names a
                // member from the archive's root.
                let target = if kind.is_symlink() {
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    normalize(&dir.join(target))
                } else {
                    normalize(Path::new(&target))
                };
                target.map_or(Member::Other, Member::Link)
            } else {
                Member::Other
            };
            if name == "manifest.json" && kind.is_file() {
                if entry.size() > MAX_MANIFEST_BYTES {
                    return Err(InspectError::BadManifest(format!(
                        "larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_MANIFEST_BYTES)
                    .read_to_end(&mut buf)
                    .map_err(not_tar)?;
                manifest = Some(buf);
            }
            members.insert(name, member);
        }
    }
    let manifest = manifest.ok_or(InspectError::NoManifest)?;
    let images: Vec<ManifestEntry> =
        serde_json::from_slice(&manifest).map_err(|e| InspectError::BadManifest(e.to_string()))?;
    let image = match images.len() {
        0 => return Err(InspectError::NoImage),
        1 => &images[0],
        n => return Err(InspectError::SeveralImages(n)),
    };

    let resolve = |path: &str| -> Option<(u64, u64)> {
        let mut at = normalize(Path::new(path))?;
        for _ in 0..=MAX_LINK_HOPS {
            match members.get(&at)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(t) => at = t.clone(),
                Member::Other => return None,
            }
        }
        None
    };

    let config_name = Path::new(&image.config)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = config_name
        .strip_suffix(".json")
        .unwrap_or(&config_name)
        .to_string();
    if !is_sha256_hex(&expected) {
        return Err(InspectError::ConfigName(image.config.clone()));
    }
    let (config_at, config_size) =
        resolve(&image.config).ok_or_else(|| InspectError::ConfigMissing(image.config.clone()))?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let at = resolve(layer).ok_or_else(|| InspectError::LayerMissing(layer.clone()))?;
        layers.push((layer, at));
    }
    let tags = image.repo_tags.clone().unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(InspectError::BadManifest(format!(
            "{} tags; at most {MAX_TAGS}",
            tags.len()
        )));
    }
    if let Some(t) = tags
        .iter()
        .find(|t| t.is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control))
    {
        return Err(InspectError::BadManifest(format!(
            "invalid tag {:?}",
            t.chars().take(MAX_TAG_LEN).collect::<String>()
        )));
    }

    let mut r = archive.into_inner();
    if config_size > MAX_CONFIG_BYTES {
        return Err(InspectError::BadConfig(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let config = read_member(&mut r, config_at, config_size, &image.config)?;
    let actual = hex::encode(sha2::Sha256::digest(&config));
    if actual != expected {
        return Err(InspectError::ConfigDigest {
            path: image.config.clone(),
            expected,
            actual,
        });
    }
    let parsed: ImageConfig =
        serde_json::from_slice(&config).map_err(|e| InspectError::BadConfig(e.to_string()))?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(InspectError::BadConfig(format!(
            "it lists {} layers, manifest.json {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    // What `docker load` would find out on some host at launch time, found out now:
    // each layer must be the one the config names. One flipped byte fails here.
    for ((layer, (at, size)), diff_id) in layers.into_iter().zip(diff_ids) {
        // A compressed layer (written by a containerd image store, or another tool)
        // is checked against the digest in its blob name when it has one; Docker
        // checks the uncompressed bytes against the config when it loads it.
        let packed = compressed(&mut r, at, size)?;
        let expected = match (packed, blob_digest(layer)) {
            (false, _) => diff_id,
            (true, Some(hex)) => format!("sha256:{hex}"),
            (true, None) => continue,
        };
        r.seek(SeekFrom::Start(at)).map_err(not_tar)?;
        let mut hasher = sha2::Sha256::new();
        let copied = std::io::copy(&mut (&mut r).take(size), &mut hasher).map_err(not_tar)?;
        if copied != size {
            return Err(InspectError::NotTar(format!(
                "layer {layer:?} is cut short"
            )));
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != expected {
            return Err(InspectError::LayerDigest {
                path: layer.clone(),
                expected,
                actual,
            });
        }
    }
    Ok(ArchiveInfo {
        image_id: format!("sha256:{actual}"),
        tags,
        layers: image.layers.len(),
    })
}

/// The part of an image config inspection reads.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Reads a (small, bounded by the caller) member whole.
fn read_member<R: Read + Seek>(
    r: &mut R,
    at: u64,
    size: u64,
    name: &str,
) -> Result<Vec<u8>, InspectError> {
    let not_tar = |e: std::io::Error| InspectError::NotTar(e.to_string());
    r.seek(SeekFrom::Start(at)).map_err(not_tar)?;
    let mut buf = Vec::new();
    r.take(size).read_to_end(&mut buf).map_err(not_tar)?;
    if buf.len() as u64 != size {
        return Err(InspectError::NotTar(format!("{name:?} is cut short")));
    }
    Ok(buf)
}

/// The hex digest in an OCI blob path (`blobs/sha256/<hex>`), if that is what it is.
fn blob_digest(path: &str) -> Option<&str> {
    let (dir, hex) = path.rsplit_once('/')?;
    (dir.ends_with("sha256") && is_sha256_hex(hex)).then_some(hex)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a member starts like a gzip or zstd stream.
fn compressed<R: Read + Seek>(r: &mut R, at: u64, size: u64) -> Result<bool, InspectError> {
    let not_tar = |e: std::io::Error| InspectError::NotTar(e.to_string());
    r.seek(SeekFrom::Start(at)).map_err(not_tar)?;
    let mut magic = Vec::with_capacity(4);
    r.take(size.min(4))
        .read_to_end(&mut magic)
        .map_err(not_tar)?;
    Ok(magic.starts_with(&[0x1f, 0x8b]) || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use std::io::Cursor;

    /// A tar builder for test archives.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        fn dir(mut self, path: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Directory);
            h.set_cksum();
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }
        fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(tar::EntryType::Symlink);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn sha256_hex(b: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(b))
    }

    const CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

    /// An image config naming `layers` as its layers.
    fn config_for(layers: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = layers
            .iter()
            .map(|l| format!("sha256:{}", sha256_hex(l)))
            .collect();
        serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids}})
        .to_string()
        .into_bytes()
    }

    const LAYER: &[u8] = b"layer bytes";

    /// A classic `docker save` archive (Docker < 25): `<hex>.json`, `<id>/layer.tar`,
    /// with a second layer linked to the first as Docker does for identical layers.
    fn classic_with(config: &[u8], tags: &[&str]) -> (Vec<u8>, String) {
        let hex = sha256_hex(config);
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"),
            "RepoTags": tags,
            "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
        }]);
        let tar = Tar::new()
            .dir("aaaa/")
            .file("aaaa/layer.tar", LAYER)
            .file("aaaa/VERSION", b"1.0")
            .dir("bbbb/")
            .symlink("bbbb/layer.tar", "../aaaa/layer.tar")
            .file(&format!("{hex}.json"), config)
            .file("repositories", b"{}")
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        (tar, hex)
    }

    fn classic(tags: &[&str]) -> (Vec<u8>, String) {
        classic_with(&config_for(&[LAYER, LAYER]), tags)
    }

    #[test]
    fn a_classic_archive_is_read() {
        let (tar, hex) = classic(&["course/python:1", "course/python:latest"]);
        let info = inspect(Cursor::new(tar)).unwrap();
        assert_eq!(info.image_id, format!("sha256:{hex}"));
        assert_eq!(info.tags, ["course/python:1", "course/python:latest"]);
        assert_eq!(info.layers, 2);
    }

    #[test]
    fn an_oci_layout_archive_is_read() {
        let layer = b"layer";
        let config = config_for(&[layer]);
        let hex = sha256_hex(&config);
        let lhex = sha256_hex(layer);
        let manifest = serde_json::json!([{
            "Config": format!("blobs/sha256/{hex}"),
            "RepoTags": null,
            "Layers": [format!("blobs/sha256/{lhex}")],
        }]);
        let tar = Tar::new()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .file("index.json", b"{}")
            .file("manifest.json", manifest.to_string().as_bytes())
            .dir("blobs/")
            .dir("blobs/sha256/")
            .file(&format!("./blobs/sha256/{lhex}"), layer)
            .file(&format!("blobs/sha256/{hex}"), &config)
            .finish();
        let info = inspect(Cursor::new(tar)).unwrap();
        assert_eq!(info.image_id, format!("sha256:{hex}"));
        assert!(info.tags.is_empty());
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let tar = Tar::new().file("hello.txt", b"hi").finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a docker save archive: manifest.json missing"
        );
    }

    #[test]
    fn a_missing_layer_is_named() {
        let hex = sha256_hex(CONFIG);
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"), "RepoTags": ["x:1"], "Layers": ["cccc/layer.tar"],
        }]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert!(
            matches!(e, InspectError::LayerMissing(ref l) if l == "cccc/layer.tar"),
            "{e}"
        );
        // A dangling link is as missing as no file.
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"), "Layers": ["dddd/layer.tar"],
        }]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .symlink("dddd/layer.tar", "../nowhere/layer.tar")
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::LayerMissing(_)
        ));
    }

    #[test]
    fn a_config_that_does_not_match_its_name_is_refused() {
        let hex = sha256_hex(b"something else");
        let manifest = serde_json::json!([{"Config": format!("{hex}.json"), "Layers": []}]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert!(matches!(e, InspectError::ConfigDigest { .. }), "{e}");
        assert!(e.to_string().contains("damaged"), "{e}");

        let manifest = serde_json::json!([{"Config": "config.json", "Layers": []}]);
        let tar = Tar::new()
            .file("config.json", CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::ConfigName(_)
        ));

        let manifest =
            serde_json::json!([{"Config": format!("{}.json", sha256_hex(CONFIG)), "Layers": []}]);
        let tar = Tar::new()
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::ConfigMissing(_)
        ));
    }

    #[test]
    fn a_layer_that_does_not_match_the_config_is_refused() {
        let (tar, _) = classic_with(&config_for(&[LAYER, b"other"]), &["t:1"]);
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert!(
            matches!(e, InspectError::LayerDigest { ref path, .. } if path == "bbbb/layer.tar"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("the archive is damaged: layer \"bbbb/layer.tar\" has digest sha256:"),
            "{e}"
        );
        let (tar, _) = classic_with(&config_for(&[LAYER]), &["t:1"]);
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::BadConfig(_)
        ));
        // One flipped byte inside a layer.
        let (mut tar, _) = classic(&["t:1"]);
        let at = tar.windows(LAYER.len()).position(|w| w == LAYER).unwrap();
        tar[at] ^= 0x20;
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::LayerDigest { .. }
        ));
        // Compressed layers are Docker's to check.
        let gz: &[u8] = &[0x1f, 0x8b, 8, 0, 1, 2, 3];
        let config = config_for(&[b"the uncompressed layer"]);
        let hex = sha256_hex(&config);
        let manifest =
            serde_json::json!([{"Config": format!("{hex}.json"), "Layers": ["l.tar.gz"]}]);
        let tar = Tar::new()
            .file("l.tar.gz", gz)
            .file(&format!("{hex}.json"), &config)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(inspect(Cursor::new(tar)).is_ok());
        // ... but a compressed OCI blob must match the digest in its name.
        let blob = format!("blobs/sha256/{}", sha256_hex(b"not these bytes"));
        let manifest = serde_json::json!([{"Config": format!("{hex}.json"), "Layers": [blob]}]);
        let tar = Tar::new()
            .file(&blob, gz)
            .file(&format!("{hex}.json"), &config)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::LayerDigest { .. }
        ));
    }

    #[test]
    fn two_images_are_refused() {
        let hex = sha256_hex(CONFIG);
        let one =
            serde_json::json!({"Config": format!("{hex}.json"), "RepoTags": ["a:1"], "Layers": []});
        let manifest = serde_json::json!([one.clone(), one]);
        let tar = Tar::new()
            .file(&format!("{hex}.json"), CONFIG)
            .file("manifest.json", manifest.to_string().as_bytes())
            .finish();
        let e = inspect(Cursor::new(tar)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the archive holds 2 images; push one image per archive (`docker save NAME:TAG -o FILE.tar`)"
        );
    }

    #[test]
    fn garbage_and_bad_manifests_are_refused() {
        let e = inspect(Cursor::new(vec![0x5au8; 4096])).unwrap_err();
        assert!(matches!(e, InspectError::NotTar(_)), "{e}");
        let tar = Tar::new().file("manifest.json", b"{not json").finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::BadManifest(_)
        ));
        let tar = Tar::new().file("manifest.json", b"[]").finish();
        assert!(matches!(
            inspect(Cursor::new(tar)).unwrap_err(),
            InspectError::NoImage
        ));
    }

    #[test]
    fn paths_are_normalised_inside_the_archive() {
        assert_eq!(normalize(Path::new("./a/./b/")).unwrap(), "a/b");
        assert_eq!(
            normalize(Path::new("b/../a/layer.tar")).unwrap(),
            "a/layer.tar"
        );
        assert_eq!(normalize(Path::new("../etc/passwd")), None);
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
        assert!(is_upload_id("u-0123456789abcdef"));
        assert!(!is_upload_id("u-0123456789ABCDEF"));
        assert!(!is_upload_id("../../x"));
    }

    // ------------------------------------------------------------ uploads

    fn archives(dir: &Path, max: u64) -> Archives {
        let store = Store::open(&dir.join("state")).unwrap();
        let config = ImagesConfig {
            max_archive_bytes: max,
            ..Default::default()
        };
        Archives::open(dir, &config, store, 1_000).unwrap()
    }

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Vec<u8>, String>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(p.to_vec())).collect::<Vec<_>>())
    }

    fn created(b: Begin) -> UploadStatus {
        match b {
            Begin::Created(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn offsets_are_enforced_and_bytes_kept_when_a_body_breaks() {
        let tmp = tempfile::tempdir().unwrap();
        let a = archives(tmp.path(), 1 << 20);
        let (tar, _) = classic(&["t:1"]);
        let hash = blake3::hash(&tar).to_hex().to_string();
        let size = tar.len() as u64;
        let up = created(a.begin(&hash, size, "admin", 2_000).unwrap());
        assert_eq!(up.offset, 0);

        // A body that breaks off keeps what arrived before.
        let broken = futures::stream::iter(vec![
            Ok(tar[..1000].to_vec()),
            Err("connection reset".to_string()),
        ]);
        let e = a.append(&up.id, 0, None, broken, 3_000).await.unwrap_err();
        assert!(
            matches!(e, ArchivesError::Body { written: 1000, .. }),
            "{e}"
        );
        assert_eq!(a.status(&up.id).unwrap().offset, 1000);

        // Starting anywhere but the current length is refused with that length.
        let e = a
            .append(&up.id, 0, None, chunks(&[&tar[..10]]), 3_000)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ArchivesError::OffsetMismatch {
                    current: 1000,
                    requested: 0
                }
            ),
            "{e}"
        );
        // Past the declared size: refused before reading (Content-Length) or cut.
        let e = a
            .append(&up.id, 1000, Some(size), chunks(&[&tar[1000..]]), 3_000)
            .await
            .unwrap_err();
        assert!(matches!(e, ArchivesError::PastEnd { .. }), "{e}");
        assert_eq!(a.status(&up.id).unwrap().offset, 1000);

        // Committing early says how far it got.
        let e = a.commit(&up.id, "admin", 3_000).await.unwrap_err();
        assert!(
            matches!(e, ArchivesError::Incomplete { have: 1000, .. }),
            "{e}"
        );

        // Beginning again with the same bytes resumes the same upload.
        match a.begin(&hash, size, "admin", 4_000).unwrap() {
            Begin::Resumed(s) => {
                assert_eq!((s.id.as_str(), s.offset), (up.id.as_str(), 1000))
            }
            other => panic!("{other:?}"),
        }
        let mut rest = tar[1000..].to_vec();
        rest.extend_from_slice(b"extra");
        let e = a
            .append(&up.id, 1000, None, chunks(&[&rest]), 5_000)
            .await
            .unwrap_err();
        assert!(matches!(e, ArchivesError::PastEnd { .. }), "{e}");
        assert_eq!(a.status(&up.id).unwrap().offset, size);

        let (rec, new) = a.commit(&up.id, "teacher", 6_000).await.unwrap();
        assert!(new);
        assert_eq!(rec.archive, hash);
        assert_eq!(rec.uploaded_by, "teacher");
        assert!(matches!(
            a.status(&up.id).unwrap_err(),
            ArchivesError::UploadNotFound(_)
        ));
        assert_eq!(a.by_tag("t:1").unwrap().archive, hash);
        assert!(a.by_tag("t").is_none());
        // Pushing the same archive again finds it committed.
        assert!(matches!(
            a.begin(&hash, size, "admin", 7_000).unwrap(),
            Begin::Committed(_)
        ));
        let (f, r) = a.open_archive(&hash).await.unwrap();
        assert_eq!(r.size_bytes, size);
        assert_eq!(f.metadata().await.unwrap().len(), size);
        a.remove(&hash).unwrap();
        assert!(a.get(&hash).is_none());
        assert!(a.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_corrupted_upload_is_discarded_at_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let a = archives(tmp.path(), 1 << 20);
        let (mut tar, _) = classic(&["t:1"]);
        let hash = blake3::hash(&tar).to_hex().to_string();
        tar[700] ^= 0x01;
        let up = created(a.begin(&hash, tar.len() as u64, "admin", 2_000).unwrap());
        a.append(&up.id, 0, Some(tar.len() as u64), chunks(&[&tar]), 2_000)
            .await
            .unwrap();
        let e = a.commit(&up.id, "admin", 3_000).await.unwrap_err();
        assert_eq!(e.to_string(), "the uploaded bytes do not match the archive's BLAKE3 hash (corrupted in transit or changed on disk); push again");
        assert!(a.uploads().unwrap().is_empty());
        assert!(a.list().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("images/uploads"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn sizes_are_bounded_and_abandoned_uploads_expire() {
        let tmp = tempfile::tempdir().unwrap();
        let a = archives(tmp.path(), 4096);
        let hash = "ab".repeat(32);
        assert!(matches!(
            a.begin(&hash, 4097, "admin", 0).unwrap_err(),
            ArchivesError::TooLarge { .. }
        ));
        assert!(matches!(
            a.begin(&hash, 10, "admin", 0).unwrap_err(),
            ArchivesError::Invalid(_)
        ));
        assert!(matches!(
            a.begin("not-a-hash", 2048, "admin", 0).unwrap_err(),
            ArchivesError::Invalid(_)
        ));
        let up = created(a.begin(&hash, 2048, "admin", 10_000).unwrap());
        a.append(&up.id, 0, None, chunks(&[b"abc"]), 20_000)
            .await
            .unwrap();
        a.expire_uploads(20_000 + UPLOAD_TTL_MS - 1);
        assert_eq!(a.status(&up.id).unwrap().offset, 3);
        a.expire_uploads(20_000 + UPLOAD_TTL_MS);
        assert!(a.status(&up.id).is_err());
        assert!(!tmp
            .path()
            .join(format!("images/uploads/{}.part", up.id))
            .exists());
    }

    #[tokio::test]
    async fn files_without_records_are_swept_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let a = archives(tmp.path(), 4096);
            let _ = a;
        }
        let stray = tmp.path().join("images/uploads/u-00000000000000aa.part");
        std::fs::write(&stray, b"x").unwrap();
        let stray_archive = tmp
            .path()
            .join(format!("images/archives/{}.tar", "cd".repeat(32)));
        std::fs::write(&stray_archive, b"x").unwrap();
        let _a = archives(tmp.path(), 4096);
        assert!(!stray.exists());
        assert!(!stray_archive.exists());
    }
}
