//! The etcd engine: the controller's state as keys `PREFIX TREE/KEY` in an etcd
//! cluster, for a site that outgrows one machine's sled directory.
//!
//! The engine keeps a mirror of every key under its prefix, loaded at open, so reads
//! and commits answer from memory as sled's do; a commit is applied to the mirror at
//! once and queued. `flush` sends the queue to etcd as transactions (several commits
//! per etcd transaction: group commit, as on sled) and returns once etcd has
//! acknowledged them, i.e. once a quorum has them on disk. A commit's checks become
//! etcd compares, so a write that raced a foreign writer fails at etcd instead of
//! overwriting it; the engine then refuses further writes (its mirror can no longer be
//! trusted) and the controller must be restarted.
//!
//! etcd-client is async on tokio; the engine runs it on a thread of its own with its
//! own runtime, so the store's synchronous calls and command-line tools outside any
//! runtime work alike.
//!
//! The layout is plain so that a second controller can watch the same keys (a watch
//! on `PREFIX`), which leader election will build on.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions,
    TxnOp,
};

use super::engine::{check, Engine, EngineError, Entries, FlushFuture, Op, Txn};
use crate::config::EtcdConfig;

/// etcd's default `--max-request-bytes` is 1.5 MiB; a batch stays under 1 MiB.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Keys per page when the mirror is loaded.
const PAGE: i64 = 1000;

fn backend(detail: impl std::fmt::Display) -> EngineError {
    EngineError::Backend {
        engine: "etcd",
        detail: detail.to_string(),
    }
}

fn stopped() -> EngineError {
    backend("the etcd thread has stopped")
}

fn fenced(detail: impl std::fmt::Display) -> EngineError {
    EngineError::Fenced {
        engine: "etcd",
        detail: detail.to_string(),
    }
}

/// One commit, as etcd writes it: full keys, with the bytes each checked key had.
#[derive(Debug, Clone)]
struct Group {
    /// `(key, expected bytes)`: `None` means the key must be absent.
    compares: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// `(key, new bytes)`: `None` deletes.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Group {
    fn bytes(&self) -> usize {
        self.compares
            .iter()
            .chain(&self.writes)
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum()
    }
    fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.compares.iter().chain(&self.writes).map(|(k, _)| k)
    }
}

type Reply = Box<dyn FnOnce(Result<(), (usize, EngineError)>) + Send>;

enum Request {
    /// Writes `groups` in order; replies with how many were written before an error.
    Write { groups: Vec<Group>, reply: Reply },
}

#[derive(Default)]
struct Queue {
    groups: Vec<Group>,
    /// Commits queued so far (a group-commit ticket counter).
    written: u64,
}

/// tree → key → bytes.
type View = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

struct Inner {
    prefix: String,
    view: RwLock<View>,
    queue: Mutex<Queue>,
    flushed: std::sync::atomic::AtomicU64,
    running: tokio::sync::Mutex<()>,
    fenced: AtomicBool,
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct EtcdEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdEngine")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn options(config: &EtcdConfig) -> Result<ConnectOptions, EngineError> {
    let timeout = Duration::from_secs(config.timeout_secs.max(1));
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(10), timeout);
    if config.ca_file.is_some() || config.cert_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| backend(format!("reading ca_file {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            let c = std::fs::read(cert)
                .map_err(|e| backend(format!("reading cert_file {}: {e}", cert.display())))?;
            let k = std::fs::read(key)
                .map_err(|e| backend(format!("reading key_file {}: {e}", key.display())))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn load(client: &mut Client, prefix: &str) -> Result<View, EngineError> {
    let mut view = View::new();
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let resp = client
            .get(
                start.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_limit(PAGE)),
            )
            .await
            .map_err(|e| backend(format!("reading {prefix}: {e}")))?;
        let kvs = resp.kvs();
        for kv in kvs {
            let Some(rest) = kv.key().strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            let Some(slash) = rest.iter().position(|b| *b == b'/') else {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "skipping a key outside any tree");
                continue;
            };
            let tree = String::from_utf8_lossy(&rest[..slash]).into_owned();
            view.entry(tree)
                .or_default()
                .insert(rest[slash + 1..].to_vec(), kv.value().to_vec());
        }
        match kvs.last() {
            Some(last) if resp.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok(view),
        }
    }
}

