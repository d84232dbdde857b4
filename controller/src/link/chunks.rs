//! Serving chunks and manifests to agents on the link
//! ([`AgentRequest::FetchManifest`], [`AgentRequest::FetchChunks`]).
//!
//! Both answers come from the [`ChunkStore`], which verifies every object it reads.
//! Reads run [`READ_AHEAD`] chunks ahead of the stream, in order, so a store whose
//! reads wait on the disk keeps several in flight while the agent takes bytes;
//! memory is bounded by those few objects (a chunk is at most [`MAX_CHUNK_LEN`], a
//! batch at most [`MAX_FETCH_CHUNKS`] chunks). A stream
//! whose agent stops reading is reset after [`WRITE_TIMEOUT`], so a stuck agent
//! holds no task for ever.
//!
//! What can be said before any bytes flow is said in a refusal naming the chunk
//! (absent, unreadable). A chunk found corrupt once the stream is under way resets
//! the stream with [`ChunkStreamCode::Corrupt`] and the chunk's index in the reset
//! code; the agent reports "chunk … is corrupt on the controller".
//!
//! [`AgentRequest::FetchManifest`]: cairn_shared::protocol::AgentRequest::FetchManifest
//! [`AgentRequest::FetchChunks`]: cairn_shared::protocol::AgentRequest::FetchChunks

use std::time::Duration;

use cairn_shared::chunks::{ChunkId, MAX_CHUNK_LEN};
use cairn_shared::framing;
use cairn_shared::protocol::{
    AgentResponse, ChunkStreamCode, RefusalCode, MAX_FETCH_CHUNKS, MAX_MANIFEST_BYTES,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::chunks::{ChunkStore, ChunkStoreError};

/// How long one write may wait for the agent to take bytes.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one store read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks read from the store ahead of the one being written, per stream.
pub const READ_AHEAD: usize = 4;
/// Response header frames are small.
const MAX_HEADER_FRAME: u32 = 64 * 1024;

/// A stream the chunk server writes to: the send half of a QUIC stream, or a
/// buffer in tests.
pub trait ChunkSink: AsyncWrite + Unpin + Send {
    /// Abandons the stream (QUIC stream reset) for `code` about the `index`th
    /// chunk asked for.
    fn reset(&mut self, code: ChunkStreamCode, index: usize);
    /// Ends the stream cleanly.
    fn finish(&mut self);
}

impl ChunkSink for quinn::SendStream {
    fn reset(&mut self, code: ChunkStreamCode, index: usize) {
        let code = quinn::VarInt::from_u64(code.reset_code(index)).unwrap_or(quinn::VarInt::MAX);
        let _ = quinn::SendStream::reset(self, code);
    }
    fn finish(&mut self) {
        let _ = quinn::SendStream::finish(self);
    }
}

fn refused(code: RefusalCode, message: String) -> AgentResponse {
    AgentResponse::Refused { code, message }
}

async fn get(store: &dyn ChunkStore, id: ChunkId) -> Result<Option<bytes::Bytes>, ChunkStreamCode> {
    match tokio::time::timeout(READ_TIMEOUT, store.get(id)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(ChunkStoreError::Corrupt { id })) => {
            tracing::error!(chunk = %id, "a stored chunk is corrupt: its bytes do not match its name; it must be pushed again");
            Err(ChunkStreamCode::Corrupt)
        }
        Ok(Err(e)) => {
            tracing::error!(chunk = %id, error = %e, "cannot read a stored chunk");
            Err(ChunkStreamCode::Internal)
        }
        Err(_) => {
            tracing::error!(chunk = %id, "reading a stored chunk took over {} s", READ_TIMEOUT.as_secs());
            Err(ChunkStreamCode::Internal)
        }
    }
}

async fn write_all(sink: &mut dyn ChunkSink, bytes: &[u8], index: usize) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "chunk fetch broke off");
            Err(())
        }
        Err(_) => {
            tracing::warn!(
                "the agent read nothing for {} s; resetting the chunk stream",
                WRITE_TIMEOUT.as_secs()
            );
            sink.reset(ChunkStreamCode::Stalled, index);
            Err(())
        }
    }
}

