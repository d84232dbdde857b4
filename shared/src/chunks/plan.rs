//! The sans-I/O transfer planner: which chunks to ask for, in what batches.
//!
//! The caller says what it wants (a manifest's chunks, in order) and what it already
//! has; the planner hands out batches up to a byte/count size with at most
//! `max_in_flight` outstanding, checks every arrival was asked for and not already
//! delivered (anything else means the sender misbehaved), and puts what a finished
//! or failed batch did not deliver back at the front of the queue. No I/O and no
//! clock: timeouts and retries' pacing belong to the caller.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{ChunkId, ChunkRef};

/// Batch sizes and parallelism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// A batch holds at most this many bytes (but always at least one chunk).
    pub batch_bytes: u64,
    pub batch_chunks: usize,
    /// Batches outstanding at once (parallel streams).
    pub max_in_flight: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            batch_bytes: 4 << 20,
            batch_chunks: 512,
            max_in_flight: 8,
        }
    }
}

/// Chunks to request together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub seq: u64,
    pub chunks: Vec<ChunkRef>,
}

/// How far the transfer is. Totals include what was already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub done_chunks: u64,
    pub total_chunks: u64,
    /// Bytes that were present before the transfer started (resumed).
    pub had_bytes: u64,
}

/// A protocol violation by the sender or a caller bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("batch {seq} is not outstanding")]
    UnknownBatch { seq: u64 },
    #[error("chunk {id} was not requested in batch {seq}")]
    NotRequested { seq: u64, id: ChunkId },
    #[error("chunk {id} arrived twice in batch {seq}")]
    Duplicate { seq: u64, id: ChunkId },
}

struct InFlight {
    chunks: Vec<ChunkRef>,
    arrived: HashSet<ChunkId>,
}

/// One transfer's state.
pub struct Transfer {
    opts: PlanOptions,
    queue: VecDeque<ChunkRef>,
    in_flight: HashMap<u64, InFlight>,
    next_seq: u64,
    progress: Progress,
    retries: u64,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight.len())
            .field("progress", &self.progress)
            .field("retries", &self.retries)
            .finish()
    }
}

impl Transfer {
    /// Plans fetching `want` (deduplicated, order kept); chunks `have` says are
    /// present count as done. Options of 0 are treated as 1.
    pub fn new(
        want: impl IntoIterator<Item = ChunkRef>,
        have: impl Fn(&ChunkId) -> bool,
        opts: PlanOptions,
    ) -> Self {
        let opts = PlanOptions {
            batch_bytes: opts.batch_bytes.max(1),
            batch_chunks: opts.batch_chunks.max(1),
            max_in_flight: opts.max_in_flight.max(1),
        };
        let mut seen = HashSet::new();
        let mut queue = VecDeque::new();
        let mut progress = Progress::default();
        for c in want {
            if !seen.insert(c.id) {
                continue;
            }
            let len = u64::from(c.len);
            progress.total_bytes += len;
            progress.total_chunks += 1;
            if have(&c.id) {
                progress.had_bytes += len;
                progress.done_bytes += len;
                progress.done_chunks += 1;
            } else {
                queue.push_back(c);
            }
        }
        Transfer {
            opts,
            queue,
            in_flight: HashMap::new(),
            next_seq: 0,
            progress,
            retries: 0,
        }
    }

    /// The next batch to request, or `None` when nothing is queued or
    /// `max_in_flight` batches are outstanding.
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.queue.is_empty() || self.in_flight.len() >= self.opts.max_in_flight {
            return None;
        }
        let mut chunks = Vec::new();
        let mut bytes = 0u64;
        while let Some(c) = self.queue.front() {
            let len = u64::from(c.len);
            if !chunks.is_empty()
                && (chunks.len() >= self.opts.batch_chunks || bytes + len > self.opts.batch_bytes)
            {
                break;
            }
            bytes += len;
            chunks.push(*c);
            self.queue.pop_front();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(
            seq,
            InFlight {
                chunks: chunks.clone(),
                arrived: HashSet::new(),
            },
        );
        Some(Batch { seq, chunks })
    }

