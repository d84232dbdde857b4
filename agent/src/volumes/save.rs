//! Saving a copy: scan it (re-reading only files whose size, mtime, ctime or inode
//! changed since the last save), ask the controller which of the new chunks it
//! lacks, send those in packs, commit the manifest. A copy whose tree did not
//! change since the snapshot it matches costs one scan and nothing on the wire
//! (unless the save is the final one, which must still release the lease).
//!
//! Each chunk is read back from its file and checked against its id before it is
//! sent: a file the container changed between the scan and the send fails the
//! save with its name (the next checkpoint scans again; a final save runs after
//! the container stopped, so nothing moves under it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use cairn_shared::chunks::manifest::{EntryKind, Limits, Manifest};
use cairn_shared::chunks::materialise::read_verified;
use cairn_shared::chunks::scan::{scan, Scan, ScanCache};
use cairn_shared::chunks::{patch, MAX_CHUNK_LEN};
use cairn_shared::chunks::{push_frame, ChunkId, ChunkRef, DEFAULT_PARAMS};
use cairn_shared::ids::InstanceId;
use cairn_shared::protocol::{
    AgentRequest, AgentResponse, CommitOutcome, MAX_FETCH_CHUNKS, MAX_PACK_BYTES,
    MAX_SIGNATURE_CHUNKS,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{Meta, VolumeError, VolumeKeeper};

/// Packs in flight at once.
/// A base chunk the controller holds and its rsync signature: what a
/// replaced chunk may travel as a delta from.
type BaseSignature = (ChunkId, Vec<u8>);

const PACKS_IN_FLIGHT: usize = 4;
/// Bytes per pack (well under [`MAX_PACK_BYTES`]).
const PACK_BYTES: u64 = 8 * 1024 * 1024;
/// How long the controller may take to check and record a commit.
const COMMIT_ANSWER: Duration = Duration::from_secs(120);

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// `None`: nothing changed and nothing was sent.
    pub outcome: Option<CommitOutcome>,
    pub files_read: u64,
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub elapsed: Duration,
}

fn link(e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Link(e.to_string())
}