/// Sends `groups` as etcd transactions: consecutive groups share one until it would
/// pass etcd's limits or touch a key twice (etcd refuses duplicate keys, and a compare
/// must see the state before the transaction).
async fn write(
    client: &mut Client,
    groups: &[Group],
    max_ops: usize,
) -> Result<(), (usize, EngineError)> {
    let mut start = 0;
    while start < groups.len() {
        let mut end = start;
        let (mut ops, mut cmps, mut bytes) = (0usize, 0usize, 0usize);
        let mut keys: HashSet<&[u8]> = HashSet::new();
        while end < groups.len() {
            let g = &groups[end];
            let fits = ops + g.writes.len() <= max_ops
                && cmps + g.compares.len() <= max_ops
                && bytes + g.bytes() <= MAX_BATCH_BYTES
                && !g.keys().any(|k| keys.contains(k.as_slice()));
            if end > start && !fits {
                break;
            }
            ops += g.writes.len();
            cmps += g.compares.len();
            bytes += g.bytes();
            keys.extend(g.writes.iter().map(|(k, _)| k.as_slice()));
            end += 1;
        }
        send(client, &groups[start..end], max_ops)
            .await
            .map_err(|e| (start, e))?;
        start = end;
    }
    Ok(())
}

async fn send(client: &mut Client, groups: &[Group], max_ops: usize) -> Result<(), EngineError> {
    let compares: Vec<Compare> = groups
        .iter()
        .flat_map(|g| &g.compares)
        .map(|(k, v)| match v {
            None => Compare::version(k.clone(), CompareOp::Equal, 0),
            Some(bytes) => Compare::value(k.clone(), CompareOp::Equal, bytes.clone()),
        })
        .collect();
    // The last write of a key wins; etcd refuses a key twice in one transaction.
    let mut last: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
    let mut order: Vec<&[u8]> = vec![];
    for (k, v) in groups.iter().flat_map(|g| &g.writes) {
        if last.insert(k.as_slice(), v).is_none() {
            order.push(k.as_slice());
        }
    }
    let ops: Vec<TxnOp> = order
        .iter()
        .map(|k| match last[k] {
            Some(v) => TxnOp::put(k.to_vec(), v.clone(), None),
            None => TxnOp::delete(k.to_vec(), None),
        })
        .collect();
    // A single commit larger than etcd's `--max-txn-ops` goes in order, in parts; its
    // compares ride with the first part.
    let mut compares = Some(compares);
    for (i, part) in ops.chunks(max_ops.max(1)).enumerate() {
        let mut txn = etcd_client::Txn::new();
        if let Some(c) = compares.take().filter(|c| !c.is_empty()) {
            txn = txn.when(c);
        }
        let resp = client
            .txn(txn.and_then(part.to_vec()))
            .await
            .map_err(|e| backend(format!("writing: {e}")))?;
        if !resp.succeeded() {
            return Err(fenced(format!(
                "a compare failed in part {i}: another writer changed keys this controller owns"
            )));
        }
    }
    if ops.is_empty() {
        if let Some(c) = compares.filter(|c| !c.is_empty()) {
            let resp = client
                .txn(etcd_client::Txn::new().when(c))
                .await
                .map_err(|e| backend(format!("writing: {e}")))?;
            if !resp.succeeded() {
                return Err(fenced(
                    "a compare failed: another writer changed keys this controller owns",
                ));
            }
        }
    }
    Ok(())
}

impl EtcdEngine {
    /// Connects, loads every key under the prefix, and starts the writer thread.
    pub fn open(config: &EtcdConfig) -> Result<Self, EngineError> {
        config.validate().map_err(backend)?;
        let opts = options(config)?;
        let endpoints = config.endpoints.clone();
        let prefix = config.prefix.clone();
        let max_ops = config.max_txn_ops.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let thread_prefix = prefix.clone();
        std::thread::Builder::new()
            .name("cairn-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(backend(format!("a runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut client = match Client::connect(&endpoints, Some(opts)).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = loaded_tx.send(Err(backend(format!(
                                "connecting to {}: {e}",
                                endpoints.join(",")
                            ))));
                            return;
                        }
                    };
                    // The connection is made lazily: an unreachable cluster shows here.
                    let view = load(&mut client, &thread_prefix).await.map_err(|e| {
                        backend(format!("{} (endpoints {})", e, endpoints.join(",")))
                    });
                    let ok = view.is_ok();
                    if loaded_tx.send(view).is_err() || !ok {
                        return;
                    }
                    while let Some(Request::Write { groups, reply }) = rx.recv().await {
                        let started = std::time::Instant::now();
                        let result = write(&mut client, &groups, max_ops).await;
                        tracing::trace!(groups = groups.len(), took = ?started.elapsed(), ok = result.is_ok(), "etcd write");
                        reply(result);
                    }
                });
            })
            .map_err(|e| backend(format!("starting the etcd thread: {e}")))?;
        let view = loaded_rx
            .recv()
            .map_err(|_| backend("the etcd thread ended before loading"))??;
        let keys: usize = view.values().map(BTreeMap::len).sum();
        tracing::info!(endpoints = %config.endpoints.join(","), prefix = %prefix, keys, "etcd store loaded");
        Ok(EtcdEngine {
            inner: Arc::new(Inner {
                prefix,
                view: RwLock::new(view),
                queue: Mutex::new(Queue::default()),
                flushed: Default::default(),
                running: tokio::sync::Mutex::new(()),
                fenced: AtomicBool::new(false),
                tx,
            }),
        })
    }

    fn full_key(&self, tree: &str, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.inner.prefix.len() + tree.len() + 1 + key.len());
        k.extend_from_slice(self.inner.prefix.as_bytes());
        k.extend_from_slice(tree.as_bytes());
        k.push(b'/');
        k.extend_from_slice(key);
        k
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.inner.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the queue (what `flush` must send) and the ticket it covers.
    fn take_queue(&self) -> (Vec<Group>, u64) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut q.groups), q.written)
    }

    /// Puts unsent groups back at the front of the queue after a failed flush.
    fn requeue(&self, mut unsent: Vec<Group>) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        unsent.append(&mut q.groups);
        q.groups = unsent;
    }

    /// Hands `groups` to the writer thread, which calls `reply` when etcd answers;
    /// returns a copy to put back in the queue if the write fails.
    fn submit(
        &self,
        groups: Vec<Group>,
        reply: impl FnOnce(Result<(), (usize, EngineError)>) + Send + 'static,
    ) -> Result<Vec<Group>, EngineError> {
        let sent = groups.clone();
        self.inner
            .tx
            .send(Request::Write {
                groups,
                reply: Box::new(reply),
            })
            .map_err(|_| stopped())?;
        Ok(sent)
    }

    fn after_write(
        &self,
        groups: Vec<Group>,
        upto: u64,
        result: Result<(), (usize, EngineError)>,
    ) -> Result<(), EngineError> {
        match result {
            Ok(()) => {
                self.inner.flushed.fetch_max(upto, SeqCst);
                Ok(())
            }
            Err((sent, e)) => {
                if matches!(e, EngineError::Fenced { .. }) {
                    self.inner.fenced.store(true, SeqCst);
                    tracing::error!(error = %e, "etcd: this controller's view is stale; refusing further writes until it restarts");
                } else {
                    self.requeue(groups.into_iter().skip(sent).collect());
                }
                Err(e)
            }
        }
    }
}

