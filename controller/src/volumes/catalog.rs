//! Volumes in the store: `volumes/OWNER/NAME` holds a volume's record — its
//! generation, head, lease and snapshots. A snapshot is a manifest in the chunk
//! store (the same store, chunks and collector as datasets); the record says what
//! each one is (the head's history, a conflict, a halted save).
//!
//! Every change is one read-modify-write under `write`, applying a decision of
//! [`super::core`]; a commit's presence check and record are one step the chunk
//! collector cannot run inside (`gc`, held shared by commits and exclusively by
//! [`Volumes::pause_commits`]). A commit is durable before it is answered: the
//! manifest is in the chunk store before the record names it, and the record is
//! flushed before the agent hears "committed" (and only then deletes its copy).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use cairn_shared::chunks::manifest::{EntryKind, Limits, Manifest};
use cairn_shared::chunks::ChunkId;
use cairn_shared::protocol::CommitOutcome;
use serde::{Deserialize, Serialize};

use super::core::{
    decide_commit, decide_lease, plan_retention, CommitDecision, Holder, Lease, LeaseDecision,
    Policy, Proposal, SnapshotKind, SnapshotMeta, VolumeState,
};
use crate::chunks::{ChunkStore, ChunkStoreError};
use crate::config::VolumesConfig;
use crate::store::{Store, StoreError, Tree};

/// How many missing chunk ids a refused commit names.
const MISSING_SHOWN: usize = 3;
/// Side snapshots (conflicts, halted) one volume may hold; past it a commit that
/// would add one is refused until some are resolved, so a writer stuck in a loop
/// cannot grow a record without bound.
pub const MAX_SIDE_SNAPSHOTS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum VolumesError {
    #[error("{0:?} is not a volume name: {rule}", rule = crate::datasets::NAME_RULE)]
    InvalidName(String),
    #[error("you have no volume named {0:?}")]
    NotFound(String),
    #[error("volume {volume} has no snapshot {snapshot}")]
    NoSnapshot { volume: String, snapshot: u64 },
    #[error("volume {volume} is in use by instance {holder} (running, or saving its files as it ends); stop it and try again once it has stopped (or relaunch once its host is unreachable)")]
    InUse { volume: String, holder: String },
    #[error("the snapshot is refused: {0}")]
    InvalidManifest(String),
    #[error("{count} chunk(s) of the snapshot are not on the controller (first: {}); send them, then commit again", first.iter().map(|i| i.to_hex()).collect::<Vec<_>>().join(", "))]
    ChunksMissing { count: usize, first: Vec<ChunkId> },
    #[error("saving would use {} of your {} volume quota; delete files or volumes, or ask an admin for more", human(*needed), human(*quota))]
    OverQuota { needed: u64, quota: u64 },
    #[error("volume {0} holds {MAX_SIDE_SNAPSHOTS} conflict or halted snapshots; resolve or delete some first")]
    TooManySide(String),
    #[error("the snapshot's manifest is missing from the chunk store: {0}")]
    ManifestLost(ChunkId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chunks(#[from] ChunkStoreError),
}

/// `12.3 MiB`: byte counts in messages.
fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Was (or is) the head.
    Saved,
    /// From a writer that had lost the lease or started from an older head.
    Conflict,
    /// Would have emptied the volume or deleted too much; waits for a confirmation.
    Halted,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: u64,
    #[serde(with = "crate::datasets::catalog::hex_id")]
    pub manifest: ChunkId,
    /// The generation it became head at (`Saved`), or the one its writer started
    /// from (`Conflict`, `Halted`).
    pub generation: u64,
    pub status: SnapshotStatus,
    pub reason: Option<String>,
    pub bytes: u64,
    pub files: u64,
    pub created_ms: u64,
    /// The instance that saved it (or the user who restored it as head).
    pub by: String,
}

/// Who may write the volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub instance: String,
    pub generation: u64,
    pub since_ms: u64,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub owner: String,
    pub name: String,
    pub created_ms: u64,
    /// Bumped by every new head.
    pub generation: u64,
    /// The head snapshot's id; `None` until the first save.
    pub head: Option<u64>,
    pub lease: Option<LeaseRecord>,
    /// Oldest first.
    pub snapshots: Vec<SnapshotRecord>,
    pub next_snapshot: u64,
}

