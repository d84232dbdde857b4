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
        let p = self.may_push(caller)?;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_shared::chunks::{ChunkId, Manifest, Params};

    use super::super::testing::World;
    use super::super::Kind;
    use crate::images::archives::{archive_chunks, manifest_for};
    use crate::images::inspect::fixtures::classic;

    /// Stores `data`'s chunks as a push would.
    async fn send(w: &World, data: &[u8], m: &Manifest) {
        let (chunks, _) = archive_chunks(m).unwrap();
        let mut at = 0usize;
        for c in chunks {
            let b = Bytes::copy_from_slice(&data[at..at + c.len as usize]);
            w.service.app.chunks.put(c.id, b).await.unwrap();
            at += c.len as usize;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_chunks_are_live_until_the_image_is_removed() {
        let w = World::new().await;
        let s = &w.service;
        let (tar, _) = classic(&["course:1"]);
        let m = manifest_for(&tar, Params::with_avg(1024));
        let hash = blake3::hash(&tar).to_hex().to_string();
        send(&w, &tar, &m).await;
        // Only admins commit.
        let e = s
            .commit_image(&w.alice, &m.encode(), &hash)
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::Forbidden);
        let (rec, new) = s.commit_image(&w.admin, &m.encode(), &hash).await.unwrap();
        assert!(new);
        let stray = ChunkId::of(b"stray");
        s.app
            .chunks
            .put(stray, Bytes::from_static(b"stray"))
            .await
            .unwrap();
        let far_future = cairn_shared::time::now_ms() + 10_000;
        let ids: Vec<ChunkId> = m.unique_chunks().iter().map(|c| c.id).collect();
        // The image's chunks and manifest are kept; the stray goes.
        let swept = crate::app::collect_chunks_at(&s.app, far_future, 1)
            .await
            .unwrap();
        assert_eq!(swept.chunks, 1);
        assert!(s
            .app
            .chunks
            .contains(&ids)
            .await
            .unwrap()
            .iter()
            .all(|p| *p));
        assert!(s.app.chunks.get(m.id()).await.unwrap().is_some());
        // Removed: its chunks and manifest go at the next collection.
        s.remove_image(&w.admin, &rec.archive).await.unwrap();
        let swept = crate::app::collect_chunks_at(&s.app, far_future, 1)
            .await
            .unwrap();
        assert_eq!(swept.chunks, ids.len() as u64 + 1, "chunks and manifest");
        assert!(s
            .app
            .chunks
            .contains(&ids)
            .await
            .unwrap()
            .iter()
            .all(|p| !*p));
    }
}
