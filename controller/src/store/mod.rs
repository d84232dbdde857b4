//! The controller's durable state: typed records in named trees, kept by one
//! [`Engine`] — sled in the data directory by default, or etcd (`[store] engine =
//! "etcd"`) for a site that outgrows one machine.
//!
//! A `meta/schema_version` key guards the layout: a store written by a newer
//! controller is refused rather than misread, and an empty store is stamped with the
//! current version. Records are JSON so that an operator can inspect them and fields
//! can be added with defaults, except in the busiest trees (instances, their
//! transitions, hosts), which are written compact: a version byte, then MessagePack
//! with field names (binary, still self-describing, so defaults keep working). JSON
//! records there are still read, and rewritten compact at their next change. Modules
//! keep what they need in memory as a cache of the store and rebuild it from the
//! store at start.

pub mod conformance;
pub mod dump;
pub mod engine;
pub mod etcd;
pub mod sled_engine;

use std::path::Path;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

pub use engine::{Check, Engine, EngineError, Op, Txn, Version};

use crate::config::{StoreConfig, StoreEngineKind};

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
    #[error("state store: {0}")]
    Engine(EngineError),
    #[error("the state store has schema version {found}, this controller understands {SCHEMA_VERSION}; use a matching cairn-controller")]
    SchemaMismatch { found: u32 },
    #[error("corrupt record {tree}/{key}: {detail}")]
    Corrupt {
        tree: &'static str,
        key: String,
        detail: String,
    },
    /// A transaction's check failed: the record changed since it was read.
    #[error("{tree}/{key} was changed by someone else meanwhile; try again")]
    Conflict { tree: &'static str, key: String },
}

impl From<EngineError> for StoreError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Conflict { tree, key } => StoreError::Conflict { tree, key },
            other => StoreError::Engine(other),
        }
    }
}

/// Records how long a flush took (the store commit latency metric).
pub(crate) fn commit_took(elapsed: std::time::Duration) {
    crate::metrics::store_commit(elapsed);
}

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Arc<dyn Engine>,
}

/// The trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Instances' transitions, one key each: `INSTANCE/SEQ` (4 digits).
    InstanceTransitions,
    /// Which instances a user launched, one empty key each: `OWNER/INSTANCE`. Ended
    /// instances live only in the store, and a user's list is read through this.
    InstanceOwners,
}

impl Tree {
    /// Every tree, for export and import.
    pub const ALL: [Tree; 15] = [
        Tree::Hosts,
        Tree::JoinTokens,
        Tree::Blueprints,
        Tree::BlueprintRevisions,
        Tree::Users,
        Tree::ApiTokens,
        Tree::Instances,
        Tree::Images,
        Tree::Datasets,
        Tree::Volumes,
        Tree::Groups,
        Tree::Audit,
        Tree::CloudServers,
        Tree::InstanceTransitions,
        Tree::InstanceOwners,
    ];

    pub fn name(self) -> &'static str {
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
            Tree::InstanceTransitions => "instance_transitions",
            Tree::InstanceOwners => "instance_owners",
        }
    }

    /// Whether records are written compact (see the module documentation).
    fn compact(self) -> bool {
        matches!(
            self,
            Tree::Instances | Tree::InstanceTransitions | Tree::Hosts
        )
    }

    pub fn from_name(name: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The first byte of a compact record: MessagePack with field names follows. JSON
/// never starts with a control byte, so the two cannot be confused.
const COMPACT_V1: u8 = 0x01;

fn encode<T: Serialize>(t: Tree, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        tree: t.name(),
        key: key.into(),
        detail,
    };
    if t.compact() {
        let mut out = vec![COMPACT_V1];
        rmp_serde::encode::write_named(&mut out, value).map_err(|e| corrupt(e.to_string()))?;
        Ok(out)
    } else {
        serde_json::to_vec(value).map_err(|e| corrupt(e.to_string()))
    }
}

fn decode<T: DeserializeOwned>(t: Tree, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        tree: t.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    };
    match bytes.first() {
        Some(&COMPACT_V1) => rmp_serde::from_slice(&bytes[1..]).map_err(|e| corrupt(e.to_string())),
        Some(&b) if b < 0x20 && !b.is_ascii_whitespace() => Err(corrupt(format!(
            "unknown record version {b} (written by a newer controller?)"
        ))),
        _ => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string())),
    }
}

