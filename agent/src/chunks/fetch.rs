//! Trees fetched over the link (dataset versions, image archives): a manifest, then
//! the chunks the tree being assembled still lacks, each written straight into it.
//!
//! * The manifest's bytes must hash to its name and decode as a valid manifest
//!   under [`Limits::DEFAULT`]; a malicious one (paths leaving the tree, sizes that
//!   do not add up, a million entries, a symlink used as a parent) is refused with
//!   the rule it broke before anything is written.
//! * Chunks are planned by [`Transfer`] over [`Assembly::missing`]: what earlier
//!   trees on this host and the staging directory of an interrupted attempt hold is
//!   never asked for, so an agent killed half-way fetches only the rest when it
//!   starts again. Up to [`FetchOptions::streams`] batches are in flight, one QUIC
//!   stream each.
//! * Each chunk is checked on arrival (its length against the manifest before it is
//!   read, its bytes against its name by [`Assembly::put`]) and written into the tree
//!   before the next is read: memory is one chunk per stream.
//! * A chunk the controller says is missing or corrupt fails the fetch at once with
//!   that reason; link trouble re-plans the batch and tries again, a few times.
//!
//! [`ChunkSource`] hides the link so all of this is tested without one;
//! [`QuicChunkSource`] is the real thing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::chunks::delta;
use cairn_shared::chunks::dir::ChunkDir;
use cairn_shared::chunks::manifest::{Limits, Manifest};
use cairn_shared::chunks::materialise::{Assembly, MaterialiseError};
use cairn_shared::chunks::plan::{PlanOptions, Transfer};
use cairn_shared::chunks::{ChunkId, ChunkRef, MAX_CHUNK_LEN};
use cairn_shared::framing;
use cairn_shared::protocol::{
    describe_connection_error, AgentRequest, AgentResponse, ChunkStreamCode, MAX_FETCH_CHUNKS,
    MAX_MANIFEST_BYTES,
};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// How long a fetch may go without a byte before the attempt is given up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the controller may take to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("not connected to the controller")]
    NotConnected,
    #[error("fetching from the controller: {0}")]
    Link(String),
    /// The controller refused, in its own words (names the chunk or manifest).
    #[error("{0}")]
    Refused(String),
    /// The controller reset a chunk stream; the words name the chunk.
    #[error("{0}")]
    Controller(String),
    #[error("manifest {manifest} refused: {rule}")]
    BadManifest { manifest: ChunkId, rule: String },
    #[error("chunk {chunk} arrived corrupt: {detail}")]
    Corrupt { chunk: ChunkId, detail: String },
    #[error("no bytes from the controller for {} s", STALL_TIMEOUT.as_secs())]
    Stalled,
    #[error("writing the dataset on this host: {0}")]
    Cache(String),
}

impl FetchError {
    /// Whether trying again may help: the link's troubles may pass, the
    /// controller's word on a chunk or a manifest will not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::NotConnected
                | FetchError::Link(_)
                | FetchError::Stalled
                | FetchError::Corrupt { .. }
        )
    }
}

/// Chunks of one batch, in the order asked.
pub trait ChunkStream: Send {
    /// The next chunk's bytes; `expect` is what the manifest says it is (the stream
    /// refuses a longer one before reading it, and names it in errors).
    fn next(&mut self, expect: ChunkRef) -> BoxFuture<'_, Result<Vec<u8>, FetchError>>;
}

/// A manifest as the source sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestBytes {
    /// The encoded manifest (unverified).
    Whole(Vec<u8>),
    /// An encoded [`delta::Delta`] from the base asked for (unverified).
    Delta(Vec<u8>),
}

/// Where chunks and manifests come from.
pub trait ChunkSource: Send + Sync + 'static {
    /// A manifest's encoded bytes (unverified).
    fn manifest(&self, id: ChunkId) -> BoxFuture<'_, Result<Vec<u8>, FetchError>>;
    /// The manifest `id` as a delta from `base` (which the caller holds) if the
    /// source can send one, else whole.
    fn manifest_from(
        &self,
        id: ChunkId,
        _base: ChunkId,
    ) -> BoxFuture<'_, Result<ManifestBytes, FetchError>> {
        Box::pin(async move { self.manifest(id).await.map(ManifestBytes::Whole) })
    }
    /// Opens a stream of `ids`' bytes, in order.
    fn chunks(&self, ids: Vec<ChunkId>) -> BoxFuture<'_, Result<Box<dyn ChunkStream>, FetchError>>;
    /// The encoded manifest (unverified) of the image archive named `archive`;
    /// [`FetchError::Refused`] when the source does not serve archives as chunks.
    fn image_manifest(&self, archive: &str) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
        let archive = archive.to_string();
        Box::pin(async move {
            Err(FetchError::Refused(format!(
                "image archive {archive} is not served as chunks here"
            )))
        })
    }
}

/// Bytes in place so far and in all (chunks found on this host count as done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