impl VolumeKeeper {
    /// Saves `id`'s copy; with `final_save` (the instance is stopping, its
    /// container stopped), commits even when nothing changed (to release the
    /// lease), then retires the copy once the controller acknowledged it.
    pub async fn save(&self, id: &InstanceId, final_save: bool) -> Result<Saved, VolumeError> {
        let started = Instant::now();
        let lock = self.lock_of(id);
        let _g = lock.lock().await;
        let work = self.work(id);
        let meta_path = work.join("meta");
        let Some(mut meta) = Meta::read(&meta_path) else {
            // Never restored (or already retired): nothing of the user's is here.
            if final_save {
                let _ = cairn_shared::chunks::materialise::force_remove(&work);
            }
            return Ok(Saved {
                outcome: None,
                files_read: 0,
                chunks_sent: 0,
                bytes_sent: 0,
                elapsed: started.elapsed(),
            });
        };
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        let files = work.join("files");
        let cache_path = work.join("scan");
        let (f, c) = (files.clone(), cache_path.clone());
        let (scanned, trusted) = tokio::task::spawn_blocking(move || {
            let previous = ScanCache::load(&c).filter(|p| p.params == DEFAULT_PARAMS);
            let trusted = previous.is_some();
            scan(&f, DEFAULT_PARAMS, previous.as_ref(), &mut |_| {}).map(|s| (s, trusted))
        })
        .await
        .map_err(|e| VolumeError::Io(e.to_string()))?
        .map_err(|e| VolumeError::Scan(format!("reading the files: {e}")))?;
        let bytes = scanned.manifest.encode();
        let mid = ChunkId::of(&bytes);
        let unchanged = meta.manifest_id() == Some(mid)
            || meta.halted.as_deref() == Some(mid.to_hex().as_str());
        let mut saved = Saved {
            outcome: None,
            files_read: scanned.files_read,
            chunks_sent: 0,
            bytes_sent: 0,
            elapsed: Duration::ZERO,
        };
        if (unchanged || meta.lease_lost) && !final_save {
            // Only a tree whose chunks are all on the controller may be cached
            // (the next save asks about the files it reads, not about these).
            if unchanged {
                save_cache(&scanned.cache, &cache_path);
            }
            saved.elapsed = started.elapsed();
            tracing::debug!(instance = %id, volume = %meta.volume, files_read = saved.files_read, elapsed_ms = saved.elapsed.as_millis() as u64, "volume checkpoint: nothing to send");
            return Ok(saved);
        }
        // The chunks of files not read were on the controller at the last save
        // (the cache is written only after a commit was acknowledged).
        let candidates: Vec<ChunkRef> = if trusted {
            scanned.fresh.clone()
        } else {
            scanned.manifest.unique_chunks()
        };
        let missing = self.missing(&candidates).await?;
        // Chunks that replace one of the base snapshot's travel as rsync deltas
        // from it when that is much smaller; the rest (and any delta the
        // controller could not use) whole.
        let base = self
            .base_manifest(id, &meta)
            .and_then(|(_, b)| Manifest::decode(&b, &Limits::DEFAULT).ok());
        let (by_delta, delta_bytes, sig_bytes, whole) = match base {
            Some(base) => self.send_deltas(&files, &scanned, &base, missing).await?,
            None => (0, 0, 0, missing),
        };
        let (chunks, sent) = self.send(&files, &scanned, &whole).await?;
        saved.chunks_sent = chunks + by_delta;
        saved.bytes_sent = sent + delta_bytes;
        crate::metrics::volume_bytes("up", saved.bytes_sent);
        // The manifest as its difference from the one the copy started from (a
        // few KiB for a few changed files of thousands), else whole.
        let delta = self
            .base_manifest(id, &meta)
            .and_then(|(base, base_bytes)| {
                let d = cairn_shared::chunks::delta::diff(base, &base_bytes, &bytes).encode();
                (!d.is_empty() && d.len() < bytes.len()).then_some(d)
            });
        let mut answer = Err(crate::chunks::fetch::FetchError::NotConnected);
        for (body, is_delta) in delta
            .iter()
            .map(|d| (d, true))
            .chain(std::iter::once((&bytes, false)))
        {
            let req = AgentRequest::CommitSnapshot {
                instance: id.clone(),
                base_generation: meta.generation,
                final_save,
                len: body.len() as u64,
                delta: is_delta,
            };
            answer = self.source.ask_with_body(&req, body, COMMIT_ANSWER).await;
            match &answer {
                // The controller lost the base (collected with its snapshot):
                // the whole manifest then.
                Err(crate::chunks::fetch::FetchError::Refused(m))
                    if is_delta && m.starts_with("base_unknown") => {}
                _ => break,
            }
        }
        let outcome = match answer {
            Ok((AgentResponse::Committed(o), _)) => o,
            Ok((other, _)) => return Err(link(format!("unexpected answer {other:?}"))),
            Err(crate::chunks::fetch::FetchError::Refused(m)) => {
                // The next attempt asks about every chunk, in case the controller
                // lost some the cache says it has.
                let _ = std::fs::remove_file(&cache_path);
                return Err(VolumeError::Refused(m));
            }
            Err(e) => return Err(link(e)),
        };
        save_cache(&scanned.cache, &cache_path);
        match &outcome {
            CommitOutcome::Head { generation } => {
                meta.generation = *generation;
                meta.manifest = Some(mid.to_hex());
                meta.halted = None;
                // The base of the next save's delta.
                if let Err(e) =
                    cairn_shared::fsutil::write_atomic(&work.join("manifest"), &bytes, 0o600)
                {
                    tracing::warn!(instance = %id, error = %e, "could not keep the snapshot's manifest; the next save sends it whole");
                }
            }
            CommitOutcome::Conflict { reason } => {
                tracing::warn!(instance = %id, volume = %meta.volume, %reason, "volume saved as a conflict snapshot");
                meta.lease_lost = true;
            }
            CommitOutcome::Halted { reason } => {
                tracing::warn!(instance = %id, volume = %meta.volume, %reason, "volume save halted by the controller");
                meta.halted = Some(mid.to_hex());
            }
        }
        meta.write(&meta_path)?;
        tracing::info!(instance = %id, volume = %meta.volume, final_save, outcome = ?outcome, files_read = saved.files_read, chunks = saved.chunks_sent, bytes = saved.bytes_sent, by_delta, signature_bytes = sig_bytes, elapsed_ms = started.elapsed().as_millis() as u64, "volume saved");
        if final_save {
            let head = matches!(outcome, CommitOutcome::Head { .. }).then_some(bytes.as_slice());
            self.retire(id, &meta, head)?;
        }
        saved.outcome = Some(outcome);
        saved.elapsed = started.elapsed();
        Ok(saved)
    }

