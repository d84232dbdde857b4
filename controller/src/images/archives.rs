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
//! A commit checks size and hash, then reads the `docker save` tar
//! ([`super::inspect`], re-exported here), so
//! a file Docker cannot load is refused when it is pushed, with a reason, rather than
//! when some host tries to launch from it. Abandoned uploads are removed after
//! [`UPLOAD_TTL_MS`] without a byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::images::is_archive_hash;
use cairn_shared::reference::Reference;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub use super::inspect::{inspect, ArchiveInfo, InspectError};
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
    Reference::parse(reference)
        .ok()
        .filter(|r| r.tag().is_none() && r.digest().is_none())
        .map(|_| format!("{reference}:latest"))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::images::inspect::fixtures::classic;

    #[test]
    fn implicit_tags_and_upload_ids() {
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