impl FetchProgress {
    pub fn percent(&self) -> u64 {
        if self.total_bytes == 0 {
            return 100;
        }
        (self.done_bytes.min(self.total_bytes) * 100) / self.total_bytes
    }
}

/// How a fetch runs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Batches (QUIC streams) in flight at once; read at every batch start, so a
    /// pre-fetch a launch joins speeds up.
    pub streams: Arc<AtomicUsize>,
    /// Bytes per batch (the planner closes a batch at this many).
    pub batch_bytes: u64,
    /// Failed batches in a row before the fetch gives up.
    pub attempts: u32,
}

/// Streams of a launch's fetch.
pub const LAUNCH_STREAMS: usize = 8;
/// Streams of a pre-fetch: fewer, so launches get the link first (a launch that
/// joins a pre-fetch raises it to [`LAUNCH_STREAMS`]).
pub const PREFETCH_STREAMS: usize = 4;

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            streams: Arc::new(AtomicUsize::new(LAUNCH_STREAMS)),
            batch_bytes: 8 * 1024 * 1024,
            attempts: 5,
        }
    }
}

/// What one fetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
}

fn cache_err(e: impl std::fmt::Display) -> FetchError {
    FetchError::Cache(e.to_string())
}

/// The manifest `id`, from the cache or the controller, verified and validated.
/// With a `base` the cache holds, the controller is asked for the difference only
/// (anything wrong with the delta falls back to the whole manifest). A fetched
/// manifest is kept in the chunk cache under its name.
pub async fn fetch_manifest(
    source: &dyn ChunkSource,
    cache: &Arc<ChunkDir>,
    id: ChunkId,
    base: Option<ChunkId>,
) -> Result<Manifest, FetchError> {
    let c = cache.clone();
    let (local, base) = tokio::task::spawn_blocking(move || {
        let base = base
            .filter(|b| *b != id)
            .and_then(|b| c.get_manifest(&b).ok().flatten().map(|bytes| (b, bytes)));
        (c.get_manifest(&id), base)
    })
    .await
    .map_err(cache_err)?;
    let bytes = match local {
        Ok(Some(b)) => b,
        // A corrupt cached copy is dropped and fetched again.
        Ok(None) | Err(_) => {
            let rebuilt = match base {
                Some((base_id, base_bytes)) => match source.manifest_from(id, base_id).await? {
                    ManifestBytes::Whole(b) => Some(b),
                    ManifestBytes::Delta(d) => {
                        let max = MAX_MANIFEST_BYTES as usize;
                        let r = delta::Delta::decode(&d, max)
                            .and_then(|d| delta::apply(&d, &base_bytes, max));
                        match r {
                            Ok(b) => Some(b),
                            Err(e) => {
                                tracing::warn!(manifest = %id, error = %e, "a manifest delta did not apply; fetching the whole manifest");
                                None
                            }
                        }
                    }
                },
                None => None,
            };
            let bytes = match rebuilt {
                Some(b) => b,
                None => source.manifest(id).await?,
            };
            if !id.verifies(&bytes) {
                return Err(FetchError::Corrupt {
                    chunk: id,
                    detail: "the manifest's bytes do not match its name".into(),
                });
            }
            bytes
        }
    };
    let manifest =
        Manifest::decode(&bytes, &Limits::DEFAULT).map_err(|e| FetchError::BadManifest {
            manifest: id,
            rule: e.to_string(),
        })?;
    let c = cache.clone();
    tokio::task::spawn_blocking(move || c.put(&id, &bytes, true))
        .await
        .map_err(cache_err)?
        .map_err(cache_err)?;
    Ok(manifest)
}

/// What a batch task tells the fetch loop.
enum Event {
    Arrived { seq: u64, chunk: ChunkRef },
    Done { seq: u64 },
    Failed { seq: u64, error: FetchError },
}