    /// Which of `chunks` the controller lacks (each distinct chunk asked once).
    async fn missing(&self, chunks: &[ChunkRef]) -> Result<Vec<ChunkRef>, VolumeError> {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<ChunkRef> = chunks
            .iter()
            .filter(|c| seen.insert(c.id))
            .copied()
            .collect();
        let mut out = vec![];
        for batch in distinct.chunks(MAX_FETCH_CHUNKS) {
            let req = AgentRequest::MissingChunks {
                chunks: batch.iter().map(|c| c.id).collect(),
            };
            match self.source.ask(&req).await {
                Ok((AgentResponse::Missing { chunks }, _)) => {
                    let lacking: std::collections::HashSet<ChunkId> = chunks.into_iter().collect();
                    out.extend(batch.iter().filter(|c| lacking.contains(&c.id)).copied());
                }
                Ok((other, _)) => return Err(link(format!("unexpected answer {other:?}"))),
                Err(crate::chunks::fetch::FetchError::Refused(m)) => {
                    return Err(VolumeError::Refused(m))
                }
                Err(e) => return Err(link(e)),
            }
        }
        Ok(out)
    }

    /// Sends what it can of `missing` as deltas from the chunks of `base` they
    /// replace (same path, overlapping offset): asks the controller for those
    /// chunks' signatures, diffs, sends the deltas less than half their chunk.
    /// Returns the chunks and bytes sent so, the signature bytes received, and the
    /// chunks still to send whole.
    async fn send_deltas(
        &self,
        root: &std::path::Path,
        scanned: &Scan,
        base: &Manifest,
        missing: Vec<ChunkRef>,
    ) -> Result<(u64, u64, u64, Vec<ChunkRef>), VolumeError> {
        let pairs = replaced(base, scanned, &missing);
        if pairs.is_empty() {
            return Ok((0, 0, 0, missing));
        }
        let mut sigs: HashMap<ChunkId, Vec<u8>> = HashMap::new();
        let bases: Vec<ChunkId> = {
            let mut seen = HashSet::new();
            pairs
                .values()
                .flatten()
                .filter(|b| seen.insert(**b))
                .copied()
                .collect()
        };
        for batch in bases.chunks(MAX_SIGNATURE_CHUNKS) {
            let got = match self.signatures(batch).await {
                Ok(g) => g,
                // Deltas only save bytes: without signatures, chunks go whole.
                Err(e) => {
                    tracing::debug!(error = %e, "no chunk signatures; sending chunks whole");
                    return Ok((0, 0, 0, missing));
                }
            };
            sigs.extend(
                batch
                    .iter()
                    .copied()
                    .zip(got)
                    .filter(|(_, s)| !s.is_empty()),
            );
        }
        let locations = scanned.locations.clone();
        let root = root.to_path_buf();
        let todo: Vec<(ChunkRef, Vec<BaseSignature>)> = missing
            .iter()
            .filter_map(|c| {
                let cands: Vec<BaseSignature> = pairs
                    .get(&c.id)?
                    .iter()
                    .filter_map(|b| Some((*b, sigs.get(b)?.clone())))
                    .collect();
                (!cands.is_empty()).then_some((*c, cands))
            })
            .collect();
        // Diffing reads and hashes: off the async threads.
        let frames = tokio::task::spawn_blocking(move || {
            let mut frames: Vec<(ChunkId, Vec<u8>)> = vec![];
            for (c, cands) in todo {
                let Some(loc) = locations.get(&c.id) else {
                    continue;
                };
                let Some(new) = read_verified(&root.join(&loc.path), loc.offset, loc.len, &c.id)
                else {
                    continue;
                };
                // The smallest delta among the candidates.
                let Some((b, delta)) = cands
                    .iter()
                    .filter_map(|(b, sig)| Some((*b, patch::diff(sig, &new)?)))
                    .min_by_key(|(_, d)| d.len())
                else {
                    continue;
                };
                if delta.len() * 2 <= new.len() {
                    let mut frame = Vec::with_capacity(delta.len() + patch::DELTA_HEADER);
                    patch::push_delta_frame(&mut frame, c.id, b, &delta);
                    frames.push((c.id, frame));
                }
            }
            frames
        })
        .await
        .map_err(|e| VolumeError::Io(e.to_string()))?;
        let mut sent_ids: HashSet<ChunkId> = HashSet::new();
        let mut bytes = 0u64;
        let mut pack: Vec<u8> = vec![];
        let mut in_pack: Vec<ChunkId> = vec![];
        let mut frames = frames.into_iter().peekable();
        while let Some((id, frame)) = frames.next() {
            pack.extend_from_slice(&frame);
            in_pack.push(id);
            let full = frames
                .peek()
                .is_none_or(|(_, f)| (pack.len() + f.len()) as u64 > PACK_BYTES);
            if !full {
                continue;
            }
            let req = AgentRequest::StoreChunkDeltas {
                len: pack.len() as u64,
            };
            match self.source.ask_with_body(&req, &pack, COMMIT_ANSWER).await {
                Ok((AgentResponse::Stored { .. }, _)) => {
                    bytes += pack.len() as u64;
                    sent_ids.extend(in_pack.drain(..));
                }
                // A delta the controller could not use: those chunks go whole.
                Ok(_) | Err(crate::chunks::fetch::FetchError::Refused(_)) => {
                    tracing::debug!(
                        chunks = in_pack.len(),
                        "chunk deltas refused; sending them whole"
                    );
                    in_pack.clear();
                }
                Err(e) => return Err(link(e)),
            }
            pack.clear();
        }
        let rest = missing
            .into_iter()
            .filter(|c| !sent_ids.contains(&c.id))
            .collect();
        let sig_bytes = sigs.values().map(|s| s.len() as u64 + 4).sum();
        Ok((sent_ids.len() as u64, bytes, sig_bytes, rest))
    }

