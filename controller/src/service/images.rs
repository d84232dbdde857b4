//! Pushed image archives (admins): the commit of an archive already sent as chunks
//! (checked whole: manifest, chunks present, BLAKE3, `docker save` layout), and the
//! committed archives (list, read, remove). An archive that an enabled blueprint
//! runs cannot be removed: new instances of it would find nothing to fetch; the
//! check and the removal hold the image-use lock that blueprint saves hold too.

use cairn_shared::images::ImageSource;

use super::{now, Caller, Kind, Service, ServiceError, ServiceResult};
use crate::images::archives::{ArchivesError, ImageRecord};

impl From<ArchivesError> for ServiceError {
    fn from(e: ArchivesError) -> Self {
        use ArchivesError as E;
        let (kind, code) = match &e {
            E::NotFound(_) => (Kind::NotFound, "not_found"),
            E::TooLarge { .. } => (Kind::TooLarge, "too_large"),
            E::Invalid(_) => (Kind::Invalid, "invalid_request"),
            E::ChunksMissing { .. } => (Kind::Conflict, "chunks_missing"),
            E::HashMismatch => (Kind::Unprocessable, "hash_mismatch"),
            E::Inspect(_) => (Kind::Unprocessable, "invalid_archive"),
            E::Chunk { .. } | E::ManifestLost { .. } => {
                tracing::error!(error = %e, "image archive: the chunk store lost or damaged a chunk");
                (Kind::Unprocessable, "chunk_damaged")
            }
            E::ChunkStore(crate::chunks::ChunkStoreError::Io(io))
                if io.kind() == std::io::ErrorKind::StorageFull =>
            {
                tracing::error!(error = %e, "image push: disk full");
                return ServiceError::new(
                    Kind::StorageFull,
                    "disk_full",
                    "the controller's disk is full; remove unused images (`cairn images rm`) or free space, then push again",
                );
            }
            E::ChunkStore(_) | E::Stopped(_) | E::Store(_) => return ServiceError::internal(e),
        };
        ServiceError::new(kind, code, e.to_string())
    }
}

impl Service {
    /// Commits an archive whose chunks were sent: `manifest` is the encoded one-file
    /// manifest, `archive` the whole file's BLAKE3. `true` if the archive is new here.
    pub async fn commit_image(
        &self,
        caller: &Caller,
        manifest: &[u8],
        archive: &str,
    ) -> ServiceResult<(ImageRecord, bool)> {
        let p = caller.admin()?;
        Ok(self
            .app
            .archives
            .commit(manifest, archive, p.name(), now())
            .await?)
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
        // Its chunks no other image or dataset uses go now (once past the grace
        // period), not at the next hourly collection.
        let app = self.app.clone();
        tokio::spawn(async move { crate::app::collect_chunks(&app).await });
        Ok(rec)
    }
}

fn not_found(archive: &str) -> ServiceError {
    ServiceError::from(ArchivesError::NotFound(archive.chars().take(80).collect()))
}
