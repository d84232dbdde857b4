//! Dataset transfer over a real QUIC link, in one process: the controller's chunk
//! server (`cairn_controller::link::chunks`) on one end, the agent's dataset cache
//! and fetcher on the other, mutual TLS as in production. No Docker needed.
//!
//! What crosses the wire is checked end to end: a tree scanned on one side comes
//! out byte for byte on the other; a chunk corrupt in the controller's store fails
//! the fetch with a message naming it (the stream-reset path); chunks the agent
//! already holds are never asked for again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn_agent::datasets::DatasetCache;
use cairn_agent::state::DatasetsSettings;
use cairn_controller::chunks::{ChunkStore, ChunkStoreError, StoredChunk};
use cairn_shared::chunks::manifest::Manifest;
use cairn_shared::chunks::{scan, ChunkId, DEFAULT_PARAMS};
use cairn_shared::framing;
use cairn_shared::identity::{self, Ca};
use cairn_shared::ids::HostId;
use cairn_shared::protocol::AgentRequest;
use cairn_shared::workload::DatasetSpec;

/// The controller's store, in memory, verifying on read like the real one.
#[derive(Debug, Default)]
struct MemStore {
    objects: Mutex<HashMap<ChunkId, Bytes>>,
}

#[async_trait::async_trait]
impl ChunkStore for MemStore {
    async fn contains(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ChunkStoreError> {
        let o = self.objects.lock().unwrap();
        Ok(ids.iter().map(|i| o.contains_key(i)).collect())
    }
    async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), ChunkStoreError> {
        self.objects.lock().unwrap().insert(id, bytes);
        Ok(())
    }
    async fn get(&self, id: ChunkId) -> Result<Option<Bytes>, ChunkStoreError> {
        let b = self.objects.lock().unwrap().get(&id).cloned();
        match b {
            Some(b) if !id.verifies(&b) => Err(ChunkStoreError::Corrupt { id }),
            other => Ok(other),
        }
    }
    async fn delete(&self, id: ChunkId) -> Result<(), ChunkStoreError> {
        self.objects.lock().unwrap().remove(&id);
        Ok(())
    }
    async fn list(&self) -> Result<Vec<StoredChunk>, ChunkStoreError> {
        Ok(vec![])
    }
}

/// A controller that serves only chunk requests; counts the chunks it is asked for.
struct Server {
    addr: std::net::SocketAddr,
    ca: Ca,
    asked: Arc<AtomicUsize>,
    /// Manifest requests that named a base (deltas).
    deltas: Arc<AtomicUsize>,
    _endpoint: quinn::Endpoint,
}

