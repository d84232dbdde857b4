//! The controller's durable state: a sled database with one tree per resource.
//!
//! A `meta/schema_version` key guards the layout: a store written by a newer
//! controller is refused rather than misread, and an empty store is stamped with the
//! current version. Records are JSON so that an operator can inspect them and fields
//! can be added with defaults.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state store at {path} is in use by another process (is a controller already running?)"
    )]
    Locked { path: String },
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("the state store has schema version {found}, this controller understands {SCHEMA_VERSION}; use a matching cairn-controller")]
    SchemaMismatch { found: u32 },
    #[error("corrupt record {tree}/{key}: {detail}")]
    Corrupt {
        tree: &'static str,
        key: String,
        detail: String,
    },
}

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    commits: std::sync::Arc<GroupCommit>,
}

/// Group commit: every write bumps `written`; a flush makes everything up to the
/// `written` it saw durable. Callers that arrive while a flush runs wait for it and
/// for at most one more, so a thousand concurrent launches cost a handful of fsyncs,
/// not a thousand, and none is acknowledged before its own write is on disk.
#[derive(Debug, Default)]
struct GroupCommit {
    written: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
    running: tokio::sync::Mutex<()>,
}

/// The trees of the store.
#[derive(Debug, Clone, Copy)]
pub enum Tree {
    Hosts,
    JoinTokens,
    Blueprints,
    BlueprintRevisions,
    Users,
    ApiTokens,
    Instances,
    /// Committed image archives, by BLAKE3 hash.
    Images,
    /// Datasets and their versions, by dataset name.
    Datasets,
    /// Users' volumes and their snapshots, by `OWNER/NAME`.
    Volumes,
    /// Groups: people, join codes, quotas, by group name.
    Groups,
    /// The audit log, by time.
    Audit,
    /// Servers a cloud provider created, by the cloud's server id.
    CloudServers,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Hosts => "hosts",
            Tree::JoinTokens => "join_tokens",
            Tree::Blueprints => "blueprints",
            Tree::BlueprintRevisions => "blueprint_revisions",
            Tree::Users => "users",
            Tree::ApiTokens => "api_tokens",
            Tree::Instances => "instances",
            Tree::Images => "images",
            Tree::Datasets => "datasets",
            Tree::Volumes => "volumes",
            Tree::Groups => "groups",
            Tree::Audit => "audit",
            Tree::CloudServers => "cloud_servers",
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
                    StoreError::Locked {
                        path: path.display().to_string(),
                    }
                }
                other => StoreError::Sled(other),
            })?;
        let meta = db.open_tree(META)?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch { found });
                }
            }
        }
        Ok(Store {
            db,
            commits: Default::default(),
        })
    }

    /// Proves the store still takes writes: stamps `meta/alive` with `now_ms` and
    /// makes it durable (for `/healthz`).
    pub async fn probe_write(&self, now_ms: u64) -> Result<(), StoreError> {
        self.db
            .open_tree(META)?
            .insert(b"alive", &now_ms.to_be_bytes())?;
        self.wrote();
        self.flush().await
    }

    fn wrote(&self) {
        self.commits
            .written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn tree(&self, t: Tree) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(t.name())?)
    }

    pub fn put<T: Serialize>(&self, t: Tree, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            tree: t.name(),
            key: key.into(),
            detail: e.to_string(),
        })?;
        self.tree(t)?.insert(key.as_bytes(), bytes)?;
        self.wrote();
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&self, t: Tree, key: &str) -> Result<Option<T>, StoreError> {
        match self.tree(t)?.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    tree: t.name(),
                    key: key.into(),
                    detail: e.to_string(),
                }),
        }
    }

    pub fn remove(&self, t: Tree, key: &str) -> Result<(), StoreError> {
        self.tree(t)?.remove(key.as_bytes())?;
        self.wrote();
        Ok(())
    }

    /// Every record of a tree. A record that no longer decodes is logged and skipped,
    /// so one bad record cannot keep the controller from starting.
    pub fn all<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<T>, StoreError> {
        let mut out = vec![];
        for item in self.tree(t)?.iter() {
            let (k, v) = item?;
            match serde_json::from_slice(&v) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(tree = t.name(), key = %String::from_utf8_lossy(&k), error = %e, "skipping corrupt record")
                }
            }
        }
        Ok(out)
    }

    /// Records whose keys start with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(
        &self,
        t: Tree,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = vec![];
        for item in self.tree(t)?.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                tree: t.name(),
                key,
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The last `n` records of a tree in key order, newest key first.
    pub fn last<T: DeserializeOwned>(&self, t: Tree, n: usize) -> Result<Vec<T>, StoreError> {
        let mut out = vec![];
        for item in self.tree(t)?.iter().rev().take(n) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                tree: t.name(),
                key: String::from_utf8_lossy(&k).into_owned(),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Makes everything written so far durable. Called before acknowledging anything
    /// that must survive a crash (an enrolment, a state transition).
    ///
    /// sled 0.34's `flush_async` can deadlock when several flushes run at once
    /// (spacejam/sled#1308), so the blocking flush runs on the blocking pool instead.
    pub async fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
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
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| {
                StoreError::Sled(sled::Error::Io(std::io::Error::other(e.to_string())))
            })??;
        c.flushed.fetch_max(upto, SeqCst);
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_checks_schema() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = Store::open(tmp.path()).unwrap();
            s.put(Tree::Hosts, "a", &42u32).unwrap();
            s.flush_blocking().unwrap();
        }
        {
            let s = Store::open(tmp.path()).unwrap();
            assert_eq!(s.get::<u32>(Tree::Hosts, "a").unwrap(), Some(42));
            s.db.open_tree(META)
                .unwrap()
                .insert(SCHEMA_KEY, &99u32.to_be_bytes())
                .unwrap();
            s.flush_blocking().unwrap();
        }
        let err = Store::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    /// Regression: concurrent flushes once hung forever (sled's `flush_async`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100u32 {
            let s = s.clone();
            tasks.spawn(async move {
                s.put(Tree::Hosts, &i.to_string(), &i).unwrap();
                s.flush().await.unwrap();
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap()
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), all)
            .await
            .expect("flushes hung");
        assert_eq!(s.all::<u32>(Tree::Hosts).unwrap().len(), 100);
    }

    #[test]
    fn corrupt_records_are_skipped_in_listings() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        s.put(Tree::Hosts, "a", &1u32).unwrap();
        s.tree(Tree::Hosts)
            .unwrap()
            .insert("b", &b"{not json"[..])
            .unwrap();
        assert_eq!(s.all::<u32>(Tree::Hosts).unwrap(), vec![1]);
        assert!(s.get::<u32>(Tree::Hosts, "b").is_err());
    }
}
