//! The embedded engine: one sled database in the data directory, one sled tree per
//! store tree, with group commit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::engine::{check, Engine, EngineError, Entries, FlushFuture, Op, Txn};

#[derive(Debug, Clone)]
pub struct SledEngine {
    db: sled::Db,
    commits: Arc<GroupCommit>,
}

/// Group commit: every write bumps `written`; a flush makes everything up to the
/// `written` it saw durable. Callers that arrive while a flush runs wait for it and
/// for at most one more, so a thousand concurrent launches cost a handful of fsyncs,
/// not a thousand, and none is acknowledged before its own write is on disk.
#[derive(Debug, Default)]
struct GroupCommit {
    written: AtomicU64,
    flushed: AtomicU64,
    running: tokio::sync::Mutex<()>,
}

/// Why sled could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the database's lock.
    Locked,
    Other(sled::Error),
}

fn backend(e: impl std::fmt::Display) -> EngineError {
    EngineError::Backend {
        engine: "sled",
        detail: e.to_string(),
    }
}

/// How long an open waits for the database's lock to be let go. sled releases it
/// when its background flusher thread ends, a moment after the last handle is
/// dropped, so a store reopened at once (a restart in the same process, a command
/// run right after the controller stopped) can find it still held; another live
/// controller holds it for good and is reported after this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SledEngine {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let started = std::time::Instant::now();
        loop {
            match Self::open_once(path) {
                Err(OpenError::Locked) if started.elapsed() < LOCK_WAIT => {
                    // No event says the lock is free; look again shortly.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, OpenError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(200))
            // sled caches up to 1 GiB by default; the controller keeps its working
            // set in memory already.
            .cache_capacity(64 << 20)
            .open()
            .map_err(|e| match e {
                // sled wraps the flock failure in an error of its own words.
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    OpenError::Locked
                }
                other => OpenError::Other(other),
            })?;
        Ok(SledEngine {
            db,
            commits: Default::default(),
        })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, EngineError> {
        self.db.open_tree(name).map_err(backend)
    }

    fn wrote(&self) {
        self.commits.written.fetch_add(1, SeqCst);
    }

    fn apply_one(&self, op: Op) -> Result<(), EngineError> {
        match op {
            Op::Put { tree, key, value } => self.tree(tree)?.insert(key, value),
            Op::Delete { tree, key } => self.tree(tree)?.remove(key),
        }
        .map_err(backend)?;
        Ok(())
    }
}

impl SledEngine {
    /// A commit without checks: its writes one key at a time, in order. Not a sled
    /// batch or transaction: in sled 0.34 both take a database-wide write lock, and
    /// a flush holds the read side of that lock for its whole fsync, so every batch
    /// waited for the fsync under way and every other read and write queued behind
    /// the batch. With launches saving under the instance table's lock, that stalled
    /// the controller on each fsync: launches fell from thousands to under two
    /// hundred a second. Single-key writes take no such lock. sled's log is replayed
    /// as a prefix after a crash, so the writes of one commit survive as a prefix
    /// too: callers put what may stand alone first (an instance's new transitions
    /// before its record), and a commit that must be all or nothing carries a
    /// check, which makes it a real transaction.
    fn apply_in_order(&self, ops: Vec<Op>) -> Result<(), EngineError> {
        for op in ops {
            self.apply_one(op)?;
        }
        self.wrote();
        Ok(())
    }
}

impl Engine for SledEngine {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self
            .tree(tree)?
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: &'static str, prefix: &[u8]) -> Result<Entries, EngineError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn last(&self, tree: &'static str, n: usize) -> Result<Entries, EngineError> {
        self.tree(tree)?
            .iter()
            .rev()
            .take(n)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn commit(&self, mut txn: Txn) -> Result<(), EngineError> {
        if txn.checks.is_empty() {
            return self.apply_in_order(std::mem::take(&mut txn.ops));
        }
        let mut names: Vec<&'static str> = txn
            .checks
            .iter()
            .map(|c| c.tree)
            .chain(txn.ops.iter().map(Op::tree))
            .collect();
        names.sort_unstable();
        names.dedup();
        let trees = names
            .iter()
            .map(|n| self.tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        let index = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);
        let result = trees.as_slice().transaction(|views| {
            check(&txn, |tree, key| {
                views[index(tree)]
                    .get(key)
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| backend(format!("{e:?}")))
            })
            .map_err(ConflictableTransactionError::Abort)?;
            for op in &txn.ops {
                let view = &views[index(op.tree())];
                match op {
                    Op::Put { key, value, .. } => {
                        view.insert(key.as_slice(), value.as_slice())?;
                    }
                    Op::Delete { key, .. } => {
                        view.remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.wrote();
                Ok(())
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    /// sled 0.34's `flush_async` can deadlock when several flushes run at once
    /// (spacejam/sled#1308), so the blocking flush runs on the blocking pool instead.
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            let c = &self.commits;
            let mine = c.written.load(SeqCst);
            if c.flushed.load(SeqCst) >= mine {
                return Ok(());
            }
            let _turn = c.running.lock().await;
            // A flush that started after our write covered it.
            if c.flushed.load(SeqCst) >= mine {
                return Ok(());
            }
            let upto = c.written.load(SeqCst);
            let db = self.db.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(backend)?
                .map_err(backend)?;
            super::commit_took(started.elapsed());
            c.flushed.fetch_max(upto, SeqCst);
            Ok(())
        })
    }

    fn flush_blocking(&self) -> Result<(), EngineError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}