    /// The signatures of `chunks` (empty for one the controller lacks).
    async fn signatures(&self, chunks: &[ChunkId]) -> Result<Vec<Vec<u8>>, VolumeError> {
        let req = AgentRequest::ChunkSignatures {
            chunks: chunks.to_vec(),
        };
        let (resp, mut recv) = self.source.ask(&req).await.map_err(link)?;
        let AgentResponse::Signatures { len } = resp else {
            return Err(link(format!("unexpected answer {resp:?}")));
        };
        // A signature is about 1/40 of its chunk: bounded by the largest chunks.
        let max = chunks.len() as u64 * (4 + u64::from(MAX_CHUNK_LEN) / 32 + 64);
        if len > max {
            return Err(link(format!("{len} bytes of signatures, over {max}")));
        }
        let mut body = vec![0u8; len as usize];
        tokio::time::timeout(COMMIT_ANSWER, recv.read_exact(&mut body))
            .await
            .map_err(|_| link("the signatures stopped arriving"))?
            .map_err(link)?;
        let mut out = Vec::with_capacity(chunks.len());
        let mut at = 0usize;
        for _ in chunks {
            let n = body
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| link("the signatures end early"))?;
            let sig = body
                .get(at + 4..at + 4 + n)
                .ok_or_else(|| link("the signatures end early"))?;
            out.push(sig.to_vec());
            at += 4 + n;
        }
        Ok(out)
    }

    /// Sends `missing` in packs, [`PACKS_IN_FLIGHT`] at a time; chunks and bytes sent.
    async fn send(
        &self,
        root: &std::path::Path,
        scanned: &Scan,
        missing: &[ChunkRef],
    ) -> Result<(u64, u64), VolumeError> {
        let mut packs: Vec<Vec<ChunkRef>> = vec![];
        let mut size = 0u64;
        for c in missing {
            if packs.is_empty() || size + u64::from(c.len) > PACK_BYTES {
                packs.push(vec![]);
                size = 0;
            }
            size += u64::from(c.len);
            if let Some(p) = packs.last_mut() {
                p.push(*c);
            }
        }
        let locations = Arc::new(scanned.locations.clone());
        let root = Arc::new(root.to_path_buf());
        let sent: Vec<(u64, u64)> = stream::iter(packs.into_iter().map(|pack| {
            let (locations, root) = (locations.clone(), root.clone());
            async move {
                let body = tokio::task::spawn_blocking(move || {
                    let mut body = Vec::with_capacity(PACK_BYTES as usize + 64 * 1024);
                    for c in &pack {
                        let loc = locations.get(&c.id).ok_or_else(|| {
                            VolumeError::Scan(format!("chunk {} has no place in the scan", c.id))
                        })?;
                        let path = root.join(&loc.path);
                        let bytes =
                            read_verified(&path, loc.offset, loc.len, &c.id).ok_or_else(|| {
                                VolumeError::Scan(format!(
                                    "{} changed while it was being saved; it is saved next time",
                                    loc.path.display()
                                ))
                            })?;
                        push_frame(&mut body, c.id, &bytes);
                    }
                    Ok::<_, VolumeError>((pack.len() as u64, body))
                })
                .await
                .map_err(|e| VolumeError::Io(e.to_string()))??;
                let (count, body) = body;
                debug_assert!(body.len() as u64 <= MAX_PACK_BYTES);
                let req = AgentRequest::StoreChunks {
                    len: body.len() as u64,
                };
                match self.source.ask_with_body(&req, &body, COMMIT_ANSWER).await {
                    Ok((AgentResponse::Stored { .. }, _)) => Ok((count, body.len() as u64)),
                    Ok((other, _)) => Err(link(format!("unexpected answer {other:?}"))),
                    Err(crate::chunks::fetch::FetchError::Refused(m)) => {
                        Err(VolumeError::Refused(m))
                    }
                    Err(e) => Err(link(e)),
                }
            }
        }))
        .buffer_unordered(PACKS_IN_FLIGHT)
        .try_collect()
        .await?;
        Ok(sent
            .into_iter()
            .fold((0, 0), |(c, b), (c2, b2)| (c + c2, b + b2)))
    }
}

