//! The local-directory backend: [`ChunkDir`] under `<data_dir>/chunks`, its
//! blocking file I/O on tokio's blocking pool.
//!
//! Every `put` is durable (the file and its directory are fsynced before it
//! returns): the controller's copy is the committed copy users' data depends on, and
//! a push is acknowledged only once its chunks would survive a power cut. Every
//! `get` verifies the bytes against the id, so a chunk rotted on disk is an error,
//! never wrong bytes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cairn_shared::chunks::dir::{ChunkDir, ChunkDirError};
use cairn_shared::chunks::manifest::Limits;
use cairn_shared::chunks::ChunkId;

use super::{ChunkStore, ChunkStoreError, StoredChunk};

/// Manifests are stored like chunks and may be longer than a chunk: the longest
/// object is the longest manifest.
const MAX_OBJECT_LEN: usize = Limits::DEFAULT.max_encoded_bytes;

impl From<ChunkDirError> for ChunkStoreError {
    fn from(e: ChunkDirError) -> Self {
        match e {
            ChunkDirError::Mismatch { id } | ChunkDirError::Corrupt { id } => {
                ChunkStoreError::Corrupt { id }
            }
            ChunkDirError::TooLarge { len, .. } => ChunkStoreError::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: u32::try_from(MAX_OBJECT_LEN).unwrap_or(u32::MAX),
            },
            ChunkDirError::Io(e) => ChunkStoreError::Io(e),
        }
    }
}

/// A directory of chunks.
#[derive(Debug, Clone)]
pub struct LocalChunks {
    dir: Arc<ChunkDir>,
}

fn join_error(e: tokio::task::JoinError) -> ChunkStoreError {
    ChunkStoreError::Io(std::io::Error::other(format!(
        "chunk store task failed: {e}"
    )))
}

impl LocalChunks {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, ChunkStoreError> {
        Ok(LocalChunks {
            dir: Arc::new(ChunkDir::open(root.to_path_buf())?),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChunkDir) -> Result<T, ChunkStoreError> + Send + 'static,
    ) -> Result<T, ChunkStoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(join_error)?
    }
}

#[async_trait::async_trait]
impl ChunkStore for LocalChunks {
    async fn contains(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ChunkStoreError> {
        let ids = ids.to_vec();
        self.blocking(move |d| Ok(ids.iter().map(|id| d.contains(id)).collect()))
            .await
    }

    async fn put_many(&self, items: Vec<(ChunkId, Bytes)>) -> Result<(), ChunkStoreError> {
        if let Some((_, b)) = items.iter().find(|(_, b)| b.len() > MAX_OBJECT_LEN) {
            return Err(ChunkStoreError::TooLarge {
                len: b.len(),
                max: u32::try_from(MAX_OBJECT_LEN).unwrap_or(u32::MAX),
            });
        }
        self.blocking(move |d| {
            let refs: Vec<(ChunkId, &[u8])> = items.iter().map(|(id, b)| (*id, &b[..])).collect();
            d.put_many(&refs)?;
            Ok(())
        })
        .await
    }

    async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), ChunkStoreError> {
        if bytes.len() > MAX_OBJECT_LEN {
            return Err(ChunkStoreError::TooLarge {
                len: bytes.len(),
                max: u32::try_from(MAX_OBJECT_LEN).unwrap_or(u32::MAX),
            });
        }
        // Verified by ChunkDir before anything is written; durable on return.
        self.blocking(move |d| {
            d.put(&id, &bytes, true)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: ChunkId) -> Result<Option<Bytes>, ChunkStoreError> {
        self.blocking(move |d| Ok(d.get(&id, MAX_OBJECT_LEN as u64)?.map(Bytes::from)))
            .await
    }

    async fn delete(&self, id: ChunkId) -> Result<(), ChunkStoreError> {
        self.blocking(move |d| {
            d.remove(&id)?;
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<StoredChunk>, ChunkStoreError> {
        self.blocking(|d| {
            Ok(d.list()?
                .into_iter()
                .map(|(id, len, mtime)| StoredChunk {
                    id,
                    len,
                    written_ms: mtime
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                        .unwrap_or(0),
                })
                .collect())
        })
        .await
    }
}