impl Store {
    /// Opens the sled store at `path` (the default engine; tests and tools).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let engine = sled_engine::SledEngine::open(path).map_err(|e| match e {
            sled_engine::OpenError::Locked => StoreError::Locked {
                path: path.display().to_string(),
            },
            sled_engine::OpenError::Other(e) => StoreError::Sled(e),
        })?;
        Store::with_engine(Arc::new(engine))
    }

    /// Opens the engine `config` names; sled lives at `sled_path`.
    pub fn open_configured(config: &StoreConfig, sled_path: &Path) -> Result<Self, StoreError> {
        match config.engine {
            StoreEngineKind::Sled => Store::open(sled_path),
            StoreEngineKind::Etcd => {
                let engine = etcd::EtcdEngine::open(&config.etcd)?;
                Store::with_engine(Arc::new(engine))
            }
        }
    }

    /// Wraps an engine, checking or stamping the schema version.
    pub fn with_engine(engine: Arc<dyn Engine>) -> Result<Self, StoreError> {
        match engine.get(META, SCHEMA_KEY)? {
            None => {
                engine.commit(Txn {
                    checks: vec![],
                    ops: vec![Op::Put {
                        tree: META,
                        key: SCHEMA_KEY.to_vec(),
                        value: SCHEMA_VERSION.to_be_bytes().to_vec(),
                    }],
                })?;
                engine.flush_blocking()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch { found });
                }
            }
        }
        Ok(Store { engine })
    }

    /// The engine's name (`sled`, `etcd`).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Proves the store still takes writes: stamps `meta/alive` with `now_ms` and
    /// makes it durable (for `/healthz`).
    pub async fn probe_write(&self, now_ms: u64) -> Result<(), StoreError> {
        self.engine.commit(Txn {
            checks: vec![],
            ops: vec![Op::Put {
                tree: META,
                key: b"alive".to_vec(),
                value: now_ms.to_be_bytes().to_vec(),
            }],
        })?;
        self.flush().await
    }

    pub fn put<T: Serialize>(&self, t: Tree, key: &str, value: &T) -> Result<(), StoreError> {
        let value = encode(t, key, value)?;
        self.engine.commit(Txn {
            checks: vec![],
            ops: vec![Op::Put {
                tree: t.name(),
                key: key.as_bytes().to_vec(),
                value,
            }],
        })?;
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&self, t: Tree, key: &str) -> Result<Option<T>, StoreError> {
        self.engine
            .get(t.name(), key.as_bytes())?
            .map(|v| decode(t, key.as_bytes(), &v))
            .transpose()
    }

    /// A record with its version, for a later [`Store::transaction`] that must find it
    /// unchanged.
    pub fn get_versioned<T: DeserializeOwned>(
        &self,
        t: Tree,
        key: &str,
    ) -> Result<Option<(T, Version)>, StoreError> {
        self.engine
            .get(t.name(), key.as_bytes())?
            .map(|v| Ok((decode(t, key.as_bytes(), &v)?, Version::of(&v))))
            .transpose()
    }

    pub fn remove(&self, t: Tree, key: &str) -> Result<(), StoreError> {
        self.engine.commit(Txn {
            checks: vec![],
            ops: vec![Op::Delete {
                tree: t.name(),
                key: key.as_bytes().to_vec(),
            }],
        })?;
        Ok(())
    }

    /// A transaction: checks, then writes, applied all or nothing by
    /// [`Transaction::commit`].
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction {
            store: self,
            txn: Txn::default(),
        }
    }

    /// Every record of a tree. A record that no longer decodes is logged and skipped,
    /// so one bad record cannot keep the controller from starting.
    pub fn all<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<T>, StoreError> {
        self.scan_lenient(t, "")
    }

    /// Records whose keys start with `prefix`, in key order; a record that no longer
    /// decodes is logged with its key and skipped.
    pub fn scan_lenient<T: DeserializeOwned>(
        &self,
        t: Tree,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = vec![];
        for (k, v) in self.engine.scan_prefix(t.name(), prefix.as_bytes())? {
            match decode(t, &k, &v) {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, "skipping corrupt record"),
            }
        }
        Ok(out)
    }

    /// Records whose keys start with `prefix`, with their keys, in key order; a
    /// record that no longer decodes is logged with its key and skipped.
    pub fn scan_keyed<T: DeserializeOwned>(
        &self,
        t: Tree,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = vec![];
        for (k, v) in self.engine.scan_prefix(t.name(), prefix.as_bytes())? {
            match decode(t, &k, &v) {
                Ok(r) => out.push((String::from_utf8_lossy(&k).into_owned(), r)),
                Err(e) => tracing::error!(error = %e, "skipping corrupt record"),
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
        self.engine
            .scan_prefix(t.name(), prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| decode(t, &k, &v))
            .collect()
    }

    /// The keys of a tree that start with `prefix`, in order.
    pub fn keys(&self, t: Tree, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .engine
            .scan_prefix(t.name(), prefix.as_bytes())?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }

    /// The last `n` records of a tree in key order, newest key first.
    pub fn last<T: DeserializeOwned>(&self, t: Tree, n: usize) -> Result<Vec<T>, StoreError> {
        self.engine
            .last(t.name(), n)?
            .into_iter()
            .map(|(k, v)| decode(t, &k, &v))
            .collect()
    }

    /// Makes everything written so far durable. Called before acknowledging anything
    /// that must survive a crash (an enrolment, a state transition).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.engine.flush().await?;
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.engine.flush_blocking()?;
        Ok(())
    }
}

