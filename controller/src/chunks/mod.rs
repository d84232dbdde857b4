//! The controller's chunk store: where every byte users push lives (datasets, image
//! archives, later user snapshots), as content-addressed chunks and manifests.
//!
//! * [`ChunkStore`] — the one trait storage goes through. The embedded default is
//!   [`local::LocalChunks`], a directory; an object-store backend (S3/Swift through
//!   the `object_store` crate) fits the same trait.
//! * [`pack`] — the frames of a chunk upload, parsed and verified whole.
//! * [`gc`] — mark-and-sweep from the live manifests, with a grace period so a chunk
//!   uploaded by a push still in flight is never collected.

pub mod gc;
pub mod local;
pub mod pack;

use bytes::Bytes;
use cairn_shared::chunks::ChunkId;

/// Why a chunk store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    /// The bytes do not hash to the id they were stored or asked for under.
    #[error("chunk {id} is corrupt: its bytes do not match its name")]
    Corrupt { id: ChunkId },
    #[error("chunk of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: u32 },
    #[error("chunk store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One stored object as the collector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredChunk {
    pub id: ChunkId,
    /// When it was written (ms since the epoch): younger than the grace period means
    /// a push may still be about to reference it.
    pub written_ms: u64,
    pub len: u64,
}

/// Content-addressed storage of chunks and manifests (a manifest is stored like a
/// chunk, under its own hash). Every method is safe to call concurrently; `put` of
/// an id already present is a cheap no-op.
#[async_trait::async_trait]
pub trait ChunkStore: Send + Sync + std::fmt::Debug + 'static {
    /// Which of `ids` are present, in order.
    async fn contains(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ChunkStoreError>;
    /// Stores `bytes` under `id` after checking they hash to it; durable on return.
    async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), ChunkStoreError>;
    /// Stores several chunks, each checked like [`ChunkStore::put`], all durable on
    /// return. Backends override it when one flush for the lot is cheaper than one
    /// per chunk (a push's pack).
    async fn put_many(&self, items: Vec<(ChunkId, Bytes)>) -> Result<(), ChunkStoreError> {
        for (id, bytes) in items {
            self.put(id, bytes).await?;
        }
        Ok(())
    }
    /// The bytes of `id`, verified against it; `None` if absent.
    async fn get(&self, id: ChunkId) -> Result<Option<Bytes>, ChunkStoreError>;
    /// Removes `id` (absent is fine).
    async fn delete(&self, id: ChunkId) -> Result<(), ChunkStoreError>;
    /// Every stored object, for the collector.
    async fn list(&self) -> Result<Vec<StoredChunk>, ChunkStoreError>;
}

/// Which chunks `manifest` lists that `store` lacks (each asked once, in batches),
/// in the manifest's order: what a commit checks before it records anything.
pub async fn missing_of(
    store: &dyn ChunkStore,
    manifest: &cairn_shared::chunks::Manifest,
) -> Result<Vec<ChunkId>, ChunkStoreError> {
    let wanted: Vec<ChunkId> = manifest.unique_chunks().iter().map(|c| c.id).collect();
    let mut missing = vec![];
    for batch in wanted.chunks(16 * 1024) {
        let present = store.contains(batch).await?;
        missing.extend(
            batch
                .iter()
                .zip(present)
                .filter(|(_, p)| !p)
                .map(|(id, _)| *id),
        );
    }
    Ok(missing)
}