impl Engine for EtcdEngine {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.read().get(tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan_prefix(&self, tree: &'static str, prefix: &[u8]) -> Result<Entries, EngineError> {
        let view = self.read();
        let Some(t) = view.get(tree) else {
            return Ok(vec![]);
        };
        Ok(
            t.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    fn last(&self, tree: &'static str, n: usize) -> Result<Entries, EngineError> {
        let view = self.read();
        Ok(view
            .get(tree)
            .map(|t| {
                t.iter()
                    .rev()
                    .take(n)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn commit(&self, txn: Txn) -> Result<(), EngineError> {
        if self.inner.fenced.load(SeqCst) {
            return Err(backend(
                "another writer changed this controller's keys in etcd; restart the controller",
            ));
        }
        let mut view = self.inner.view.write().unwrap_or_else(|p| p.into_inner());
        check(&txn, |tree, key| {
            Ok(view.get(tree).and_then(|t| t.get(key)).cloned())
        })?;
        let group = Group {
            compares: txn
                .checks
                .iter()
                .map(|c| {
                    let now = view.get(c.tree).and_then(|t| t.get(&c.key)).cloned();
                    (self.full_key(c.tree, &c.key), now)
                })
                .collect(),
            writes: txn
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { tree, key, value } => (self.full_key(tree, key), Some(value.clone())),
                    Op::Delete { tree, key } => (self.full_key(tree, key), None),
                })
                .collect(),
        };
        for op in txn.ops {
            match op {
                Op::Put { tree, key, value } => {
                    view.entry(tree.to_string()).or_default().insert(key, value);
                }
                Op::Delete { tree, key } => {
                    if let Some(t) = view.get_mut(tree) {
                        t.remove(&key);
                    }
                }
            }
        }
        // Queued under the view's lock, so etcd sees commits in the mirror's order.
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.groups.push(group);
        q.written += 1;
        Ok(())
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            let mine = self
                .inner
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .written;
            if self.inner.flushed.load(SeqCst) >= mine {
                return Ok(());
            }
            let _turn = self.inner.running.lock().await;
            if self.inner.flushed.load(SeqCst) >= mine {
                return Ok(());
            }
            let (groups, upto) = self.take_queue();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let started = std::time::Instant::now();
            let sent = self.submit(groups, move |r| {
                let _ = tx.send(r);
            })?;
            let result = rx.await.unwrap_or_else(|_| Err((0, stopped())));
            crate::store::commit_took(started.elapsed());
            self.after_write(sent, upto, result)
        })
    }

    fn flush_blocking(&self) -> Result<(), EngineError> {
        let (groups, upto) = self.take_queue();
        if groups.is_empty() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = self.submit(groups, move |r| {
            let _ = tx.send(r);
        })?;
        let result = rx.recv().unwrap_or_else(|_| Err((0, stopped())));
        self.after_write(sent, upto, result)
    }
}