impl VolumeRecord {
    pub fn head(&self) -> Option<&SnapshotRecord> {
        let h = self.head?;
        self.snapshots.iter().find(|s| s.id == h)
    }

    pub fn snapshot(&self, id: u64) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|s| s.id == id)
    }

    /// Bytes of the head's files (what counts against the owner's quota).
    pub fn bytes(&self) -> u64 {
        self.head().map_or(0, |s| s.bytes)
    }

    fn state(&self) -> VolumeState {
        VolumeState {
            generation: self.generation,
            head_files: self.head().map_or(0, |s| s.files),
            lease: self.lease.as_ref().map(|l| Lease {
                instance: l.instance.clone(),
                generation: l.generation,
            }),
        }
    }
}

/// What a launch gets with the lease: where its copy starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub head: Option<ChunkId>,
    pub generation: u64,
    pub bytes: u64,
    /// The unreachable instance the lease was taken from.
    pub moved_from: Option<String>,
}

/// The volumes catalogue.
#[derive(Debug)]
pub struct Volumes {
    store: Store,
    chunks: Arc<dyn ChunkStore>,
    config: VolumesConfig,
    /// Serialises read-modify-write of records.
    write: tokio::sync::Mutex<()>,
    /// Commits hold it shared, the collector exclusively.
    gc: tokio::sync::RwLock<()>,
}

fn key(owner: &str, name: &str) -> String {
    format!("{owner}/{name}")
}

/// Paths of the entries that are not directories: what "files" of a volume means
/// for the safety halts (a symlink deleted is a file deleted).
fn leaf_paths(m: &Manifest) -> HashSet<&str> {
    m.entries
        .iter()
        .filter(|e| !matches!(e.kind, EntryKind::Directory))
        .map(|e| e.path.as_str())
        .collect()
}

impl Volumes {
    pub fn new(store: Store, chunks: Arc<dyn ChunkStore>, config: VolumesConfig) -> Self {
        Volumes {
            store,
            chunks,
            config,
            write: tokio::sync::Mutex::new(()),
            gc: tokio::sync::RwLock::new(()),
        }
    }

    pub fn check_name(name: &str) -> Result<(), VolumesError> {
        if crate::datasets::valid_name(name) {
            Ok(())
        } else {
            Err(VolumesError::InvalidName(name.chars().take(80).collect()))
        }
    }

    pub fn get(&self, owner: &str, name: &str) -> Result<Option<VolumeRecord>, VolumesError> {
        Ok(self.store.get(Tree::Volumes, &key(owner, name))?)
    }

    fn need(&self, owner: &str, name: &str) -> Result<VolumeRecord, VolumesError> {
        self.get(owner, name)?
            .ok_or_else(|| VolumesError::NotFound(name.to_string()))
    }

    /// `owner`'s volumes, or everyone's, by owner then name.
    pub fn list(&self, owner: Option<&str>) -> Result<Vec<VolumeRecord>, VolumesError> {
        let all: Vec<VolumeRecord> = match owner {
            Some(o) => self.store.scan_prefix(Tree::Volumes, &format!("{o}/"))?,
            None => self.store.all(Tree::Volumes)?,
        };
        Ok(all)
    }

    /// Bytes `owner`'s volumes hold, leaving out `except`.
    fn owner_bytes(&self, owner: &str, except: &str) -> Result<u64, VolumesError> {
        Ok(self
            .list(Some(owner))?
            .iter()
            .filter(|v| v.name != except)
            .map(VolumeRecord::bytes)
            .sum())
    }

    fn save(&self, rec: &VolumeRecord) -> Result<(), VolumesError> {
        Ok(self
            .store
            .put(Tree::Volumes, &key(&rec.owner, &rec.name), rec)?)
    }

