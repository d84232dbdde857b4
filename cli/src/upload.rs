//! Sending chunks the controller lacks, for every push that goes through the chunk
//! store (`images push`, `datasets push`).
//!
//! [`send_missing`] asks which of a push's chunks the controller lacks
//! (`POST /api/v1/chunks/missing`, in batches of [`MAX_MISSING_QUERY`] ids), then
//! sends only those, packed as `[32-byte id][u32 BE length][bytes]…` bodies
//! (`POST /api/v1/chunks`) of at most [`Limits::pack_bytes`], [`Limits::concurrency`]
//! packs at a time ([`Limits::default`]: [`MAX_PACK_BYTES`], [`CONCURRENCY`]).
//! A pack is read from its [`ChunkSource`] on the blocking pool just before it is
//! sent, so memory stays at a few packs whatever the push's size; each chunk read is
//! checked against its id, so a file that changed since it was chunked stops the push
//! with an error naming it. Two sources: [`FileChunks`] (ids at offsets of files, for
//! `images push`) and [`ScanChunks`] (a directory scan's
//! [`locations`](cairn_shared::chunks::scan::Scan::locations), for `datasets push`).
//! A pack whose request breaks off is sent again (chunks are content-addressed:
//! sending one twice is harmless). Chunks checked, then bytes sent, drive an
//! indicatif progress bar (hidden when stderr is not a terminal).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::chunks::scan::ChunkLocation;
use cairn_shared::chunks::{ChunkId, ChunkRef};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;

use crate::client::{body, parse, Client};
use crate::error::Error;

use cairn_api::datasets::{MissingAnswer, MissingQuery};
pub use cairn_api::datasets::{
    MAX_MISSING_QUERY, MAX_PACK_BYTES, PACK_FRAME_HEADER as FRAME_HEADER,
};
/// Packs in flight at once: enough to fill a long fat pipe, few enough for memory.
pub const CONCURRENCY: usize = 4;
/// Failed requests in a row (per pack) before a push gives up.
pub const MAX_RETRIES: u32 = 5;
/// Time limit of one pack (32 MiB at about 75 KiB/s).
const PACK_TIMEOUT: Duration = Duration::from_secs(7 * 60);

/// How a push splits and spreads its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Body bytes of one pack at most (capped at [`MAX_PACK_BYTES`], the
    /// controller's limit; a chunk bigger than this goes alone).
    pub pack_bytes: usize,
    /// Packs in flight at once (at least one).
    pub concurrency: usize,
    /// Time limit of one pack's request.
    pub pack_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pack_bytes: MAX_PACK_BYTES,
            concurrency: CONCURRENCY,
            pack_timeout: PACK_TIMEOUT,
        }
    }
}

/// Where a push's chunks are read from.
pub trait ChunkSource: Send + Sync + 'static {
    /// The bytes of `c`, checked against its id: a mismatch is an error naming where
    /// the chunk was read from, ready to show.
    fn read(&self, c: &ChunkRef) -> Result<Vec<u8>, Error>;
}

/// Chunks found in files: each id at an offset of a file.
#[derive(Debug, Clone, Default)]
pub struct FileChunks {
    at: HashMap<ChunkId, (Arc<PathBuf>, u64)>,
}

impl FileChunks {
    /// Notes that chunk `id` is at `offset` of `path` (the first place wins).
    pub fn add(&mut self, id: ChunkId, path: Arc<PathBuf>, offset: u64) {
        self.at.entry(id).or_insert((path, offset));
    }
}

impl ChunkSource for FileChunks {
    fn read(&self, c: &ChunkRef) -> Result<Vec<u8>, Error> {
        self.read_io(c)
            .map_err(|e| Error::Input(format!("cannot read what is pushed: {e}")))
    }
}

impl FileChunks {
    fn read_io(&self, c: &ChunkRef) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let (path, offset) = self.at.get(&c.id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("chunk {} is in no file read", c.id),
            )
        })?;
        let mut f = std::fs::File::open(path.as_ref())?;
        f.seek(std::io::SeekFrom::Start(*offset))?;
        let mut buf = vec![0u8; c.len as usize];
        f.read_exact(&mut buf)?;
        if !c.id.verifies(&buf) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} changed while it was pushed (chunk {} at byte {offset} no longer matches); push again",
                    path.display(),
                    c.id
                ),
            ));
        }
        Ok(buf)
    }
}

