//! Uploaded image archives (admins): a resumable upload in the manner of tus
//! (begin, append at an offset, commit after verification, cancel), and the
//! committed archives (list, read, remove). An archive that an enabled blueprint
//! runs cannot be removed: new instances of it would find nothing to fetch; the
//! check and the removal hold the image-use lock that blueprint saves hold too.

use cairn_shared::images::ImageSource;

use super::views::UploadAnswer;
use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::images::archives::{ArchivesError, Begin, ImageRecord};

impl From<ArchivesError> for ServiceError {
    fn from(e: ArchivesError) -> Self {
        use ArchivesError as E;
        let (kind, code) = match &e {
            E::UploadNotFound(_) | E::NotFound(_) => (Kind::NotFound, "not_found"),
            E::TooLarge { .. } | E::PastEnd { .. } => (Kind::TooLarge, "too_large"),
            E::Invalid(_) => (Kind::Invalid, "invalid_request"),
            E::OffsetMismatch { .. } => (Kind::Conflict, "offset_mismatch"),
            E::Busy(_) => (Kind::Conflict, "busy"),
            E::Incomplete { .. } => (Kind::Conflict, "incomplete"),
            E::TooManyUploads(_) => (Kind::Conflict, "limit_reached"),
            E::HashMismatch => (Kind::Unprocessable, "hash_mismatch"),
            E::Inspect(_) => (Kind::Unprocessable, "invalid_archive"),
            E::Body { .. } => (Kind::Invalid, "body_interrupted"),
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                tracing::error!(error = %e, "image upload: disk full");
                return ServiceError::new(
                    Kind::StorageFull,
                    "disk_full",
                    "the controller's disk is full; remove unused images (`cairn images rm`) or free space, then push again",
                );
            }
            E::Io { .. } | E::Store(_) => return ServiceError::internal(e),
        };
        ServiceError::new(kind, code, e.to_string())
    }
}

/// What an append did.
#[derive(Debug)]
pub enum Appended {
    /// The bytes are stored; the upload stands at `offset`.
    Stored(UploadAnswer),
    /// The client's offset is not the upload's: go on from `current`.
    OffsetMismatch { current: u64, message: String },
}

impl Service {
    /// Begins an upload of `size_bytes` with BLAKE3 `blake3`: a new upload
    /// (`true`), the unfinished upload of the same bytes, or the committed image if
    /// the archive is already here.
    pub async fn begin_upload(
        &self,
        caller: &Caller,
        size_bytes: u64,
        blake3: &str,
    ) -> ServiceResult<(UploadAnswer, bool)> {
        let p = caller.admin()?;
        let begun = self
            .app
            .archives
            .begin(blake3, size_bytes, p.name(), now())?;
        self.app.store.flush().await?;
        Ok(match begun {
            Begin::Created(s) => (s.into(), true),
            Begin::Resumed(s) => {
                tracing::info!(upload = %s.id, offset = s.offset, size_bytes = s.size_bytes, "image upload resumed");
                (s.into(), false)
            }
            Begin::Committed(r) => (r.into(), false),
        })
    }

    pub fn upload_status(&self, caller: &Caller, id: &str) -> ServiceResult<UploadAnswer> {
        caller.admin()?;
        Ok(self.app.archives.status(id)?.into())
    }

    /// Appends a streamed body at `offset` (the bytes are written as they arrive;
    /// `declared_len` lets a body that would pass the end be refused up front).
    pub async fn append_upload<S, B, E>(
        &self,
        caller: &Caller,
        id: &str,
        offset: u64,
        declared_len: Option<u64>,
        body: S,
    ) -> ServiceResult<Appended>
    where
        S: futures::Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        caller.admin()?;
        match self
            .app
            .archives
            .append(id, offset, declared_len, body, now())
            .await
        {
            Ok(s) => Ok(Appended::Stored(s.into())),
            Err(e @ ArchivesError::OffsetMismatch { current, .. }) => {
                Ok(Appended::OffsetMismatch {
                    current,
                    message: e.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Verifies and commits an upload; `true` if the archive is new here.
    pub async fn commit_upload(
        &self,
        caller: &Caller,
        id: &str,
    ) -> ServiceResult<(ImageRecord, bool)> {
        let p = caller.admin()?;
        Ok(self.app.archives.commit(id, p.name(), now()).await?)
    }

    pub async fn cancel_upload(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        caller.admin()?;
        Ok(self.app.archives.cancel(id).await?)
    }

    pub fn list_images(&self, caller: &Caller) -> ServiceResult<Vec<ImageRecord>> {
        caller.admin()?;
        Ok(self.app.archives.list()?)
    }

    pub fn image(&self, caller: &Caller, archive: &str) -> ServiceResult<ImageRecord> {
        caller.admin()?;
        self.app
            .archives
            .get(archive)
            .ok_or_else(|| not_found(archive))
    }

    /// Removes an archive no enabled blueprint runs.
    pub async fn remove_image(&self, caller: &Caller, archive: &str) -> ServiceResult<ImageRecord> {
        let p = caller.admin()?;
        let _use = self.image_use.lock().await;
        if self.app.archives.get(archive).is_none() {
            return Err(not_found(archive));
        }
        let users: Vec<String> = self
            .app
            .blueprints
            .list()?
            .into_iter()
            .filter(|b| b.spec.enabled)
            .filter(|b| {
                b.spec.resolved.as_ref().is_some_and(|r| {
                    matches!(&r.source, ImageSource::Controller { archive: a, .. } if a == archive)
                })
            })
            .map(|b| b.spec.name)
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::conflict(
                "in_use",
                format!(
                    "image archive {archive} is used by enabled blueprint(s) {}; disable them or point them at another image first",
                    users.join(", ")
                ),
            ));
        }
        let rec = self.app.archives.remove(archive)?;
        self.app.store.flush().await?;
        tracing::info!(archive, by = %p.name(), "image archive removed");
        Ok(rec)
    }
}

fn not_found(archive: &str) -> ServiceError {
    ServiceError::from(ArchivesError::NotFound(archive.chars().take(80).collect()))
}