    /// Gives `instance` the lease of `owner/name` (created if new) when
    /// [`decide_lease`] allows; `holder` says what the current holder does.
    pub async fn acquire(
        &self,
        owner: &str,
        name: &str,
        instance: &str,
        holder: impl Fn(&str) -> Holder,
        now_ms: u64,
    ) -> Result<Acquired, VolumesError> {
        Self::check_name(name)?;
        let _w = self.write.lock().await;
        let mut rec = self.get(owner, name)?.unwrap_or_else(|| VolumeRecord {
            owner: owner.to_string(),
            name: name.to_string(),
            created_ms: now_ms,
            generation: 0,
            head: None,
            lease: None,
            snapshots: vec![],
            next_snapshot: 1,
        });
        let (generation, moved_from) = match decide_lease(&rec.state(), instance, holder) {
            LeaseDecision::Refuse { holder } => {
                return Err(VolumesError::InUse {
                    volume: key(owner, name),
                    holder,
                })
            }
            LeaseDecision::Grant { generation } => (generation, None),
            LeaseDecision::Move { from, generation } => (generation, Some(from)),
        };
        rec.lease = Some(LeaseRecord {
            instance: instance.to_string(),
            generation,
            since_ms: now_ms,
        });
        self.save(&rec)?;
        self.store.flush().await?;
        if let Some(from) = &moved_from {
            tracing::info!(volume = %key(owner, name), %instance, %from, "volume lease moved from an unreachable instance");
        }
        Ok(Acquired {
            head: rec.head().map(|s| s.manifest),
            generation,
            bytes: rec.bytes(),
            moved_from,
        })
    }

    /// Drops `instance`'s lease (its launch did not go ahead).
    pub async fn release(
        &self,
        owner: &str,
        name: &str,
        instance: &str,
    ) -> Result<(), VolumesError> {
        let _w = self.write.lock().await;
        let Some(mut rec) = self.get(owner, name)? else {
            return Ok(());
        };
        if rec.lease.as_ref().is_some_and(|l| l.instance == instance) {
            rec.lease = None;
            self.save(&rec)?;
            self.store.flush().await?;
        }
        Ok(())
    }