    /// Records that chunk `id` of batch `seq` arrived (and was verified by the
    /// caller). A chunk not asked for in that batch, or delivered twice, is an error.
    pub fn arrived(&mut self, seq: u64, id: &ChunkId) -> Result<(), PlanError> {
        let b = self
            .in_flight
            .get_mut(&seq)
            .ok_or(PlanError::UnknownBatch { seq })?;
        let c = b
            .chunks
            .iter()
            .find(|c| c.id == *id)
            .ok_or(PlanError::NotRequested { seq, id: *id })?;
        if !b.arrived.insert(*id) {
            return Err(PlanError::Duplicate { seq, id: *id });
        }
        self.progress.done_bytes += u64::from(c.len);
        self.progress.done_chunks += 1;
        Ok(())
    }

    /// Batch `seq` ended; whatever it did not deliver is queued again, first.
    pub fn batch_done(&mut self, seq: u64) -> Result<(), PlanError> {
        self.requeue(seq)
    }

    /// Batch `seq` failed (stream reset, timeout); like [`Transfer::batch_done`]
    /// and counted as a retry.
    pub fn batch_failed(&mut self, seq: u64) -> Result<(), PlanError> {
        self.requeue(seq)?;
        self.retries += 1;
        Ok(())
    }

    fn requeue(&mut self, seq: u64) -> Result<(), PlanError> {
        let b = self
            .in_flight
            .remove(&seq)
            .ok_or(PlanError::UnknownBatch { seq })?;
        for c in b.chunks.into_iter().rev() {
            if !b.arrived.contains(&c.id) {
                self.queue.push_front(c);
            }
        }
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Failed batches so far.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Batches outstanding.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Every wanted chunk is had or has arrived.
    pub fn is_complete(&self) -> bool {
        self.progress.done_chunks == self.progress.total_chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(n: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&n.to_le_bytes()),
            len: 100 + n,
        }
    }

    fn opts(bytes: u64, chunks: usize, inflight: usize) -> PlanOptions {
        PlanOptions {
            batch_bytes: bytes,
            batch_chunks: chunks,
            max_in_flight: inflight,
        }
    }

    #[test]
    fn dedups_and_resumes_from_have() {
        let want = vec![c(1), c(2), c(1), c(3), c(4)];
        let had = c(2).id;
        let mut t = Transfer::new(want, |id| *id == had, PlanOptions::default());
        let p = t.progress();
        assert_eq!(p.total_chunks, 4);
        assert_eq!(p.done_chunks, 1);
        assert_eq!(p.had_bytes, 102);
        assert_eq!(p.total_bytes, 101 + 102 + 103 + 104);
        let b = t.next_batch().unwrap();
        assert_eq!(b.chunks, vec![c(1), c(3), c(4)]);
        assert!(t.next_batch().is_none());
        for ch in &b.chunks {
            t.arrived(b.seq, &ch.id).unwrap();
        }
        assert!(t.is_complete());
        t.batch_done(b.seq).unwrap();
        assert_eq!(t.progress().done_bytes, t.progress().total_bytes);
    }

    #[test]
    fn batches_respect_sizes_and_in_flight_cap() {
        let want: Vec<_> = (0..10).map(c).collect();
        let mut t = Transfer::new(want, |_| false, opts(210, 3, 2));
        let a = t.next_batch().unwrap();
        assert_eq!(a.chunks, vec![c(0), c(1)]); // 100 + 101 ≤ 210 < +102
        let b = t.next_batch().unwrap();
        assert_eq!(b.chunks, vec![c(2), c(3)]); // 102 + 103 ≤ 210 < +104
        assert!(t.next_batch().is_none(), "cap of 2 in flight");
        t.batch_done(a.seq).unwrap();
        // nothing arrived: requeued first, in order
        let a2 = t.next_batch().unwrap();
        assert_eq!(a2.chunks, vec![c(0), c(1)]);
        // a chunk bigger than batch_bytes still goes, alone
        let mut t = Transfer::new(vec![c(500), c(1)], |_| false, opts(10, 3, 2));
        assert_eq!(t.next_batch().unwrap().chunks, vec![c(500)]);
        let mut t = Transfer::new((0..10).map(c), |_| false, opts(1 << 20, 4, 8));
        assert_eq!(t.next_batch().unwrap().chunks.len(), 4);
    }