/// Fetches every chunk `tree` still lacks and puts each into it. `progress` goes on
/// from what it says (the caller counts what was found on this host).
pub async fn fetch_chunks(
    source: Arc<dyn ChunkSource>,
    tree: Arc<Assembly>,
    opts: &FetchOptions,
    progress: &watch::Sender<FetchProgress>,
) -> Result<FetchStats, FetchError> {
    let want: Vec<ChunkRef> = tree.missing().to_vec();
    let mut stats = FetchStats::default();
    let FetchProgress {
        mut done_bytes,
        total_bytes,
    } = *progress.borrow();
    let mut plan = Transfer::new(
        want,
        |_: &ChunkId| false,
        PlanOptions {
            batch_bytes: opts.batch_bytes,
            batch_chunks: MAX_FETCH_CHUNKS,
            max_in_flight: LAUNCH_STREAMS,
        },
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(64);
    let mut in_flight: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut failures = 0u32;
    let mut last_error = None;
    let result = loop {
        if plan.is_complete() {
            break Ok(stats);
        }
        let streams = opts
            .streams
            .load(Ordering::Relaxed)
            .clamp(1, LAUNCH_STREAMS);
        while in_flight.len() < streams {
            let Some(batch) = plan.next_batch() else {
                break;
            };
            let seq = batch.seq;
            let chunks: Vec<ChunkRef> = batch.chunks.clone();
            let task = tokio::spawn(run_batch(
                source.clone(),
                tree.clone(),
                seq,
                chunks,
                tx.clone(),
            ));
            in_flight.insert(seq, task);
        }
        if in_flight.is_empty() {
            // Nothing in flight and nothing to plan, yet not complete: the planner
            // holds chunks back after failures; give up with the last reason.
            break Err(last_error.unwrap_or_else(|| {
                FetchError::Link("the transfer stalled with chunks still missing".into())
            }));
        }
        let Some(event) = rx.recv().await else {
            break Err(FetchError::Link("batch tasks ended".into()));
        };
        match event {
            Event::Arrived { seq, chunk } => {
                if let Err(e) = plan.arrived(seq, &chunk.id) {
                    break Err(FetchError::Link(format!("chunk transfer: {e}")));
                }
                stats.chunks_fetched += 1;
                stats.bytes_fetched += u64::from(chunk.len);
                done_bytes += u64::from(chunk.len);
                progress.send_replace(FetchProgress {
                    done_bytes,
                    total_bytes,
                });
            }
            Event::Done { seq } => {
                in_flight.remove(&seq);
                if let Err(e) = plan.batch_done(seq) {
                    break Err(FetchError::Link(format!("chunk transfer: {e}")));
                }
                failures = 0;
            }
            Event::Failed { seq, error } => {
                in_flight.remove(&seq);
                if let Err(e) = plan.batch_failed(seq) {
                    break Err(FetchError::Link(format!("chunk transfer: {e}")));
                }
                if !error.is_transient() {
                    break Err(error);
                }
                failures += 1;
                tracing::info!(seq, %error, failures, "chunk batch failed");
                if failures >= opts.attempts.max(1) {
                    break Err(error);
                }
                last_error = Some(error);
                // Back off a little; the link may be coming back.
                tokio::time::sleep(Duration::from_millis(250 << failures.min(5))).await;
            }
        }
    };
    for (_, t) in in_flight {
        t.abort();
    }
    result
}

/// Fetches one batch: opens its stream, then reads each chunk and puts it into the
/// tree (which checks it). The write of one chunk overlaps the read of the next;
/// memory is two chunks per stream.
async fn run_batch(
    source: Arc<dyn ChunkSource>,
    tree: Arc<Assembly>,
    seq: u64,
    chunks: Vec<ChunkRef>,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    type Put = tokio::task::JoinHandle<Result<(), MaterialiseError>>;
    async fn landed(
        put: Option<(ChunkRef, Put)>,
        seq: u64,
        tx: &tokio::sync::mpsc::Sender<Event>,
    ) -> Result<(), FetchError> {
        let Some((chunk, put)) = put else {
            return Ok(());
        };
        put.await.map_err(cache_err)?.map_err(|e| match e {
            MaterialiseError::Corrupt { chunk, .. } => FetchError::Corrupt {
                chunk,
                detail: "its bytes do not match its name".into(),
            },
            other => cache_err(other),
        })?;
        let _ = tx.send(Event::Arrived { seq, chunk }).await;
        Ok(())
    }
    let result = async {
        let mut stream = source.chunks(chunks.iter().map(|c| c.id).collect()).await?;
        let mut writing: Option<(ChunkRef, Put)> = None;
        for chunk in &chunks {
            let bytes = stream.next(*chunk).await?;
            if bytes.len() != chunk.len as usize {
                return Err(FetchError::Corrupt {
                    chunk: chunk.id,
                    detail: format!("{} bytes, the manifest says {}", bytes.len(), chunk.len),
                });
            }
            landed(writing.take(), seq, &tx).await?;
            let (t, c) = (tree.clone(), *chunk);
            writing = Some((
                *chunk,
                tokio::task::spawn_blocking(move || t.put(&c, &bytes)),
            ));
        }
        landed(writing, seq, &tx).await
    }
    .await;
    let _ = tx
        .send(match result {
            Ok(()) => Event::Done { seq },
            Err(error) => Event::Failed { seq, error },
        })
        .await;
}

// ---------------------------------------------------------------- the link

/// Fetches from the controller on the link's current connection.
#[derive(Debug, Clone)]
pub struct QuicChunkSource {
    connection: watch::Receiver<Option<quinn::Connection>>,
}

impl QuicChunkSource {
    pub fn new(connection: watch::Receiver<Option<quinn::Connection>>) -> Self {
        QuicChunkSource { connection }
    }

    /// Opens a stream of its own (bulk transfers never hold up heartbeats), sends
    /// `req`, reads the answer's header within [`ANSWER_TIMEOUT`]; a refusal is
    /// [`FetchError::Refused`] in the controller's words.
    pub async fn ask(
        &self,
        req: &AgentRequest,
    ) -> Result<(AgentResponse, quinn::RecvStream), FetchError> {
        self.ask_with_body(req, &[], ANSWER_TIMEOUT).await
    }

    /// [`QuicChunkSource::ask`] for a request followed by a body (a pack of
    /// chunks, a snapshot's manifest), waiting `answer_within` for the answer
    /// once the body is sent.
    pub async fn ask_with_body(
        &self,
        req: &AgentRequest,
        body: &[u8],
        answer_within: Duration,
    ) -> Result<(AgentResponse, quinn::RecvStream), FetchError> {
        let conn = self
            .connection
            .borrow()
            .clone()
            .ok_or(FetchError::NotConnected)?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| FetchError::Link(describe_connection_error(&e)))?;
        framing::write(&mut send, req, 64 * 1024)
            .await
            .map_err(|e| FetchError::Link(e.to_string()))?;
        if !body.is_empty() {
            tokio::time::timeout(STALL_TIMEOUT, send.write_all(body))
                .await
                .map_err(|_| FetchError::Stalled)?
                .map_err(|e| FetchError::Link(e.to_string()))?;
        }
        let _ = send.finish();
        let resp = tokio::time::timeout(
            answer_within,
            framing::read::<_, AgentResponse>(&mut recv, 64 * 1024),
        )
        .await
        .map_err(|_| FetchError::Link(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs())))?
        .map_err(|e| header_error(e, req))?
        .ok_or_else(|| FetchError::Link("the controller closed the stream".into()))?;
        if let AgentResponse::Refused { message, .. } = resp {
            return Err(FetchError::Refused(message));
        }
        Ok((resp, recv))
    }
}

