//! Volume saves on the link: an agent asks which chunks the controller lacks
//! ([`AgentRequest::MissingChunks`]), sends them in packs
//! ([`AgentRequest::StoreChunks`], every chunk checked before any is stored), then
//! commits the snapshot's manifest ([`AgentRequest::CommitSnapshot`]) for an
//! instance placed on its own host — never anyone else's. Bodies are read whole
//! (they are bounded by the request's validation), each read waiting at most
//! [`BODY_STALL`], so a stalled agent holds no task for ever.
//!
//! [`AgentRequest::MissingChunks`]: cairn_shared::protocol::AgentRequest::MissingChunks
//! [`AgentRequest::StoreChunks`]: cairn_shared::protocol::AgentRequest::StoreChunks
//! [`AgentRequest::CommitSnapshot`]: cairn_shared::protocol::AgentRequest::CommitSnapshot

use std::time::Duration;

use bytes::Bytes;
use cairn_shared::chunks::ChunkId;
use cairn_shared::ids::{HostId, InstanceId};
use cairn_shared::protocol::{
    AgentResponse, RefusalCode, MAX_PACK_BYTES, MAX_SNAPSHOT_MANIFEST_BYTES,
};

use crate::app::App;
use crate::chunks::pack;

/// Longest wait for the next bytes of a body.
const BODY_STALL: Duration = Duration::from_secs(30);

fn refused(code: RefusalCode, message: impl Into<String>) -> AgentResponse {
    AgentResponse::Refused {
        code,
        message: message.into(),
    }
}