    #[test]
    fn interrupted_batch_requeues_only_missing() {
        let mut t = Transfer::new((0..5).map(c), |_| false, PlanOptions::default());
        let b = t.next_batch().unwrap();
        t.arrived(b.seq, &c(0).id).unwrap();
        t.arrived(b.seq, &c(3).id).unwrap();
        t.batch_failed(b.seq).unwrap();
        assert_eq!(t.retries(), 1);
        let b2 = t.next_batch().unwrap();
        assert_eq!(b2.chunks, vec![c(1), c(2), c(4)]);
        assert_ne!(b2.seq, b.seq);
        // the old batch is gone: late deliveries on it are refused
        assert_eq!(
            t.arrived(b.seq, &c(1).id),
            Err(PlanError::UnknownBatch { seq: b.seq })
        );
    }

    #[test]
    fn duplicate_or_foreign_chunk_is_an_error() {
        let mut t = Transfer::new((0..3).map(c), |_| false, PlanOptions::default());
        let b = t.next_batch().unwrap();
        t.arrived(b.seq, &c(1).id).unwrap();
        assert_eq!(
            t.arrived(b.seq, &c(1).id),
            Err(PlanError::Duplicate {
                seq: b.seq,
                id: c(1).id
            })
        );
        assert_eq!(
            t.arrived(b.seq, &c(9).id),
            Err(PlanError::NotRequested {
                seq: b.seq,
                id: c(9).id
            })
        );
        assert_eq!(t.progress().done_chunks, 1);
        assert_eq!(t.batch_done(77), Err(PlanError::UnknownBatch { seq: 77 }));
    }

    #[test]
    fn empty_want_is_complete() {
        let mut t = Transfer::new(Vec::new(), |_| false, PlanOptions::default());
        assert!(t.is_complete());
        assert!(t.next_batch().is_none());
    }

    proptest! {
        #[test]
        fn random_arrivals_and_failures_converge(
            n in 0u32..60,
            have_mask in any::<u64>(),
            ops in proptest::collection::vec((0u8..4, any::<u16>()), 0..200),
            bytes in 100u64..2000,
            chunks in 1usize..8,
            inflight in 1usize..4,
        ) {
            let want: Vec<_> = (0..n).map(c).collect();
            let have: HashSet<ChunkId> = (0..n)
                .filter(|i| have_mask >> (i % 64) & 1 == 1)
                .map(|i| c(i).id)
                .collect();
            let mut t = Transfer::new(want.clone(), |id| have.contains(id), opts(bytes, chunks, inflight));
            let mut open: Vec<Batch> = Vec::new();
            let mut delivered: HashSet<ChunkId> = HashSet::new();
            let deliver = |t: &mut Transfer, b: &Batch, k: usize, delivered: &mut HashSet<ChunkId>| {
                // deliver up to k chunks not yet delivered
                for ch in b.chunks.iter().filter(|ch| !delivered.contains(&ch.id)).take(k).copied().collect::<Vec<_>>() {
                    prop_assert!(!have.contains(&ch.id), "a had chunk was requested");
                    t.arrived(b.seq, &ch.id).unwrap();
                    prop_assert!(delivered.insert(ch.id), "delivered twice");
                }
                Ok(())
            };
            for (op, x) in ops {
                match op {
                    0 => { if let Some(b) = t.next_batch() { open.push(b) } }
                    1 if !open.is_empty() => {
                        let i = x as usize % open.len();
                        let b = open[i].clone();
                        deliver(&mut t, &b, (x >> 8) as usize % 4, &mut delivered)?;
                    }
                    2 if !open.is_empty() => {
                        let b = open.remove(x as usize % open.len());
                        t.batch_done(b.seq).unwrap();
                    }
                    3 if !open.is_empty() => {
                        let b = open.remove(x as usize % open.len());
                        t.batch_failed(b.seq).unwrap();
                    }
                    _ => {}
                }
                prop_assert!(t.in_flight() <= inflight);
            }
            // then a well-behaved sender finishes
            for b in open.drain(..) {
                t.batch_done(b.seq).unwrap();
            }
            let mut rounds = 0;
            while let Some(b) = t.next_batch() {
                deliver(&mut t, &b, usize::MAX, &mut delivered)?;
                t.batch_done(b.seq).unwrap();
                rounds += 1;
                prop_assert!(rounds <= 100);
            }
            prop_assert!(t.is_complete());
            let p = t.progress();
            prop_assert_eq!(p.done_bytes, p.total_bytes);
            prop_assert_eq!(delivered.len() + have.len(), n as usize);
        }
    }
}