/// What the controller meant by resetting a stream with `code`, about the chunk of
/// `asked` the code names (or `at`, the chunk being read, when it names none).
fn reset_error(code: quinn::VarInt, asked: &[ChunkId], at: Option<&ChunkId>) -> FetchError {
    match ChunkStreamCode::split(code.into_inner()) {
        Some((c, i)) => match asked.get(i).or(at) {
            Some(named) if c == ChunkStreamCode::Stalled => FetchError::Link(c.describe(named)),
            Some(named) => FetchError::Controller(c.describe(named)),
            None => FetchError::Link(format!("the controller reset the stream (code {code})")),
        },
        None => match at {
            Some(chunk) => FetchError::Link(format!(
                "the controller reset the stream (code {code}) at chunk {chunk}"
            )),
            None => FetchError::Link(format!("the controller reset the stream (code {code})")),
        },
    }
}

/// A failure to read an answer's header. The controller may reset the stream
/// before its header is delivered (a reset discards what it had not yet sent, so a
/// first chunk found corrupt can overtake the header): that reset still names a
/// chunk of the request and means the same as it does mid-stream.
fn header_error(e: framing::FrameError, req: &AgentRequest) -> FetchError {
    if let framing::FrameError::Io(io) = &e {
        if let Some(quinn::ReadError::Reset(code)) = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
        {
            let asked: &[ChunkId] = match req {
                AgentRequest::FetchChunks { chunks } => chunks,
                AgentRequest::FetchManifest { manifest } => std::slice::from_ref(manifest),
                _ => &[],
            };
            return reset_error(*code, asked, None);
        }
    }
    FetchError::Link(e.to_string())
}

/// Reads exactly `buf.len()` bytes of `chunk`, mapping a stream reset to what the
/// controller meant by it (about the chunk of `asked` the reset code names).
async fn read_exact(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    chunk: &ChunkId,
    asked: &[ChunkId],
) -> Result<(), FetchError> {
    use quinn::{ReadError, ReadExactError};
    match tokio::time::timeout(STALL_TIMEOUT, recv.read_exact(buf)).await {
        Err(_) => Err(FetchError::Stalled),
        Ok(Ok(())) => Ok(()),
        Ok(Err(ReadExactError::FinishedEarly(n))) => Err(FetchError::Link(format!(
            "the controller's stream ended inside chunk {chunk} ({n} of {} bytes)",
            buf.len()
        ))),
        Ok(Err(ReadExactError::ReadError(ReadError::Reset(code)))) => {
            Err(reset_error(code, asked, Some(chunk)))
        }
        Ok(Err(ReadExactError::ReadError(ReadError::ConnectionLost(e)))) => {
            Err(FetchError::Link(describe_connection_error(&e)))
        }
        Ok(Err(e)) => Err(FetchError::Link(e.to_string())),
    }
}

struct QuicChunkStream {
    recv: quinn::RecvStream,
    asked: Vec<ChunkId>,
}