/// Chunks found by a directory scan: each id at an offset of a file under `root`.
#[derive(Debug, Clone)]
pub struct ScanChunks {
    root: PathBuf,
    at: HashMap<ChunkId, ChunkLocation>,
}

impl ScanChunks {
    /// `locations` as a scan of `root` gave them (paths relative to `root`).
    pub fn new(root: PathBuf, locations: HashMap<ChunkId, ChunkLocation>) -> Self {
        ScanChunks {
            root,
            at: locations,
        }
    }

    fn path(&self, loc: &ChunkLocation) -> PathBuf {
        self.root.join(&loc.path)
    }
}

impl ChunkSource for ScanChunks {
    fn read(&self, c: &ChunkRef) -> Result<Vec<u8>, Error> {
        let loc = self.at.get(&c.id).ok_or_else(|| {
            Error::Input(format!(
                "internal: the scan gave no file for chunk {}",
                c.id.to_hex()
            ))
        })?;
        let path = self.path(loc);
        // Whatever went wrong (gone, shorter, other bytes), the file is not what
        // was scanned: say which, and that pushing again rescans it.
        let changed =
            |p: &Path| Error::Input(format!("{} changed while pushing; run again", p.display()));
        let f = std::fs::File::open(&path).map_err(|_| changed(&path))?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(|_| changed(&path))?;
        if !c.id.verifies(&buf) {
            return Err(changed(&path));
        }
        Ok(buf)
    }
}

/// What [`send_missing`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Chunks the controller lacked, all sent.
    pub chunks: u64,
    /// Their bytes (chunk bytes only, without frame headers).
    pub bytes: u64,
    /// Bytes of all the distinct chunks asked about.
    pub total: u64,
}

impl Sent {
    /// Bytes of the pack bodies sent: the chunks with their frame headers.
    pub fn wire_bytes(&self) -> u64 {
        self.bytes + self.chunks * FRAME_HEADER as u64
    }
}

/// Groups chunks into packs of at most `max` body bytes, in order. A chunk longer
/// than a pack alone gets a pack of its own.
pub fn packs(chunks: &[ChunkRef], max: usize) -> Vec<Vec<ChunkRef>> {
    let mut out: Vec<Vec<ChunkRef>> = vec![];
    let mut size = 0usize;
    for c in chunks {
        let frame = FRAME_HEADER + c.len as usize;
        match out.last_mut() {
            Some(last) if size + frame <= max => {
                last.push(*c);
                size += frame;
            }
            _ => {
                out.push(vec![*c]);
                size = frame;
            }
        }
    }
    out
}