/// The stored manifest `manifest`, or the refusal that names why not.
async fn load_manifest(
    store: &dyn ChunkStore,
    manifest: ChunkId,
) -> Result<bytes::Bytes, AgentResponse> {
    let bytes = match get(store, manifest).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            tracing::info!(%manifest, "agent asked for an unknown manifest");
            return Err(refused(
                RefusalCode::BadRequest,
                format!("manifest {manifest} is not on the controller (the dataset version was removed, or never pushed)"),
            ));
        }
        Err(code) => {
            return Err(refused(
                RefusalCode::Internal,
                code.describe(&manifest).replace("chunk", "manifest"),
            ))
        }
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(refused(
            RefusalCode::Internal,
            format!(
                "manifest {manifest} is {} bytes, over the link's limit of {MAX_MANIFEST_BYTES}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Writes `header`, then `bytes`, then ends the stream.
pub(crate) async fn send_object(
    header: &AgentResponse,
    bytes: &[u8],
    sink: &mut dyn ChunkSink,
) -> Result<(), AgentResponse> {
    let Ok(frame) = framing::encode(header, MAX_HEADER_FRAME) else {
        return Err(refused(
            RefusalCode::Internal,
            "cannot encode the answer".into(),
        ));
    };
    if write_all(sink, &frame, 0).await.is_err() || write_all(sink, bytes, 0).await.is_err() {
        return Ok(());
    }
    sink.finish();
    Ok(())
}

/// Answers a `FetchManifest`: an [`AgentResponse::Manifest`] header and the bytes,
/// or a refusal (returned, for the caller to send) that names the manifest.
pub async fn serve_manifest(
    store: &dyn ChunkStore,
    manifest: ChunkId,
    sink: &mut dyn ChunkSink,
) -> Result<(), AgentResponse> {
    let bytes = load_manifest(store, manifest).await?;
    let header = AgentResponse::Manifest {
        len: bytes.len() as u64,
    };
    send_object(&header, &bytes, sink).await?;
    tracing::debug!(%manifest, bytes = bytes.len(), "manifest sent");
    Ok(())
}

/// Answers a `FetchManifestDelta`: an [`AgentResponse::ManifestDelta`] header and
/// the delta of `manifest` from `base`; the whole manifest as `FetchManifest` gets
/// it when `base` is not here (or unreadable) or the delta would not be smaller.
pub async fn serve_manifest_delta(
    store: &dyn ChunkStore,
    manifest: ChunkId,
    base: ChunkId,
    sink: &mut dyn ChunkSink,
) -> Result<(), AgentResponse> {
    let target = load_manifest(store, manifest).await?;
    let base_bytes = match get(store, base).await {
        Ok(Some(b)) => b,
        _ => {
            let header = AgentResponse::Manifest {
                len: target.len() as u64,
            };
            return send_object(&header, &target, sink).await;
        }
    };
    let t = target.clone();
    let delta = tokio::task::spawn_blocking(move || {
        cairn_shared::chunks::delta::diff(base, &base_bytes, &t).encode()
    })
    .await
    .unwrap_or_default();
    if delta.is_empty() || delta.len() >= target.len() {
        let header = AgentResponse::Manifest {
            len: target.len() as u64,
        };
        return send_object(&header, &target, sink).await;
    }
    let header = AgentResponse::ManifestDelta {
        len: delta.len() as u64,
    };
    send_object(&header, &delta, sink).await?;
    tracing::debug!(%manifest, %base, bytes = delta.len(), whole = target.len(), "manifest delta sent");
    Ok(())
}

/// Answers a `FetchChunks`: checks every chunk is present (else a refusal naming
/// the first absent one), then an [`AgentResponse::Chunks`] header and one frame
/// per chunk, read from the store at most [`READ_AHEAD`] chunks ahead of the stream.
pub async fn serve_chunks(
    store: &dyn ChunkStore,
    chunks: &[ChunkId],
    sink: &mut dyn ChunkSink,
) -> Result<(), AgentResponse> {
    if chunks.is_empty() || chunks.len() > MAX_FETCH_CHUNKS {
        return Err(refused(
            RefusalCode::BadRequest,
            format!(
                "a chunk fetch asks for 1 to {MAX_FETCH_CHUNKS} chunks, not {}",
                chunks.len()
            ),
        ));
    }
    let present = match tokio::time::timeout(READ_TIMEOUT, store.contains(chunks)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot look up chunks");
            return Err(refused(
                RefusalCode::Internal,
                "the controller cannot read its chunk store; see its log".into(),
            ));
        }
        Err(_) => {
            return Err(refused(
                RefusalCode::Internal,
                "the controller's chunk store did not answer in time".into(),
            ));
        }
    };
    if let Some((id, _)) = chunks.iter().zip(&present).find(|(_, p)| !**p) {
        tracing::warn!(chunk = %id, "agent asked for a chunk the store does not hold");
        return Err(refused(
            RefusalCode::BadRequest,
            format!("chunk {id} is missing on the controller"),
        ));
    }
    let started = std::time::Instant::now();
    let Ok(frame) = framing::encode(&AgentResponse::Chunks, MAX_HEADER_FRAME) else {
        return Err(refused(
            RefusalCode::Internal,
            "cannot encode the answer".into(),
        ));
    };
    if write_all(sink, &frame, 0).await.is_err() {
        return Ok(());
    }
    use futures::StreamExt;
    let mut sent = 0u64;
    let mut reads = futures::stream::iter(chunks.iter().copied())
        .map(|id| get(store, id))
        .buffered(READ_AHEAD);
    for (index, id) in chunks.iter().enumerate() {
        let Some(read) = reads.next().await else {
            break;
        };
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::warn!(chunk = %id, "a chunk vanished from the store during a fetch");
                sink.reset(ChunkStreamCode::Missing, index);
                return Ok(());
            }
            Err(code) => {
                sink.reset(code, index);
                return Ok(());
            }
        };
        // The store verified the bytes against the id; a chunk longer than any peer
        // accepts would be refused by the agent anyway, so it is not sent.
        let Ok(len) = u32::try_from(bytes.len()) else {
            sink.reset(ChunkStreamCode::Corrupt, index);
            return Ok(());
        };
        if len > MAX_CHUNK_LEN {
            tracing::error!(chunk = %id, len, "a stored chunk is longer than the link allows");
            sink.reset(ChunkStreamCode::Corrupt, index);
            return Ok(());
        }
        if write_all(sink, &len.to_be_bytes(), index).await.is_err()
            || write_all(sink, &bytes, index).await.is_err()
        {
            return Ok(());
        }
        sent += u64::from(len);
    }
    sink.finish();
    tracing::debug!(
        chunks = chunks.len(),
        bytes = sent,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "chunks sent"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::chunks::StoredChunk;
    use bytes::Bytes;
    use std::collections::HashMap;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// A store in memory; `corrupt` ids read as corrupt.
    #[derive(Debug, Default)]
    struct Mem {
        objects: Mutex<HashMap<ChunkId, Bytes>>,
        corrupt: Mutex<Vec<ChunkId>>,
    }

    #[async_trait::async_trait]
    impl ChunkStore for Mem {
        async fn contains(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ChunkStoreError> {
            let o = self.objects.lock().unwrap();
            Ok(ids.iter().map(|i| o.contains_key(i)).collect())
        }
        async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), ChunkStoreError> {
            self.objects.lock().unwrap().insert(id, bytes);
            Ok(())
        }
        async fn get(&self, id: ChunkId) -> Result<Option<Bytes>, ChunkStoreError> {
            if self.corrupt.lock().unwrap().contains(&id) {
                return Err(ChunkStoreError::Corrupt { id });
            }
            Ok(self.objects.lock().unwrap().get(&id).cloned())
        }
        async fn delete(&self, id: ChunkId) -> Result<(), ChunkStoreError> {
            self.objects.lock().unwrap().remove(&id);
            Ok(())
        }
        async fn list(&self) -> Result<Vec<StoredChunk>, ChunkStoreError> {
            Ok(vec![])
        }
    }

    #[derive(Default)]
    struct Sink {
        bytes: Vec<u8>,
        reset: Option<(ChunkStreamCode, usize)>,
        finished: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl ChunkSink for Sink {
        fn reset(&mut self, code: ChunkStreamCode, index: usize) {
            self.reset = Some((code, index));
        }
        fn finish(&mut self) {
            self.finished = true;
        }
    }

    async fn store_of(chunks: &[&[u8]]) -> (Mem, Vec<ChunkId>) {
        let store = Mem::default();
        let mut ids = vec![];
        for c in chunks {
            let id = ChunkId::of(c);
            store.put(id, Bytes::copy_from_slice(c)).await.unwrap();
            ids.push(id);
        }
        (store, ids)
    }

    #[tokio::test]
    async fn chunks_go_out_in_order_one_frame_each() {
        let (store, ids) = store_of(&[b"alpha", b"", b"gamma gamma"]).await;
        let mut sink = Sink::default();
        serve_chunks(&store, &ids, &mut sink).await.unwrap();
        assert!(sink.finished);
        let header = framing::encode(&AgentResponse::Chunks, 1024).unwrap();
        let mut want = header;
        for c in [&b"alpha"[..], b"", b"gamma gamma"] {
            want.extend_from_slice(&(c.len() as u32).to_be_bytes());
            want.extend_from_slice(c);
        }
        assert_eq!(sink.bytes, want);
    }

    #[tokio::test]
    async fn an_absent_chunk_is_refused_by_name_before_any_bytes() {
        let (store, mut ids) = store_of(&[b"alpha"]).await;
        let absent = ChunkId::of(b"nowhere");
        ids.push(absent);
        let mut sink = Sink::default();
        let err = serve_chunks(&store, &ids, &mut sink).await.unwrap_err();
        let AgentResponse::Refused { message, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(
            message,
            format!("chunk {absent} is missing on the controller")
        );
        assert!(sink.bytes.is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_chunk_resets_the_stream_after_the_good_ones() {
        let (store, ids) = store_of(&[b"alpha", b"beta"]).await;
        store.corrupt.lock().unwrap().push(ids[1]);
        let mut sink = Sink::default();
        serve_chunks(&store, &ids, &mut sink).await.unwrap();
        assert_eq!(sink.reset, Some((ChunkStreamCode::Corrupt, 1)));
        let code = ChunkStreamCode::Corrupt.reset_code(1);
        assert_eq!(
            ChunkStreamCode::split(code),
            Some((ChunkStreamCode::Corrupt, 1))
        );
        assert!(!sink.finished);
        assert!(sink.bytes.ends_with(b"alpha"));
        assert_eq!(
            ChunkStreamCode::Corrupt.describe(&ids[1]),
            format!("chunk {} is corrupt on the controller", ids[1])
        );
    }

    #[tokio::test]
    async fn manifests_are_sent_whole_or_refused_by_name() {
        let (store, ids) = store_of(&[b"a manifest"]).await;
        let mut sink = Sink::default();
        serve_manifest(&store, ids[0], &mut sink).await.unwrap();
        let mut want = framing::encode(&AgentResponse::Manifest { len: 10 }, 1024).unwrap();
        want.extend_from_slice(b"a manifest");
        assert_eq!(sink.bytes, want);
        let absent = ChunkId::of(b"nope");
        let err = serve_manifest(&store, absent, &mut Sink::default())
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains(&absent.to_hex()), "{err:?}");
        store.corrupt.lock().unwrap().push(ids[0]);
        let err = serve_manifest(&store, ids[0], &mut Sink::default())
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("is corrupt on the controller"),
            "{err:?}"
        );
    }
}
