//! The storage seam: what an engine that keeps the controller's state must do.
//!
//! Every module that persists goes through [`super::Store`], which encodes records
//! and calls one [`Engine`]. An engine stores bytes under `(tree, key)` and gives:
//! reads of one key, ordered prefix scans, the last keys of a tree, atomic
//! multi-key transactions with compare-on-version, and a group-committed `flush`
//! that makes every write before it durable. Writes are visible to reads at once
//! and durable after the next `flush`; callers flush before they acknowledge.
//!
//! A *version* is a digest of a record's bytes, the same on every engine, so that a
//! read-modify-write can say "only if the record is still what I read" without the
//! engine keeping counters of its own.

use std::future::Future;
use std::pin::Pin;

/// A record's version: the first 8 bytes of the BLAKE3 digest of its stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub u64);

impl Version {
    pub fn of(bytes: &[u8]) -> Version {
        let hash = blake3::hash(bytes);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        Version(u64::from_be_bytes(first))
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        tree: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        tree: &'static str,
        key: Vec<u8>,
    },
}

impl Op {
    pub fn tree(&self) -> &'static str {
        match self {
            Op::Put { tree, .. } | Op::Delete { tree, .. } => tree,
        }
    }
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// What a transaction requires of a key before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub tree: &'static str,
    pub key: Vec<u8>,
    /// `None`: the key must be absent; `Some(v)`: present with version `v`.
    pub expect: Option<Version>,
}

/// Checks, then writes, applied all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A check of a transaction failed; nothing was written.
    #[error("{tree}/{key} changed since it was read")]
    Conflict { tree: &'static str, key: String },
    /// Another writer changed keys this engine owns behind its back (etcd): its view
    /// is stale and it takes no more writes until the process restarts.
    #[error("{engine}: {detail}")]
    Fenced {
        engine: &'static str,
        detail: String,
    },
    /// The engine cannot be reached or refused the request.
    #[error("{engine}: {detail}")]
    Backend {
        engine: &'static str,
        detail: String,
    },
}

/// `(key, value)` pairs, in key order unless said otherwise.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send + 'a>>;

/// An engine of the controller's state. Reads and writes are synchronous against the
/// engine's own view (sled's pages, or the etcd engine's mirror); only `flush` waits
/// on the disk or the network.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// `sled` or `etcd`, for messages.
    fn name(&self) -> &'static str;

    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Every record whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &'static str, prefix: &[u8]) -> Result<Entries, EngineError>;

    /// The last `n` records of a tree, the greatest key first.
    fn last(&self, tree: &'static str, n: usize) -> Result<Entries, EngineError>;

    /// Applies `txn` atomically: every check holds and every op is applied, or nothing
    /// is (then [`EngineError::Conflict`] names the first check that failed). One
    /// exception, for speed: sled applies a commit *without checks* one key at a
    /// time, in order, so a crash may keep a prefix of its writes (see
    /// `SledEngine::apply_in_order`: sled's batches and transactions stall every
    /// other write behind the fsync under way); a commit that must be whole carries
    /// a check.
    fn commit(&self, txn: Txn) -> Result<(), EngineError>;

    /// Makes every write committed before this call durable.
    fn flush(&self) -> FlushFuture<'_>;

    /// `flush` for callers outside the runtime (command-line tools, tests).
    fn flush_blocking(&self) -> Result<(), EngineError>;
}

/// Checks `txn`'s expectations against `current` (the engine's view of a key).
pub fn check(
    txn: &Txn,
    mut current: impl FnMut(&'static str, &[u8]) -> Result<Option<Vec<u8>>, EngineError>,
) -> Result<(), EngineError> {
    for c in &txn.checks {
        let now = current(c.tree, &c.key)?;
        let holds = match (&c.expect, now) {
            (None, None) => true,
            (Some(v), Some(bytes)) => Version::of(&bytes) == *v,
            _ => false,
        };
        if !holds {
            return Err(EngineError::Conflict {
                tree: c.tree,
                key: String::from_utf8_lossy(&c.key).into_owned(),
            });
        }
    }
    Ok(())
}