/// Checks and writes gathered for one atomic commit.
pub struct Transaction<'a> {
    store: &'a Store,
    txn: Txn,
}

impl Transaction<'_> {
    /// Requires `key` to be absent (`None`) or to have `version`.
    pub fn expect(mut self, t: Tree, key: &str, version: Option<Version>) -> Self {
        self.txn.checks.push(Check {
            tree: t.name(),
            key: key.as_bytes().to_vec(),
            expect: version,
        });
        self
    }

    pub fn put<T: Serialize>(mut self, t: Tree, key: &str, value: &T) -> Result<Self, StoreError> {
        let value = encode(t, key, value)?;
        self.txn.ops.push(Op::Put {
            tree: t.name(),
            key: key.as_bytes().to_vec(),
            value,
        });
        Ok(self)
    }

    pub fn remove(mut self, t: Tree, key: &str) -> Self {
        self.txn.ops.push(Op::Delete {
            tree: t.name(),
            key: key.as_bytes().to_vec(),
        });
        self
    }

    /// Applies everything, or nothing if a check fails ([`StoreError::Conflict`]).
    /// Durable after the next [`Store::flush`], like any write.
    pub fn commit(self) -> Result<(), StoreError> {
        self.store.engine.commit(self.txn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_put(s: &Store, tree: &'static str, key: &[u8], value: &[u8]) {
        s.engine()
            .commit(Txn {
                checks: vec![],
                ops: vec![Op::Put {
                    tree,
                    key: key.to_vec(),
                    value: value.to_vec(),
                }],
            })
            .unwrap();
    }

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
            raw_put(&s, META, SCHEMA_KEY, &99u32.to_be_bytes());
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
        raw_put(&s, "hosts", b"b", b"{not json");
        assert_eq!(s.all::<u32>(Tree::Hosts).unwrap(), vec![1]);
        let err = s.get::<u32>(Tree::Hosts, "b").unwrap_err().to_string();
        assert!(err.contains("hosts/b"), "the key is named: {err}");
    }

    /// Instances and hosts are written compact; JSON written before is still read;
    /// a record of an unknown version is an error naming its key, skipped in scans.
    #[test]
    fn busy_trees_are_compact_and_old_json_still_reads() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Rec {
            name: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            note: Option<String>,
            n: u64,
        }
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let r = Rec {
            name: "i-1".into(),
            note: None,
            n: 1_700_000_000_000,
        };
        s.put(Tree::Instances, "a", &r).unwrap();
        let raw = s.engine().get("instances", b"a").unwrap().unwrap();
        assert_eq!(raw[0], COMPACT_V1);
        let json = serde_json::to_vec(&r).unwrap();
        assert!(raw.len() < json.len(), "{} < {}", raw.len(), json.len());
        assert_eq!(s.get::<Rec>(Tree::Instances, "a").unwrap(), Some(r));
        // Written as JSON by an older controller: still read, with defaults.
        raw_put(&s, "instances", b"b", br#"{"name":"old","n":2}"#);
        assert_eq!(
            s.get::<Rec>(Tree::Instances, "b").unwrap().unwrap().name,
            "old"
        );
        // Other trees stay JSON, for operators to read.
        s.put(Tree::Users, "u", &1_700_000_000_000u64).unwrap();
        assert_eq!(
            s.engine().get("users", b"u").unwrap().unwrap(),
            b"1700000000000"
        );
        // A version this build does not know.
        raw_put(&s, "instances", b"c", b"\x07future");
        let e = s.get::<Rec>(Tree::Instances, "c").unwrap_err().to_string();
        assert!(
            e.contains("instances/c") && e.contains("unknown record version 7"),
            "{e}"
        );
        assert_eq!(s.all::<Rec>(Tree::Instances).unwrap().len(), 2, "skipped");
    }

    /// The engine conformance suite on sled (the etcd run is in the tests crate,
    /// which starts an etcd server).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_passes_the_conformance_suite() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state");
        // Reopened right after each drop: the engine waits for sled's flusher to
        // let go of the lock (see `sled_engine::LOCK_WAIT`).
        conformance::run(|| Store::open(&path).unwrap()).await;
    }
}