/// The body of one pack: its frames, one after another.
pub fn encode_pack(frames: &[(ChunkId, Vec<u8>)]) -> Vec<u8> {
    let len = frames.iter().map(|(_, b)| FRAME_HEADER + b.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (id, bytes) in frames {
        cairn_shared::chunks::push_frame(&mut out, *id, bytes);
    }
    out
}

/// Distinct chunks of `chunks`, first occurrence first.
pub fn distinct(chunks: &[ChunkRef]) -> Vec<ChunkRef> {
    let mut seen = HashSet::new();
    chunks
        .iter()
        .filter(|c| seen.insert(c.id))
        .copied()
        .collect()
}

/// A progress bar of bytes on stderr (drawn only when stderr is a terminal).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Asks which of `chunks` the controller lacks; returns those, in order. Each batch
/// asked advances `bar` by its chunk count.
pub async fn missing(
    client: &Client,
    chunks: &[ChunkRef],
    bar: &ProgressBar,
) -> Result<Vec<ChunkRef>, Error> {
    let mut out = vec![];
    for batch in chunks.chunks(MAX_MISSING_QUERY) {
        let ids: Vec<String> = batch.iter().map(|c| c.id.to_hex()).collect();
        let v = with_retries("asking which chunks the controller lacks", || {
            let b = body(&MissingQuery { ids: ids.clone() });
            async move { client.post(&["chunks", "missing"], Some(&b?)).await }
        })
        .await?;
        let a: MissingAnswer = parse(&v, "the missing chunks")?;
        let lacking: HashSet<&str> = a.missing.iter().map(String::as_str).collect();
        out.extend(
            batch
                .iter()
                .zip(&ids)
                .filter(|(_, id)| lacking.contains(id.as_str()))
                .map(|(c, _)| *c),
        );
        bar.inc(batch.len() as u64);
    }
    Ok(out)
}

/// Sends the chunks of `chunks` the controller lacks, read from `source`, in packs
/// and at the pace of `limits`.
pub async fn send_missing(
    client: &Client,
    chunks: &[ChunkRef],
    source: Arc<dyn ChunkSource>,
    what: &str,
    limits: Limits,
) -> Result<Sent, Error> {
    let unique = distinct(chunks);
    let total = unique.iter().map(|c| u64::from(c.len)).sum();
    let checking = ProgressBar::new(unique.len() as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg}: checking {pos}/{len} chunks") {
        checking.set_style(style);
    }
    checking.set_message(what.to_string());
    let lacking = missing(client, &unique, &checking).await;
    checking.finish_and_clear();
    let lacking = lacking?;
    let bytes: u64 = lacking.iter().map(|c| u64::from(c.len)).sum();
    let sent = Sent {
        chunks: lacking.len() as u64,
        bytes,
        total,
    };
    if lacking.is_empty() {
        return Ok(sent);
    }
    let bar = bytes_bar(bytes, what);
    let mut todo = packs(&lacking, limits.pack_bytes.min(MAX_PACK_BYTES)).into_iter();
    let concurrency = limits.concurrency.max(1);
    let mut running = tokio::task::JoinSet::new();
    let mut failed: Option<Error> = None;
    loop {
        while failed.is_none() && running.len() < concurrency {
            let Some(pack) = todo.next() else { break };
            let (client, source, bar) = (client.clone(), source.clone(), bar.clone());
            let timeout = limits.pack_timeout;
            running.spawn(async move { send_pack(&client, pack, source, &bar, timeout).await });
        }
        match running.join_next().await {
            None => break,
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                failed.get_or_insert(e);
            }
            Some(Err(e)) => {
                failed.get_or_insert(Error::Http(format!("sending chunks stopped: {e}")));
            }
        }
    }
    bar.finish_and_clear();
    match failed {
        Some(e) => Err(e),
        None => Ok(sent),
    }
}

/// Reads one pack's chunks and sends them, retrying a request that broke off.
async fn send_pack(
    client: &Client,
    pack: Vec<ChunkRef>,
    source: Arc<dyn ChunkSource>,
    bar: &ProgressBar,
    timeout: Duration,
) -> Result<(), Error> {
    let n: u64 = pack.iter().map(|c| u64::from(c.len)).sum();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Error> {
        let mut frames = Vec::with_capacity(pack.len());
        for c in &pack {
            frames.push((c.id, source.read(c)?));
        }
        Ok(encode_pack(&frames))
    })
    .await
    .map_err(|e| Error::Http(format!("reading chunks stopped: {e}")))??;
    let body = bytes::Bytes::from(body);
    with_retries("sending chunks", || {
        let body = body.clone();
        async move {
            client
                .send_long(
                    Method::POST,
                    &["chunks"],
                    &[("content-type", "application/octet-stream".into())],
                    Some(reqwest::Body::from(body)),
                    timeout,
                )
                .await
        }
    })
    .await?;
    bar.inc(n);
    Ok(())
}

