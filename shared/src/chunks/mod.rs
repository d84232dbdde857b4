//! One mechanism for bytes (DESIGN.md principle 6): content-defined chunks named by
//! BLAKE3, and manifests that list them.
//!
//! Datasets, user snapshots and uploaded image archives are all stored, moved and
//! cached as chunks. This module is the part every peer agrees on:
//!
//! * [`ChunkId`], [`ChunkRef`] — a chunk's name (the BLAKE3 hash of its bytes) and
//!   length; a chunk is verified against its name wherever it arrives.
//! * [`chunker`] — FastCDC boundaries with the sizes in [`Params`].
//! * [`manifest`] — a tree (files, directories, symlinks) as a versioned, postcard
//!   encoded, hashed list of entries, validated whole before anything trusts it.
//! * [`scan`](mod@scan) — a directory turned into a manifest, reusing the chunks of files whose
//!   size, mtime, ctime and inode did not change since the last scan.
//! * [`delta`] — a manifest sent as its difference from one the receiver holds.
//! * [`patch`] — a changed chunk sent as its rsync delta from the one it replaces.
//! * [`dir`] — a local directory of verified chunks named by hash ([`dir::ChunkDir`]).
//! * [`plan`] — the sans-I/O transfer planner: have/want in, batches out.
//! * [`materialise`](mod@materialise) — a manifest written out as a tree, chunks put in
//!   place from trees already on disk and from the wire, each verified.
//!
//! The usual path of a push: [`scan()`] a directory (with last time's
//! [`ScanCache`]), store the chunks its `locations` point at in a [`ChunkDir`] or
//! send them, store `manifest.encode()` under `manifest.id()`. A pull:
//! [`Manifest::decode`] (bounded, validated), [`Assembly::prepare`] (which links or copies what earlier trees on this disk hold),
//! [`Transfer`] over its `missing()` chunks, each handed to [`Assembly::put`], then
//! [`Assembly::finish`]. Every chunk is verified against its id on arrival and
//! whenever it is read from disk.

// Plain data and pure logic, always built (the link's messages name chunks):
pub mod manifest;
pub mod plan;
// The parts that read and write files, behind the `chunks` feature:
#[cfg(feature = "chunks")]
pub mod chunker;
#[cfg(feature = "chunks")]
pub mod delta;
#[cfg(feature = "chunks")]
pub mod dir;
#[cfg(feature = "chunks")]
pub mod materialise;
#[cfg(feature = "chunks")]
pub mod patch;
#[cfg(feature = "chunks")]
pub mod scan;

pub use manifest::{Entry, EntryKind, Limits, Manifest, ManifestError, ManifestId, FORMAT};
pub use plan::{Batch, PlanError, PlanOptions, Transfer};
#[cfg(feature = "chunks")]
pub use {
    chunker::{chunk_bytes, chunk_reader},
    dir::{ChunkDir, ChunkDirError},
    materialise::{materialise, verify_tree, Assembly, MaterialiseError, Prepared, Seed},
    scan::{scan, ChunkLocation, Scan, ScanCache, ScanError, ScanProgress},
};

use serde::{Deserialize, Serialize};

/// Largest chunk any peer sends or accepts: the chunker's maximum at the biggest
/// average size we support (256 KiB × 4) with room to spare. A manifest naming a
/// longer chunk is refused.
pub const MAX_CHUNK_LEN: u32 = 4 * 1024 * 1024;

/// A chunk's name: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The name of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| ChunkId(*h.as_bytes()))
    }

    /// Whether `bytes` are the chunk this id names.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        // blake3::Hash's equality is constant-time; not needed here, but free.
        blake3::hash(bytes) == blake3::Hash::from_bytes(self.0)
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}

/// A chunk as a file lists it: its name and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// FastCDC sizes, in bytes. Chosen by measurement (README, "Chunk size"): the
/// default is the one every manifest this build writes uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Params {
    /// casync's shape: min = avg/4, max = avg×4.
    pub const fn with_avg(avg: u32) -> Self {
        Params {
            min: avg / 4,
            avg,
            max: avg * 4,
        }
    }

    /// Whether fastcdc accepts these sizes and every chunk fits [`MAX_CHUNK_LEN`]:
    /// `64 ≤ min ≤ avg ≤ max ≤ MAX_CHUNK_LEN`, `avg ≥ 256`, `max ≥ 1024`, all even.
    /// A manifest (or a caller) with other sizes is refused rather than handed to
    /// fastcdc, which only debug-asserts them.
    pub fn check(&self) -> Result<(), String> {
        let ok = self.min >= 64
            && self.min <= 1_048_576
            && self.avg >= 256
            && self.max >= 1024
            && self.min <= self.avg
            && self.avg <= self.max
            && self.max <= MAX_CHUNK_LEN
            && self.min.is_multiple_of(2)
            && self.avg.is_multiple_of(2)
            && self.max.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker sizes min {} avg {} max {} are invalid (need 64 <= min <= avg <= max <= {MAX_CHUNK_LEN}, avg >= 256, max >= 1024, all even)",
                self.min, self.avg, self.max
            ))
        }
    }
}

/// The sizes this build chunks with.
pub const DEFAULT_PARAMS: Params = Params::with_avg(64 * 1024);

/// Appends one frame of a chunk pack (`[32-byte id][u32 big-endian length][bytes]`):
/// the body of a CLI push (`POST /api/v1/chunks`) and of an agent's
/// `AgentRequest::StoreChunks`.
pub fn push_frame(pack: &mut Vec<u8>, id: ChunkId, bytes: &[u8]) {
    pack.extend_from_slice(&id.0);
    pack.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    pack.extend_from_slice(bytes);
}