impl ChunkStream for QuicChunkStream {
    fn next(&mut self, expect: ChunkRef) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
        Box::pin(async move {
            let mut len = [0u8; 4];
            read_exact(&mut self.recv, &mut len, &expect.id, &self.asked).await?;
            let len = u32::from_be_bytes(len);
            // Checked before a byte of it is buffered.
            if len != expect.len || len > MAX_CHUNK_LEN {
                return Err(FetchError::Corrupt {
                    chunk: expect.id,
                    detail: format!("announced {len} bytes, the manifest says {}", expect.len),
                });
            }
            let mut buf = vec![0u8; len as usize];
            read_exact(&mut self.recv, &mut buf, &expect.id, &self.asked).await?;
            Ok(buf)
        })
    }
}

/// Reads the `len` bytes of manifest `id` (or of its delta) that follow an answer,
/// refusing more than [`MAX_MANIFEST_BYTES`] before buffering any.
async fn read_manifest(
    recv: &mut quinn::RecvStream,
    id: ChunkId,
    len: u64,
) -> Result<Vec<u8>, FetchError> {
    if len > MAX_MANIFEST_BYTES {
        return Err(FetchError::BadManifest {
            manifest: id,
            rule: format!("{len} bytes, over the limit of {MAX_MANIFEST_BYTES}"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(recv, &mut buf, &id, &[id]).await?;
    Ok(buf)
}

impl ChunkSource for QuicChunkSource {
    fn manifest(&self, id: ChunkId) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
        Box::pin(async move {
            let (resp, mut recv) = self
                .ask(&AgentRequest::FetchManifest { manifest: id })
                .await?;
            let AgentResponse::Manifest { len } = resp else {
                return Err(FetchError::Link(format!(
                    "the controller answered a manifest fetch with {resp:?}"
                )));
            };
            read_manifest(&mut recv, id, len).await
        })
    }

    fn manifest_from(
        &self,
        id: ChunkId,
        base: ChunkId,
    ) -> BoxFuture<'_, Result<ManifestBytes, FetchError>> {
        Box::pin(async move {
            let asked = AgentRequest::FetchManifestDelta { manifest: id, base };
            let (resp, mut recv) = match self.ask(&asked).await {
                Ok(r) => r,
                // A controller from before deltas refuses the request.
                Err(FetchError::Refused(_)) => {
                    return self.manifest(id).await.map(ManifestBytes::Whole)
                }
                Err(e) => return Err(e),
            };
            let (len, whole) = match resp {
                AgentResponse::Manifest { len } => (len, true),
                AgentResponse::ManifestDelta { len } => (len, false),
                other => {
                    return Err(FetchError::Link(format!(
                        "the controller answered a manifest fetch with {other:?}"
                    )))
                }
            };
            let buf = read_manifest(&mut recv, id, len).await?;
            Ok(if whole {
                ManifestBytes::Whole(buf)
            } else {
                ManifestBytes::Delta(buf)
            })
        })
    }

    fn image_manifest(&self, archive: &str) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
        let archive = archive.to_string();
        Box::pin(async move {
            let named = ChunkId::from_hex(&archive).ok_or_else(|| {
                FetchError::Refused(format!("image archive {archive} is not a BLAKE3 hash"))
            })?;
            let (resp, mut recv) = self
                .ask(&AgentRequest::FetchImageManifest { archive })
                .await?;
            let AgentResponse::Manifest { len } = resp else {
                return Err(FetchError::Link(format!(
                    "the controller answered an image manifest fetch with {resp:?}"
                )));
            };
            read_manifest(&mut recv, named, len).await
        })
    }

    fn chunks(&self, ids: Vec<ChunkId>) -> BoxFuture<'_, Result<Box<dyn ChunkStream>, FetchError>> {
        Box::pin(async move {
            let asked = ids.clone();
            let (resp, recv) = self.ask(&AgentRequest::FetchChunks { chunks: ids }).await?;
            match resp {
                AgentResponse::Chunks => {
                    Ok(Box::new(QuicChunkStream { recv, asked }) as Box<dyn ChunkStream>)
                }
                other => Err(FetchError::Link(format!(
                    "the controller answered a chunk fetch with {other:?}"
                ))),
            }
        })
    }
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
pub(crate) mod testing {
    //! A controller in memory, with knobs for failures.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_shared::chunks::manifest::{Entry, EntryKind};
    use cairn_shared::chunks::DEFAULT_PARAMS;
    use cairn_shared::workload::DatasetSpec;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeSource {
        pub objects: Mutex<HashMap<ChunkId, Vec<u8>>>,
        /// Read as corrupt by the controller (stream reset).
        pub corrupt: Mutex<HashSet<ChunkId>>,
        /// Sent with a flipped byte (damaged in transit).
        pub tamper: Mutex<HashSet<ChunkId>>,
        /// The link drops after this many more chunks.
        pub cut_after: Mutex<Option<usize>>,
        /// Every chunk sent, in order.
        pub served: Mutex<Vec<ChunkId>>,
        pub manifests_served: AtomicUsize,
        /// Streams open now, and the most at once.
        pub open: AtomicUsize,
        pub max_open: AtomicUsize,
        /// Holds every chunk read until released (for single-flight tests).
        pub gate: Option<Arc<tokio::sync::Semaphore>>,
        /// Image archives served as chunks: archive name → manifest bytes.
        pub image_manifests: Mutex<HashMap<String, Vec<u8>>>,
    }

    /// A version of `files` files of one distinct chunk each.
    pub fn version(src: &FakeSource, tag: &str, files: usize, len: usize) -> DatasetSpec {
        let mut entries = vec![];
        for f in 0..files {
            let bytes: Vec<u8> = format!("{tag}-{f}-").bytes().cycle().take(len).collect();
            let id = src.add(&bytes);
            entries.push(Entry {
                path: format!("file{f}"),
                kind: EntryKind::File {
                    chunks: vec![ChunkRef {
                        id,
                        len: len as u32,
                    }],
                },
                mode: 0o644,
                size: len as u64,
                mtime_ns: 0,
            });
        }
        let m = Manifest::new(DEFAULT_PARAMS, entries);
        let manifest = src.add(&m.encode());
        DatasetSpec {
            name: tag.into(),
            version: 1,
            manifest,
            bytes: (files * len) as u64,
        }
    }

    impl FakeSource {
        pub fn add(&self, bytes: &[u8]) -> ChunkId {
            let id = ChunkId::of(bytes);
            self.objects.lock().unwrap().insert(id, bytes.to_vec());
            id
        }
    }

    struct FakeStream {
        source: Arc<FakeSource>,
    }

    impl Drop for FakeStream {
        fn drop(&mut self) {
            self.source.open.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl ChunkStream for FakeStream {
        fn next(&mut self, expect: ChunkRef) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
            Box::pin(async move {
                let s = &self.source;
                if let Some(gate) = &s.gate {
                    gate.acquire().await.unwrap().forget();
                }
                tokio::task::yield_now().await;
                {
                    let mut cut = s.cut_after.lock().unwrap();
                    if let Some(n) = cut.as_mut() {
                        if *n == 0 {
                            return Err(FetchError::Link("connection lost".into()));
                        }
                        *n -= 1;
                    }
                }
                if s.corrupt.lock().unwrap().contains(&expect.id) {
                    return Err(FetchError::Controller(
                        ChunkStreamCode::Corrupt.describe(&expect.id),
                    ));
                }
                let mut bytes = s.objects.lock().unwrap().get(&expect.id).cloned().unwrap();
                if s.tamper.lock().unwrap().contains(&expect.id) && !bytes.is_empty() {
                    bytes[0] ^= 0xff;
                }
                s.served.lock().unwrap().push(expect.id);
                Ok(bytes)
            })
        }
    }

    /// The source as the fetcher holds it.
    #[derive(Clone)]
    pub struct Shared(pub Arc<FakeSource>);

    impl ChunkSource for Shared {
        fn image_manifest(&self, archive: &str) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
            let found = self.0.image_manifests.lock().unwrap().get(archive).cloned();
            let archive = archive.to_string();
            Box::pin(async move {
                found.ok_or_else(|| FetchError::Refused(format!("no archive {archive}")))
            })
        }
        fn manifest(&self, id: ChunkId) -> BoxFuture<'_, Result<Vec<u8>, FetchError>> {
            Box::pin(async move {
                self.0.manifests_served.fetch_add(1, Ordering::SeqCst);
                self.0
                    .objects
                    .lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| {
                        FetchError::Refused(format!("manifest {id} is not on the controller"))
                    })
            })
        }
        fn chunks(
            &self,
            ids: Vec<ChunkId>,
        ) -> BoxFuture<'_, Result<Box<dyn ChunkStream>, FetchError>> {
            Box::pin(async move {
                assert!(!ids.is_empty() && ids.len() <= MAX_FETCH_CHUNKS);
                let objects = self.0.objects.lock().unwrap();
                if let Some(absent) = ids.iter().find(|i| !objects.contains_key(i)) {
                    return Err(FetchError::Refused(format!(
                        "chunk {absent} is missing on the controller"
                    )));
                }
                drop(objects);
                let now = self.0.open.fetch_add(1, Ordering::SeqCst) + 1;
                self.0.max_open.fetch_max(now, Ordering::SeqCst);
                Ok(Box::new(FakeStream {
                    source: self.0.clone(),
                }) as Box<dyn ChunkStream>)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::testing::{FakeSource, Shared};
    use super::*;
    use cairn_shared::chunks::manifest::{Entry, EntryKind, FORMAT};
    use cairn_shared::chunks::DEFAULT_PARAMS;

    /// A manifest of `files` files of `chunks` distinct chunks each, all in `src`.
    fn tree(
        src: &FakeSource,
        files: usize,
        chunks: usize,
        chunk_len: usize,
    ) -> (ChunkId, Manifest) {
        let mut entries = vec![];
        for f in 0..files {
            let mut refs = vec![];
            for c in 0..chunks {
                let bytes: Vec<u8> = format!("{f}-{c}-")
                    .bytes()
                    .cycle()
                    .take(chunk_len)
                    .collect();
                let id = src.add(&bytes);
                refs.push(ChunkRef {
                    id,
                    len: chunk_len as u32,
                });
            }
            entries.push(Entry {
                path: format!("f{f:04}"),
                kind: EntryKind::File { chunks: refs },
                mode: 0o644,
                size: (chunks * chunk_len) as u64,
                mtime_ns: 0,
            });
        }
        let m = Manifest {
            format: FORMAT,
            params: DEFAULT_PARAMS,
            entries,
        };
        let bytes = m.encode();
        let id = src.add(&bytes);
        (id, m)
    }

    fn setup() -> (tempfile::TempDir, Arc<ChunkDir>, Arc<FakeSource>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(ChunkDir::open(tmp.path().join("chunks")).unwrap());
        (tmp, dir, Arc::new(FakeSource::default()))
    }

    fn opts() -> FetchOptions {
        FetchOptions {
            batch_bytes: 4 * 1024,
            attempts: 2,
            ..FetchOptions::default()
        }
    }

    /// The tree of `manifest` laid out under `tmp/trees`, with progress counting
    /// what was found in place.
    fn assemble(
        tmp: &tempfile::TempDir,
        manifest: &Manifest,
    ) -> (Arc<Assembly>, watch::Sender<FetchProgress>) {
        let dest = tmp.path().join("trees").join(manifest.id().to_hex());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let (a, _) = Assembly::prepare(Arc::new(manifest.clone()), &dest, &[]).unwrap();
        let total: u64 = manifest
            .unique_chunks()
            .iter()
            .map(|c| u64::from(c.len))
            .sum();
        let missing: u64 = a.missing().iter().map(|c| u64::from(c.len)).sum();
        let (tx, _) = watch::channel(FetchProgress {
            done_bytes: total - missing,
            total_bytes: total,
        });
        (Arc::new(a), tx)
    }

    #[tokio::test]
    async fn an_interrupted_fetch_resumes_with_only_the_missing_chunks() {
        let (tmp, cache, src) = setup();
        let (id, _) = tree(&src, 10, 10, 1000);
        let source: Arc<dyn ChunkSource> = Arc::new(Shared(src.clone()));
        let manifest = fetch_manifest(source.as_ref(), &cache, id, None)
            .await
            .unwrap();
        let (a, tx) = assemble(&tmp, &manifest);
        let rx = tx.subscribe();
        *src.cut_after.lock().unwrap() = Some(37);
        let err = fetch_chunks(source.clone(), a.clone(), &opts(), &tx)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        let first: Vec<ChunkId> = src.served.lock().unwrap().clone();
        assert_eq!(first.len(), 37);
        // Progress counts what arrived before the fetch gave up.
        assert!(rx.borrow().done_bytes > 0 && rx.borrow().done_bytes < 100_000);
        drop(a);
        // "Restart": the staging tree is resumed and only the rest is asked for.
        src.served.lock().unwrap().clear();
        *src.cut_after.lock().unwrap() = None;
        let (a, tx) = assemble(&tmp, &manifest);
        assert_eq!(tx.borrow().done_bytes, 37_000);
        let rx = tx.subscribe();
        let stats = fetch_chunks(source.clone(), a.clone(), &opts(), &tx)
            .await
            .unwrap();
        let second = src.served.lock().unwrap().clone();
        assert_eq!(second.len(), 63);
        assert!(second.iter().all(|c| !first.contains(c)));
        assert_eq!(stats.chunks_fetched, 63);
        assert_eq!(
            *rx.borrow(),
            FetchProgress {
                done_bytes: 100_000,
                total_bytes: 100_000
            }
        );
        let tree = a.finish(false).unwrap();
        cairn_shared::chunks::materialise::verify_tree(&manifest, &tree).unwrap();
        // The manifest comes from the cache from now on.
        fetch_manifest(source.as_ref(), &cache, id, None)
            .await
            .unwrap();
        assert_eq!(src.manifests_served.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn batches_run_in_parallel_up_to_the_stream_limit() {
        let (tmp, cache, src) = setup();
        let (id, _) = tree(&src, 40, 8, 1000);
        let source: Arc<dyn ChunkSource> = Arc::new(Shared(src.clone()));
        let manifest = fetch_manifest(source.as_ref(), &cache, id, None)
            .await
            .unwrap();
        let (a, tx) = assemble(&tmp, &manifest);
        fetch_chunks(source, a, &opts(), &tx).await.unwrap();
        let max = src.max_open.load(Ordering::SeqCst);
        assert!((2..=LAUNCH_STREAMS).contains(&max), "{max} streams at once");
        assert_eq!(src.served.lock().unwrap().len(), 320);
    }

    #[tokio::test]
    async fn a_chunk_corrupt_on_the_controller_fails_the_fetch_naming_it() {
        let (tmp, cache, src) = setup();
        let (id, m) = tree(&src, 2, 3, 500);
        let EntryKind::File { chunks } = &m.entries[1].kind else {
            panic!()
        };
        let bad = chunks[1].id;
        src.corrupt.lock().unwrap().insert(bad);
        let source: Arc<dyn ChunkSource> = Arc::new(Shared(src.clone()));
        let manifest = fetch_manifest(source.as_ref(), &cache, id, None)
            .await
            .unwrap();
        let (a, tx) = assemble(&tmp, &manifest);
        let err = fetch_chunks(source, a, &opts(), &tx).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("chunk {bad} is corrupt on the controller")
        );
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_chunk_damaged_in_transit_is_never_written() {
        let (tmp, cache, src) = setup();
        let (id, m) = tree(&src, 1, 4, 500);
        let EntryKind::File { chunks } = &m.entries[0].kind else {
            panic!()
        };
        let bad = chunks[2].id;
        src.tamper.lock().unwrap().insert(bad);
        let source: Arc<dyn ChunkSource> = Arc::new(Shared(src.clone()));
        let manifest = fetch_manifest(source.as_ref(), &cache, id, None)
            .await
            .unwrap();
        let (a, tx) = assemble(&tmp, &manifest);
        let err = fetch_chunks(source.clone(), a.clone(), &opts(), &tx)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("chunk {bad} arrived corrupt: its bytes do not match its name")
        );
        assert!(a.remaining() >= 1);
        // Once the link behaves, the retry fetches it.
        src.tamper.lock().unwrap().clear();
        drop(a);
        let (a, tx) = assemble(&tmp, &manifest);
        assert!(a.missing().iter().any(|c| c.id == bad));
        fetch_chunks(source, a.clone(), &opts(), &tx).await.unwrap();
        let tree = a.finish(false).unwrap();
        cairn_shared::chunks::materialise::verify_tree(&manifest, &tree).unwrap();
    }

    fn encoded(entries: Vec<Entry>) -> Vec<u8> {
        Manifest {
            format: FORMAT,
            params: DEFAULT_PARAMS,
            entries,
        }
        .encode()
    }

    async fn refused(src: &Arc<FakeSource>, cache: &Arc<ChunkDir>, bytes: Vec<u8>) -> String {
        let id = src.add(&bytes);
        let err = fetch_manifest(&Shared(src.clone()), cache, id, None)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::BadManifest { .. }), "{err}");
        assert!(!cache.contains(&id), "a refused manifest was kept");
        err.to_string()
    }

    fn file(path: &str, size: u64, chunks: Vec<ChunkRef>) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { chunks },
            mode: 0o644,
            size,
            mtime_ns: 0,
        }
    }

    #[tokio::test]
    async fn malicious_manifests_are_refused_with_the_rule_they_break() {
        let (_tmp, cache, src) = setup();
        let one_k = ChunkRef {
            id: src.add(&[7u8; 1024]),
            len: 1024,
        };
        // Leaving the tree.
        let e = refused(
            &src,
            &cache,
            encoded(vec![file("../escape", 1024, vec![one_k])]),
        )
        .await;
        assert!(e.contains(".."), "{e}");
        let e = refused(
            &src,
            &cache,
            encoded(vec![file("/etc/passwd", 1024, vec![one_k])]),
        )
        .await;
        assert!(e.contains("passwd") || e.contains("absolute"), "{e}");
        // 10 GiB declared for a 1 KiB chunk.
        let e = refused(
            &src,
            &cache,
            encoded(vec![file("big", 10 << 30, vec![one_k])]),
        )
        .await;
        assert!(e.contains("big"), "{e}");
        // A symlink used as a parent.
        let e = refused(
            &src,
            &cache,
            encoded(vec![
                Entry {
                    path: "link".into(),
                    kind: EntryKind::Symlink {
                        target: "/etc".into(),
                    },
                    mode: 0o777,
                    size: 0,
                    mtime_ns: 0,
                },
                file("link/shadow", 1024, vec![one_k]),
            ]),
        )
        .await;
        assert!(e.contains("link"), "{e}");
        // A million entries.
        let many: Vec<Entry> = (0..1_000_001)
            .map(|i| file(&format!("f{i:07}"), 0, vec![]))
            .collect();
        let e = refused(&src, &cache, encoded(many)).await;
        assert!(e.contains("entries"), "{e}");
        // Bytes that are not the manifest's name.
        let id = src.add(b"honest");
        src.objects.lock().unwrap().insert(id, b"swapped".to_vec());
        let err = fetch_manifest(&Shared(src.clone()), &cache, id, None)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Corrupt { .. }), "{err}");
    }
}