/// Runs `f` until it succeeds, retrying what may pass ([`retryable`]) with backoff.
pub async fn with_retries<T, F, Fut>(what: &str, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut failures = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && failures < MAX_RETRIES => {
                failures += 1;
                let wait = backoff(failures);
                crate::output::note(&format!(
                    "{what} failed ({}); retrying in {}s ({failures} of {MAX_RETRIES})",
                    crate::error::one_line(&e.to_string()),
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether trying again may help: the controller unreachable or the connection
/// broken, a request timeout or rate limit (408, 429), or a server error other
/// than a full disk.
pub fn retryable(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } | Error::Http(_) => true,
        Error::Api(a) => {
            (a.status >= 500 && a.code != "disk_full") || a.status == 408 || a.status == 429
        }
        _ => false,
    }
}

/// 1, 2, 4, 8, then 15 seconds.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.saturating_sub(1).min(4)).min(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn c(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&[n]),
            len,
        }
    }

    #[test]
    fn packs_stay_under_the_limit_and_keep_order() {
        let chunks = [c(1, 60), c(2, 60), c(3, 200), c(4, 10)];
        let p = packs(&chunks, 200);
        assert_eq!(
            p,
            vec![vec![c(1, 60), c(2, 60)], vec![c(3, 200)], vec![c(4, 10)]]
        );
        for pack in &p[..1] {
            let size: usize = pack.iter().map(|x| FRAME_HEADER + x.len as usize).sum();
            assert!(size <= 200);
        }
        assert!(packs(&[], 200).is_empty());
        assert_eq!(
            distinct(&[c(1, 1), c(2, 1), c(1, 1)]),
            vec![c(1, 1), c(2, 1)]
        );
    }

    #[test]
    fn packs_of_a_smaller_size_fill_up_to_it() {
        // Datasets send 8 MiB packs: two 3 MiB chunks a pack.
        let target = 8 << 20;
        let chunks: Vec<ChunkRef> = (0..10).map(|n| c(n, 3 << 20)).collect();
        let p = packs(&chunks, target);
        assert!(
            p.iter().all(|x| x.len() == 2),
            "{:?}",
            p.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(p.iter().map(Vec::len).sum::<usize>(), 10);
        // A chunk bigger than the target goes alone.
        let big = packs(&[c(1, 100), c(2, 9 << 20), c(3, 100)], target);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        let sent = Sent {
            chunks: 3,
            bytes: 10,
            total: 10,
        };
        assert_eq!(sent.wire_bytes(), 10 + 3 * 36);
    }

    #[test]
    fn a_scanned_file_changed_since_the_scan_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        let chunk = ChunkRef {
            id: ChunkId::of(b"hello"),
            len: 5,
        };
        let loc: HashMap<ChunkId, ChunkLocation> = [(
            chunk.id,
            ChunkLocation {
                path: "f".into(),
                offset: 0,
                len: 5,
            },
        )]
        .into();
        let src = ScanChunks::new(dir.path().to_path_buf(), loc);
        assert_eq!(src.read(&chunk).unwrap(), b"hello");
        let named = |e: Error| {
            let e = e.to_string();
            assert!(
                e.contains(&format!(
                    "{} changed while pushing; run again",
                    dir.path().join("f").display()
                )),
                "{e}"
            );
        };
        std::fs::write(dir.path().join("f"), b"HELLO").unwrap();
        named(src.read(&chunk).unwrap_err());
        std::fs::write(dir.path().join("f"), b"hel").unwrap();
        named(src.read(&chunk).unwrap_err());
        std::fs::remove_file(dir.path().join("f")).unwrap();
        named(src.read(&chunk).unwrap_err());
        assert!(src.read(&c(9, 1)).is_err());
    }

    #[test]
    fn a_pack_is_frames_of_id_length_bytes() {
        let a = ChunkId::of(b"abc");
        let body = encode_pack(&[(a, b"abc".to_vec()), (a, vec![])]);
        assert_eq!(body.len(), 36 + 3 + 36);
        assert_eq!(&body[..32], &a.0);
        assert_eq!(&body[32..36], &[0, 0, 0, 3]);
        assert_eq!(&body[36..39], b"abc");
    }

    #[test]
    fn file_chunks_are_read_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let world = ChunkRef {
            id: ChunkId::of(b"world"),
            len: 5,
        };
        let mut src = FileChunks::default();
        src.add(world.id, Arc::new(p.clone()), 6);
        assert_eq!(src.read(&world).unwrap(), b"world");
        std::fs::write(&p, b"hello WORLD").unwrap();
        let e = src.read(&world).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("cannot read what is pushed: "), "{e}");
        assert!(e.contains("changed while it was pushed"), "{e}");
        assert!(src.read(&c(9, 1)).is_err());
    }

    #[test]
    fn broken_requests_are_retried_and_refusals_are_not() {
        let api = |status: u16, code: &str| {
            Error::Api(ApiError {
                status,
                code: code.into(),
                message: String::new(),
                fields: vec![],
            })
        };
        assert!(retryable(&Error::Http("connection reset".into())));
        assert!(retryable(&api(502, "http_502")));
        assert!(retryable(&api(408, "timeout")));
        assert!(retryable(&api(429, "too_many_requests")));
        assert!(!retryable(&api(409, "chunks_missing")));
        assert!(!retryable(&api(422, "hash_mismatch")));
        assert!(!retryable(&api(507, "disk_full")));
        assert!(!retryable(&api(403, "forbidden")));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), Duration::from_secs(15));
    }
}