    /// Records a snapshot of `owner/name` saved by `instance` from
    /// `base_generation`: checked whole (decodes, every chunk present), then made
    /// what [`decide_commit`] says. A final save releases the lease it holds.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &self,
        owner: &str,
        name: &str,
        instance: &str,
        base_generation: u64,
        final_save: bool,
        manifest_bytes: Bytes,
        now_ms: u64,
    ) -> Result<CommitOutcome, VolumesError> {
        let decoded = {
            let b = manifest_bytes.clone();
            tokio::task::spawn_blocking(move || Manifest::decode(&b, &Limits::DEFAULT))
                .await
                .map_err(|e| VolumesError::InvalidManifest(e.to_string()))?
                .map_err(|e| VolumesError::InvalidManifest(e.to_string()))?
        };
        let id = ChunkId::of(&manifest_bytes);
        let _no_gc = self.gc.read().await;
        let missing = crate::chunks::missing_of(self.chunks.as_ref(), &decoded).await?;
        if !missing.is_empty() {
            return Err(VolumesError::ChunksMissing {
                count: missing.len(),
                first: missing.into_iter().take(MISSING_SHOWN).collect(),
            });
        }
        let _w = self.write.lock().await;
        let mut rec = self.need(owner, name)?;
        let release = |rec: &mut VolumeRecord| {
            if final_save && rec.lease.as_ref().is_some_and(|l| l.instance == instance) {
                rec.lease = None;
            }
        };
        // The head's very files: nothing to record, whoever sends them (a retried
        // final save whose answer was lost, an unchanged copy).
        if rec.head().is_some_and(|h| h.manifest == id) {
            release(&mut rec);
            self.save(&rec)?;
            self.store.flush().await?;
            return Ok(CommitOutcome::Head {
                generation: rec.generation,
            });
        }
        // A save this instance already made (its answer was lost and it tried
        // again): the same answer, nothing recorded twice.
        if let Some(s) = rec
            .snapshots
            .iter()
            .find(|s| s.manifest == id && s.by == instance)
            .cloned()
        {
            release(&mut rec);
            self.save(&rec)?;
            self.store.flush().await?;
            let reason = s.reason.clone().unwrap_or_default();
            return Ok(match s.status {
                SnapshotStatus::Saved => CommitOutcome::Head {
                    generation: s.generation,
                },
                SnapshotStatus::Conflict => CommitOutcome::Conflict { reason },
                SnapshotStatus::Halted => CommitOutcome::Halted { reason },
            });
        }

        let deleted_files = match rec.head() {
            None => 0,
            Some(h) => {
                let head = self.manifest(h.manifest).await?;
                let now = leaf_paths(&decoded);
                leaf_paths(&head)
                    .iter()
                    .filter(|p| !now.contains(*p))
                    .count() as u64
            }
        };
        let bytes = decoded.total_bytes();
        let files = leaf_paths(&decoded).len() as u64;
        let proposal = Proposal {
            instance: instance.to_string(),
            base_generation,
            files,
            deleted_files,
            owner_bytes_after: self.owner_bytes(owner, name)?.saturating_add(bytes),
        };
        let policy = Policy {
            max_delete_percent: self.config.max_delete_percent,
            quota_bytes: self.config.quota_mib.saturating_mul(1 << 20),
        };
        let decision = decide_commit(&rec.state(), &proposal, &policy);
        if let CommitDecision::OverQuota { needed, quota } = decision {
            return Err(VolumesError::OverQuota { needed, quota });
        }
        let side = rec
            .snapshots
            .iter()
            .filter(|s| s.status != SnapshotStatus::Saved)
            .count();
        if !matches!(decision, CommitDecision::Head { .. }) && side >= MAX_SIDE_SNAPSHOTS {
            return Err(VolumesError::TooManySide(key(owner, name)));
        }
        self.chunks.put(id, manifest_bytes).await?;
        let sid = rec.next_snapshot;
        rec.next_snapshot += 1;
        let mut snap = SnapshotRecord {
            id: sid,
            manifest: id,
            generation: base_generation,
            status: SnapshotStatus::Saved,
            reason: None,
            bytes,
            files,
            created_ms: now_ms,
            by: instance.to_string(),
        };
        let outcome = match decision {
            CommitDecision::Head { generation } => {
                snap.generation = generation;
                rec.generation = generation;
                rec.head = Some(sid);
                if let Some(l) = rec.lease.as_mut() {
                    l.generation = generation;
                }
                CommitOutcome::Head { generation }
            }
            CommitDecision::Conflict { reason } => {
                snap.status = SnapshotStatus::Conflict;
                snap.reason = Some(reason.clone());
                CommitOutcome::Conflict { reason }
            }
            CommitDecision::Halted { reason } => {
                snap.status = SnapshotStatus::Halted;
                snap.reason = Some(reason.clone());
                CommitOutcome::Halted { reason }
            }
            CommitDecision::OverQuota { .. } => unreachable!("returned above"),
        };
        rec.snapshots.push(snap);
        release(&mut rec);
        self.retain(&mut rec, now_ms);
        self.save(&rec)?;
        self.store.flush().await?;
        tracing::info!(volume = %key(owner, name), %instance, snapshot = sid, manifest = %id, files, bytes, outcome = ?outcome, final_save, "volume snapshot committed");
        Ok(outcome)
    }

    /// Drops the snapshots retention no longer keeps (their chunks go with the
    /// next collection).
    fn retain(&self, rec: &mut VolumeRecord, now_ms: u64) {
        let metas: Vec<SnapshotMeta> = rec
            .snapshots
            .iter()
            .map(|s| SnapshotMeta {
                id: s.id,
                created_ms: s.created_ms,
                kind: match s.status {
                    SnapshotStatus::Saved => SnapshotKind::Regular,
                    SnapshotStatus::Conflict => SnapshotKind::Conflict,
                    SnapshotStatus::Halted => SnapshotKind::Halted,
                },
            })
            .collect();
        let days = u32::try_from(self.config.keep_daily_days).unwrap_or(u32::MAX);
        let gone: HashSet<u64> =
            plan_retention(&metas, rec.head, self.config.keep_last, days, now_ms)
                .into_iter()
                .collect();
        rec.snapshots.retain(|s| !gone.contains(&s.id));
    }

    /// Makes snapshot `id` the head (restoring an older one, confirming a halted
    /// one, taking a conflict's files) as a new snapshot of the same files, so the
    /// history keeps what the head was. Refused while an instance writes the
    /// volume.
    pub async fn set_head(
        &self,
        owner: &str,
        name: &str,
        id: u64,
        by: &str,
        holder: impl Fn(&str) -> Holder,
        now_ms: u64,
    ) -> Result<VolumeRecord, VolumesError> {
        let _w = self.write.lock().await;
        let mut rec = self.need(owner, name)?;
        self.refuse_if_held(&rec, holder)?;
        let src = rec
            .snapshot(id)
            .cloned()
            .ok_or_else(|| VolumesError::NoSnapshot {
                volume: key(owner, name),
                snapshot: id,
            })?;
        let needed = self.owner_bytes(owner, name)?.saturating_add(src.bytes);
        let quota = self.config.quota_mib.saturating_mul(1 << 20);
        if needed > quota {
            return Err(VolumesError::OverQuota { needed, quota });
        }
        rec.lease = None;
        rec.generation += 1;
        let sid = rec.next_snapshot;
        rec.next_snapshot += 1;
        rec.snapshots.push(SnapshotRecord {
            id: sid,
            manifest: src.manifest,
            generation: rec.generation,
            status: SnapshotStatus::Saved,
            reason: Some(format!("snapshot {id} restored as head by {by}")),
            bytes: src.bytes,
            files: src.files,
            created_ms: now_ms,
            by: by.to_string(),
        });
        rec.head = Some(sid);
        // A confirmed halted snapshot is resolved: its copy is now the head.
        if src.status == SnapshotStatus::Halted {
            rec.snapshots.retain(|s| s.id != id);
        }
        self.retain(&mut rec, now_ms);
        self.save(&rec)?;
        self.store.flush().await?;
        tracing::info!(volume = %key(owner, name), snapshot = id, head = sid, %by, "volume head set");
        Ok(rec)
    }

    fn refuse_if_held(
        &self,
        rec: &VolumeRecord,
        holder: impl Fn(&str) -> Holder,
    ) -> Result<(), VolumesError> {
        match &rec.lease {
            Some(l) if holder(&l.instance) != Holder::Ended => Err(VolumesError::InUse {
                volume: key(&rec.owner, &rec.name),
                holder: l.instance.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Deletes a volume and every snapshot of it (refused while an instance
    /// writes it); the chunks go with the next collection.
    pub async fn remove(
        &self,
        owner: &str,
        name: &str,
        holder: impl Fn(&str) -> Holder,
    ) -> Result<VolumeRecord, VolumesError> {
        let _w = self.write.lock().await;
        let rec = self.need(owner, name)?;
        self.refuse_if_held(&rec, holder)?;
        self.store.remove(Tree::Volumes, &key(owner, name))?;
        self.store.flush().await?;
        tracing::info!(volume = %key(owner, name), snapshots = rec.snapshots.len(), "volume deleted");
        Ok(rec)
    }

    /// The decoded manifest of a stored snapshot.
    pub async fn manifest(&self, id: ChunkId) -> Result<Manifest, VolumesError> {
        let bytes = self
            .chunks
            .get(id)
            .await?
            .ok_or(VolumesError::ManifestLost(id))?;
        tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &Limits::DEFAULT))
            .await
            .map_err(|e| VolumesError::InvalidManifest(e.to_string()))?
            .map_err(|e| VolumesError::InvalidManifest(format!("stored manifest {id}: {e}")))
    }

    /// Holds commits off until the guard drops (the collector marks meanwhile).
    pub async fn pause_commits(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gc.write().await
    }

    /// Every manifest of every snapshot, and every chunk they list.
    pub async fn live_chunks(&self) -> Result<HashSet<ChunkId>, VolumesError> {
        let mut live = HashSet::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        for rec in self.list(None)? {
            for s in &rec.snapshots {
                if !seen.insert(s.manifest) {
                    continue;
                }
                live.insert(s.manifest);
                // A snapshot that no longer decodes stops the sweep rather than
                // losing a user's chunks.
                let m = self.manifest(s.manifest).await?;
                live.extend(m.unique_chunks().iter().map(|c| c.id));
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_shared::chunks::manifest::Entry;
    use cairn_shared::chunks::{ChunkRef, DEFAULT_PARAMS};

    struct World {
        _tmp: tempfile::TempDir,
        chunks: Arc<dyn ChunkStore>,
        v: Volumes,
    }

    fn world(config: VolumesConfig) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).unwrap();
        let chunks: Arc<dyn ChunkStore> =
            Arc::new(crate::chunks::local::LocalChunks::open(&tmp.path().join("chunks")).unwrap());
        let v = Volumes::new(store, chunks.clone(), config);
        World {
            _tmp: tmp,
            chunks,
            v,
        }
    }

    /// A snapshot of files named `names`, each holding its name; chunks stored
    /// unless `store` is false.
    async fn snapshot(w: &World, names: &[&str], store: bool) -> Bytes {
        let mut entries = vec![];
        for n in names {
            let id = ChunkId::of(n.as_bytes());
            if store {
                w.chunks.put(id, Bytes::from(n.to_string())).await.unwrap();
            }
            entries.push(Entry {
                path: n.to_string(),
                kind: EntryKind::File {
                    chunks: vec![ChunkRef {
                        id,
                        len: n.len() as u32,
                    }],
                },
                mode: 0o644,
                size: n.len() as u64,
                mtime_ns: 0,
            });
        }
        Bytes::from(Manifest::new(DEFAULT_PARAMS, entries).encode())
    }

    fn running(_: &str) -> Holder {
        Holder::Running
    }

    #[tokio::test]
    async fn a_lease_holder_commits_heads_and_a_retried_answer_records_nothing_twice() {
        let w = world(VolumesConfig::default());
        let got =
            w.v.acquire("alice", "work", "i-1", running, 1)
                .await
                .unwrap();
        assert_eq!((got.head, got.generation), (None, 0));
        let s1 = snapshot(&w, &["a", "b"], true).await;
        let o =
            w.v.commit("alice", "work", "i-1", 0, false, s1.clone(), 2)
                .await
                .unwrap();
        assert_eq!(o, CommitOutcome::Head { generation: 1 });
        // The same tree again (an unchanged checkpoint, a retried save): nothing new.
        let o =
            w.v.commit("alice", "work", "i-1", 1, true, s1.clone(), 3)
                .await
                .unwrap();
        assert_eq!(o, CommitOutcome::Head { generation: 1 });
        let rec = w.v.get("alice", "work").unwrap().unwrap();
        assert_eq!(rec.snapshots.len(), 1);
        assert!(rec.lease.is_none(), "a final save releases the lease");
        // The final save's answer was lost after a change: the retry gets the
        // same answer although the lease is gone.
        let w2 = world(VolumesConfig::default());
        w2.v.acquire("bob", "home", "i-2", running, 1)
            .await
            .unwrap();
        let t = snapshot(&w2, &["x"], true).await;
        let first =
            w2.v.commit("bob", "home", "i-2", 0, true, t.clone(), 2)
                .await
                .unwrap();
        let again =
            w2.v.commit("bob", "home", "i-2", 0, true, t, 3)
                .await
                .unwrap();
        assert_eq!(first, again);
        assert_eq!(w2.v.get("bob", "home").unwrap().unwrap().snapshots.len(), 1);
    }

    #[tokio::test]
    async fn missing_chunks_refuse_a_commit_and_a_second_writer_is_refused() {
        let w = world(VolumesConfig::default());
        w.v.acquire("alice", "work", "i-1", running, 1)
            .await
            .unwrap();
        let s = snapshot(&w, &["never-sent"], false).await;
        let e =
            w.v.commit("alice", "work", "i-1", 0, false, s, 2)
                .await
                .unwrap_err();
        assert!(
            matches!(e, VolumesError::ChunksMissing { count: 1, .. }),
            "{e}"
        );
        assert!(w
            .v
            .get("alice", "work")
            .unwrap()
            .unwrap()
            .snapshots
            .is_empty());
        let e =
            w.v.acquire("alice", "work", "i-2", running, 3)
                .await
                .unwrap_err();
        assert!(e.to_string().contains("in use by instance i-1"), "{e}");
    }

    #[tokio::test]
    async fn a_moved_lease_turns_the_old_writer_into_a_conflict_and_gc_keeps_it() {
        let w = world(VolumesConfig::default());
        w.v.acquire("alice", "work", "i-1", running, 1)
            .await
            .unwrap();
        let s1 = snapshot(&w, &["a"], true).await;
        w.v.commit("alice", "work", "i-1", 0, false, s1, 2)
            .await
            .unwrap();
        let got =
            w.v.acquire("alice", "work", "i-2", |_| Holder::Unreachable, 3)
                .await
                .unwrap();
        assert_eq!(got.moved_from.as_deref(), Some("i-1"));
        let late = snapshot(&w, &["a", "late"], true).await;
        let o =
            w.v.commit("alice", "work", "i-1", 1, true, late.clone(), 4)
                .await
                .unwrap();
        assert!(matches!(o, CommitOutcome::Conflict { .. }), "{o:?}");
        let rec = w.v.get("alice", "work").unwrap().unwrap();
        assert_eq!(rec.head().unwrap().files, 1, "the head is untouched");
        assert_eq!(rec.lease.as_ref().unwrap().instance, "i-2");
        let live = w.v.live_chunks().await.unwrap();
        assert!(
            live.contains(&ChunkId::of(&late)),
            "the conflict's manifest is live"
        );
        assert!(live.contains(&ChunkId::of(b"late")), "and its chunks");
    }

    #[tokio::test]
    async fn quota_and_halts_and_restoring_an_older_head() {
        let w = world(VolumesConfig {
            quota_mib: 1,
            ..VolumesConfig::default()
        });
        w.v.acquire("alice", "work", "i-1", running, 1)
            .await
            .unwrap();
        let s1 = snapshot(&w, &["a", "b", "c", "d"], true).await;
        w.v.commit("alice", "work", "i-1", 0, false, s1, 2)
            .await
            .unwrap();
        // Deleting 3 of 4 files (> 50%) halts; the head stays.
        let s2 = snapshot(&w, &["a"], true).await;
        let o =
            w.v.commit("alice", "work", "i-1", 1, false, s2, 3)
                .await
                .unwrap();
        assert!(
            matches!(&o, CommitOutcome::Halted { reason } if reason.contains("3 of 4")),
            "{o:?}"
        );
        // Over the quota: refused, nothing recorded.
        let big = "x".repeat(2 << 20);
        let id = ChunkId::of(big.as_bytes());
        w.chunks.put(id, Bytes::from(big.clone())).await.unwrap();
        let m = Manifest::new(
            DEFAULT_PARAMS,
            vec![Entry {
                path: "big".into(),
                kind: EntryKind::File {
                    chunks: vec![ChunkRef {
                        id,
                        len: big.len() as u32,
                    }],
                },
                mode: 0o644,
                size: big.len() as u64,
                mtime_ns: 0,
            }],
        );
        let e =
            w.v.commit("alice", "work", "i-1", 1, false, Bytes::from(m.encode()), 4)
                .await
                .unwrap_err();
        assert!(e.to_string().contains("quota"), "{e}");
        let rec = w.v.get("alice", "work").unwrap().unwrap();
        assert_eq!(rec.snapshots.len(), 2);
        assert_eq!(rec.head().unwrap().files, 4);
        // Refused while the lease is held; then the halted one is confirmed.
        let halted = rec.snapshots[1].id;
        let e =
            w.v.set_head("alice", "work", halted, "alice", running, 5)
                .await
                .unwrap_err();
        assert!(matches!(e, VolumesError::InUse { .. }), "{e}");
        let rec =
            w.v.set_head("alice", "work", halted, "alice", |_| Holder::Ended, 6)
                .await
                .unwrap();
        assert_eq!(rec.head().unwrap().files, 1);
        assert_eq!(rec.generation, 2);
        assert!(rec
            .snapshots
            .iter()
            .all(|s| s.status == SnapshotStatus::Saved));
        // And the first comes back as a new head.
        let rec =
            w.v.set_head("alice", "work", 1, "alice", |_| Holder::Ended, 7)
                .await
                .unwrap();
        assert_eq!(rec.head().unwrap().files, 4);
        assert_eq!(
            w.v.remove("alice", "work", |_| Holder::Ended)
                .await
                .unwrap()
                .snapshots
                .len(),
            3
        );
        assert!(w.v.get("alice", "work").unwrap().is_none());
    }
}