fn server(store: Arc<MemStore>) -> Server {
    let ttl = Duration::from_secs(3600);
    let (ca, _) = Ca::generate("test-ca", ttl).unwrap();
    let cert = ca.issue_server(&["127.0.0.1".into()], ttl).unwrap();
    let cfg = identity::server_config(ca.cert_der(), &cert).unwrap();
    let ep = identity::endpoint("127.0.0.1:0".parse().unwrap(), Some(cfg)).unwrap();
    let addr = ep.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let deltas = Arc::new(AtomicUsize::new(0));
    let (ep2, asked2, deltas2) = (ep.clone(), asked.clone(), deltas.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep2.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (store, asked, deltas) = (store.clone(), asked2.clone(), deltas2.clone());
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let (store, asked, deltas) = (store.clone(), asked.clone(), deltas.clone());
                    tokio::spawn(async move {
                        let req: AgentRequest =
                            framing::read(&mut recv, 64 * 1024).await.unwrap().unwrap();
                        use cairn_controller::link::chunks::{
                            serve_chunks, serve_manifest, serve_manifest_delta,
                        };
                        let r = match req {
                            AgentRequest::FetchManifest { manifest } => {
                                serve_manifest(store.as_ref(), manifest, &mut send).await
                            }
                            AgentRequest::FetchManifestDelta { manifest, base } => {
                                deltas.fetch_add(1, Ordering::SeqCst);
                                serve_manifest_delta(store.as_ref(), manifest, base, &mut send)
                                    .await
                            }
                            AgentRequest::FetchChunks { chunks } => {
                                asked.fetch_add(chunks.len(), Ordering::SeqCst);
                                serve_chunks(store.as_ref(), &chunks, &mut send).await
                            }
                            other => panic!("unexpected request {other:?}"),
                        };
                        if let Err(resp) = r {
                            framing::write(&mut send, &resp, 64 * 1024).await.unwrap();
                            let _ = send.finish();
                        }
                        // Let the peer read to the end before the stream is dropped.
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    Server {
        addr,
        ca,
        asked,
        deltas,
        _endpoint: ep,
    }
}

async fn connect(s: &Server) -> quinn::Connection {
    let (key_pem, csr) = identity::new_key_and_csr("agent").unwrap();
    let cert =
        s.ca.sign_host(&csr, &HostId::generate(), Duration::from_secs(3600))
            .unwrap();
    let cfg = identity::agent_client_config(s.ca.cert_der(), &cert, &key_pem).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.connect_with(cfg, s.addr, identity::CONTROLLER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// A tree with nested directories, files spanning many chunks, an empty file and
/// a symlink out of the tree.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("a/b/big.bin"), &big).unwrap();
    std::fs::write(root.join("a/small.txt"), b"hello datasets\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
}

/// Scans `root` into `store` (chunks and manifest) and names the version.
fn push(root: &Path, store: &MemStore) -> (DatasetSpec, Manifest) {
    let s = scan::scan(root, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    let mut objects = store.objects.lock().unwrap();
    for (id, loc) in &s.locations {
        let data = std::fs::read(root.join(&loc.path)).unwrap();
        let bytes = &data[loc.offset as usize..loc.offset as usize + loc.len as usize];
        objects.insert(*id, Bytes::copy_from_slice(bytes));
    }
    let id = s.manifest.id();
    objects.insert(id, Bytes::from(s.manifest.encode()));
    let spec = DatasetSpec {
        name: "course".into(),
        version: 3,
        manifest: id,
        bytes: s.manifest.total_bytes(),
    };
    (spec, s.manifest)
}

fn open_cache(dir: &Path) -> Arc<DatasetCache> {
    DatasetCache::open(
        dir,
        &DatasetsSettings {
            cache_limit_bytes: 1 << 30,
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_crosses_the_link_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = Arc::new(MemStore::default());
    let (spec, manifest) = push(&src, &store);
    let s = server(store.clone());
    let cache = open_cache(&tmp.path().join("agent"));
    cache.set_connection(Some(connect(&s).await));
    let tree = cache.ensure(&spec, true).wait().await.unwrap();
    cairn_shared::chunks::materialise::verify_tree(&manifest, &tree).unwrap();
    assert_eq!(
        std::fs::read(tree.join("a/b/big.bin")).unwrap(),
        std::fs::read(src.join("a/b/big.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_link(tree.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(cache.ready(), vec![spec.manifest]);
    let unique: HashSet<ChunkId> = manifest.unique_chunks().iter().map(|c| c.id).collect();
    assert_eq!(s.asked.load(Ordering::SeqCst), unique.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_comes_as_a_manifest_delta_and_the_chunks_it_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    // Enough entries that a delta is worth sending.
    std::fs::create_dir_all(src.join("notes")).unwrap();
    for i in 0..400 {
        std::fs::write(
            src.join(format!("notes/n{i:03}.txt")),
            format!("note {i}\n"),
        )
        .unwrap();
    }
    let store = Arc::new(MemStore::default());
    let (v1, _) = push(&src, &store);
    let s = server(store.clone());
    let cache = open_cache(&tmp.path().join("agent"));
    cache.set_connection(Some(connect(&s).await));
    cache.ensure(&v1, true).wait().await.unwrap();
    assert_eq!(s.deltas.load(Ordering::SeqCst), 0);
    // One small file changes.
    std::fs::write(src.join("notes/n200.txt"), b"changed for version two").unwrap();
    let (mut v2, manifest) = push(&src, &store);
    v2.version = 4;
    let before = s.asked.load(Ordering::SeqCst);
    let tree = cache.ensure(&v2, true).wait().await.unwrap();
    cairn_shared::chunks::materialise::verify_tree(&manifest, &tree).unwrap();
    assert_eq!(s.deltas.load(Ordering::SeqCst), 1);
    assert_eq!(s.asked.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_the_agent_holds_are_not_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = Arc::new(MemStore::default());
    let (spec, manifest) = push(&src, &store);
    let s = server(store.clone());
    // An earlier run got half the chunks into the tree before it was killed.
    let agent_dir = tmp.path().join("agent");
    let chunks = manifest.unique_chunks();
    {
        use cairn_shared::chunks::materialise::Assembly;
        let trees = agent_dir.join("trees");
        std::fs::create_dir_all(&trees).unwrap();
        let (tree, _) = Assembly::prepare(
            Arc::new(manifest.clone()),
            &trees.join(spec.manifest.to_hex()),
            &[],
        )
        .unwrap();
        let objects = store.objects.lock().unwrap();
        for c in chunks.iter().step_by(2) {
            tree.put(c, &objects[&c.id]).unwrap();
        }
    }
    let cache = open_cache(&agent_dir);
    cache.set_connection(Some(connect(&s).await));
    let tree = cache.ensure(&spec, true).wait().await.unwrap();
    assert_eq!(s.asked.load(Ordering::SeqCst), chunks.len() / 2);
    cairn_shared::chunks::materialise::verify_tree(&manifest, &tree).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupt_on_the_controller_is_named_in_the_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = Arc::new(MemStore::default());
    let (spec, manifest) = push(&src, &store);
    // Damage a chunk in the middle of the big file: the stream is under way when
    // the controller finds it.
    let bad = manifest.unique_chunks()[manifest.unique_chunks().len() / 2].id;
    store
        .objects
        .lock()
        .unwrap()
        .insert(bad, Bytes::from_static(b"bit rot"));
    let s = server(store.clone());
    let cache = open_cache(&tmp.path().join("agent"));
    cache.set_connection(Some(connect(&s).await));
    let err = cache.ensure(&spec, true).wait().await.unwrap_err();
    assert_eq!(err, format!("chunk {bad} is corrupt on the controller"));
    assert!(cache.ready().is_empty());
    assert!(!cache.tree_path(&spec.manifest).exists());
    // A missing one is refused by name before any bytes.
    store.objects.lock().unwrap().remove(&bad);
    let err = cache.ensure(&spec, true).wait().await.unwrap_err();
    assert_eq!(err, format!("chunk {bad} is missing on the controller"));
}