/// Reads exactly `len` bytes (already bounded by the request's validation).
async fn read_body(recv: &mut quinn::RecvStream, len: u64) -> Result<Bytes, AgentResponse> {
    let len = usize::try_from(len).map_err(|_| refused(RefusalCode::BadRequest, "too long"))?;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match tokio::time::timeout(BODY_STALL, recv.read(&mut buf[at..])).await {
            Ok(Ok(Some(n))) => at += n,
            Ok(Ok(None)) => {
                return Err(refused(
                    RefusalCode::BadRequest,
                    format!("the body ended after {at} of {len} bytes"),
                ))
            }
            Ok(Err(e)) => {
                return Err(refused(
                    RefusalCode::BadRequest,
                    format!("reading the body: {e}"),
                ))
            }
            Err(_) => {
                return Err(refused(
                    RefusalCode::BadRequest,
                    format!("the body stopped arriving for {} s", BODY_STALL.as_secs()),
                ))
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// Stores checked chunks with one flush; the answer to a pack.
async fn put(app: &App, items: Vec<(ChunkId, Bytes)>) -> AgentResponse {
    let stored = items.len() as u64;
    match app.chunks.put_many(items).await {
        Ok(()) => AgentResponse::Stored { stored },
        Err(e) => {
            tracing::error!(error = %e, "cannot store an agent's chunks");
            refused(
                RefusalCode::Internal,
                format!("the controller's chunk store: {e}"),
            )
        }
    }
}

/// Answers a `MissingChunks`.
pub async fn missing(app: &App, chunks: &[ChunkId]) -> AgentResponse {
    match app.chunks.contains(chunks).await {
        Ok(present) => AgentResponse::Missing {
            chunks: chunks
                .iter()
                .zip(present)
                .filter(|(_, p)| !p)
                .map(|(id, _)| *id)
                .collect(),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot read the chunk store");
            refused(
                RefusalCode::Internal,
                format!("the controller's chunk store: {e}"),
            )
        }
    }
}

/// Answers a `StoreChunks`: reads the pack, checks every frame, stores the new
/// chunks with one flush.
pub async fn store(app: &App, recv: &mut quinn::RecvStream, len: u64) -> AgentResponse {
    let body = match read_body(recv, len).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let checked = body.clone();
    let frames = match tokio::task::spawn_blocking(move || pack::parse(&checked)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return refused(RefusalCode::BadRequest, e.to_string()),
        Err(e) => return refused(RefusalCode::Internal, e.to_string()),
    };
    let mut seen = std::collections::HashSet::new();
    let items: Vec<(ChunkId, Bytes)> = frames
        .into_iter()
        .filter(|(id, _)| seen.insert(*id))
        .map(|(id, r)| (id, body.slice(r)))
        .collect();
    put(app, items).await
}

/// Answers a `ChunkSignatures`: the header, then each chunk's signature (empty for
/// one the store lacks), computed off the async threads.
pub async fn signatures(
    app: &App,
    chunks: &[ChunkId],
    send: &mut quinn::SendStream,
) -> Result<(), AgentResponse> {
    let mut body = vec![];
    for id in chunks {
        let sig = match app.chunks.get(*id).await {
            Ok(Some(bytes)) => {
                tokio::task::spawn_blocking(move || cairn_shared::chunks::patch::signature(&bytes))
                    .await
                    .map_err(|e| refused(RefusalCode::Internal, e.to_string()))?
            }
            Ok(None) => vec![],
            Err(e) => return Err(refused(RefusalCode::Internal, e.to_string())),
        };
        body.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        body.extend_from_slice(&sig);
    }
    let header = AgentResponse::Signatures {
        len: body.len() as u64,
    };
    super::chunks::send_object(&header, &body, send).await
}

/// Answers a `StoreChunkDeltas`: reads the pack, rebuilds every chunk from its base
/// and checks it against its id, then stores them with one flush.
pub async fn store_deltas(app: &App, recv: &mut quinn::RecvStream, len: u64) -> AgentResponse {
    use cairn_shared::chunks::patch;
    let body = match read_body(recv, len).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let frames = match patch::parse_delta_pack(&body) {
        Ok(f) => f,
        Err(e) => return refused(RefusalCode::BadRequest, e.to_string()),
    };
    // Deltas are small and their chunks are not: bound what one pack rebuilds in
    // memory (a pack of tiny deltas copying a large base would otherwise hold
    // gigabytes).
    let budget = 4 * MAX_PACK_BYTES as usize;
    let mut rebuilt_bytes = 0usize;
    let mut items = vec![];
    for (id, base, range) in frames {
        if rebuilt_bytes > budget {
            return refused(
                RefusalCode::BadRequest,
                format!(
                    "the delta pack rebuilds more than {budget} bytes; send fewer deltas per pack"
                ),
            );
        }
        let Ok(Some(base_bytes)) = app.chunks.get(base).await else {
            return refused(
                RefusalCode::BadRequest,
                format!("chunk {id}: the controller does not hold its base {base}"),
            );
        };
        let delta = body.slice(range);
        let rebuilt =
            tokio::task::spawn_blocking(move || patch::apply(id, &base_bytes, &delta)).await;
        match rebuilt {
            Ok(Ok(bytes)) => {
                rebuilt_bytes += bytes.len();
                items.push((id, Bytes::from(bytes)));
            }
            Ok(Err(e)) => return refused(RefusalCode::BadRequest, e.to_string()),
            Err(e) => return refused(RefusalCode::Internal, e.to_string()),
        }
    }
    put(app, items).await
}

/// A `CommitSnapshot`'s fields.
#[derive(Debug)]
pub struct Commit {
    pub instance: InstanceId,
    pub base_generation: u64,
    pub final_save: bool,
    pub len: u64,
    pub delta: bool,
}

/// The manifest a delta body rebuilds, against a base in the chunk store.
async fn rebuild(app: &App, body: Bytes) -> Result<Bytes, AgentResponse> {
    use cairn_shared::chunks::delta::{apply, Delta};
    let max = MAX_SNAPSHOT_MANIFEST_BYTES as usize;
    let d = Delta::decode(&body, max).map_err(|e| {
        refused(
            RefusalCode::BadRequest,
            format!("manifest delta refused: {e}"),
        )
    })?;
    let base = match app.chunks.get(d.base).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(refused(
                RefusalCode::BadRequest,
                format!(
                "base_unknown: the controller does not hold manifest {}; send the whole manifest",
                d.base
            ),
            ))
        }
        Err(e) => return Err(refused(RefusalCode::Internal, e.to_string())),
    };
    tokio::task::spawn_blocking(move || apply(&d, &base, max))
        .await
        .map_err(|e| refused(RefusalCode::Internal, e.to_string()))?
        .map(Bytes::from)
        .map_err(|e| {
            refused(
                RefusalCode::BadRequest,
                format!("manifest delta refused: {e}"),
            )
        })
}

/// Answers a `CommitSnapshot` from `host`.
pub async fn commit(
    app: &App,
    host: &HostId,
    recv: &mut quinn::RecvStream,
    req: Commit,
) -> AgentResponse {
    let Commit {
        instance,
        base_generation,
        final_save,
        len,
        delta,
    } = req;
    let instance = &instance;
    // Who may commit is settled before a byte of the body is read.
    let Some(i) = app.instances.get(instance) else {
        return refused(RefusalCode::BadRequest, format!("no instance {instance}"));
    };
    if i.host.as_ref() != Some(host) {
        tracing::warn!(%instance, %host, "an agent tried to save a volume of an instance not placed on its host");
        return refused(
            RefusalCode::BadRequest,
            format!("instance {instance} is not placed on this host"),
        );
    }
    let Some(vol) = &i.volume else {
        return refused(
            RefusalCode::BadRequest,
            format!("instance {instance} has no volume"),
        );
    };
    let body = match read_body(recv, len).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = if delta {
        match rebuild(app, body).await {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        body
    };
    match app
        .volumes
        .commit(
            &i.owner,
            &vol.name,
            instance.as_str(),
            base_generation,
            final_save,
            body,
            cairn_shared::time::now_ms(),
        )
        .await
    {
        Ok(outcome) => AgentResponse::Committed(outcome),
        Err(e) => {
            use crate::volumes::VolumesError as E;
            let code = match e {
                E::Store(_) | E::Chunks(_) | E::ManifestLost(_) => RefusalCode::Internal,
                _ => RefusalCode::BadRequest,
            };
            tracing::warn!(%instance, volume = %vol.mount.volume, error = %e, "volume snapshot refused");
            refused(code, e.to_string())
        }
    }
}