/// For each chunk of `missing` in a file `base` also has, the base chunks it most
/// likely replaces: those covering the same offsets as its start, middle and end
/// (or the file's last, for an append). One candidate is not enough: after an
/// insert, content-defined boundaries take a chunk or two to fall back in step,
/// and a new chunk near the insert may hold mostly the bytes of the base chunk
/// *after* the one at its offset. Chunks too small to gain from a delta are left
/// out.
fn replaced(
    base: &Manifest,
    scanned: &Scan,
    missing: &[ChunkRef],
) -> HashMap<ChunkId, Vec<ChunkId>> {
    let files: HashMap<&str, &[ChunkRef]> = base
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { chunks } if !chunks.is_empty() => {
                Some((e.path.as_str(), chunks.as_slice()))
            }
            _ => None,
        })
        .collect();
    let covering = |old: &[ChunkRef], at: u64| -> Option<ChunkId> {
        let mut off = 0u64;
        for b in old {
            if at < off + u64::from(b.len) {
                return Some(b.id);
            }
            off += u64::from(b.len);
        }
        old.last().map(|b| b.id)
    };
    let mut out = HashMap::new();
    for c in missing {
        if c.len < 4 * patch::BLOCK_SIZE {
            continue;
        }
        let Some(loc) = scanned.locations.get(&c.id) else {
            continue;
        };
        let Some(old) = loc.path.to_str().and_then(|p| files.get(p)) else {
            continue;
        };
        let len = u64::from(c.len);
        let mut picks: Vec<ChunkId> = vec![];
        for at in [loc.offset, loc.offset + len / 2, loc.offset + len - 1] {
            if let Some(b) = covering(old, at).filter(|b| *b != c.id && !picks.contains(b)) {
                picks.push(b);
            }
        }
        if !picks.is_empty() {
            out.insert(c.id, picks);
        }
    }
    out
}

/// Keeps a scan's cache for the next save (losing it only costs a re-read).
fn save_cache(cache: &ScanCache, path: &std::path::Path) {
    if let Err(e) = cache.save(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not keep the scan cache");
    }
}
