//! Datasets in the store: `datasets/NAME` holds the dataset's record with every
//! version still kept. A version is immutable: `NAME@3` means the same bytes for as
//! long as it exists, and numbers are never reused within a dataset's life (the
//! record keeps the next number, so removing the latest version does not hand its
//! number to the next push).
//!
//! A commit is checked whole before anything is recorded: the manifest decodes and
//! passes [`Limits::DEFAULT`], and every chunk it lists is in the chunk store. The
//! manifest itself is then stored in the chunk store under its id, which is what
//! agents fetch. Commits and the collector are serialised by `gc`: a commit's
//! presence check and its record are one step the collector cannot run inside.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_shared::chunks::manifest::{Limits, Manifest, ManifestId};
use cairn_shared::chunks::ChunkId;
use serde::{Deserialize, Serialize};

use crate::chunks::{ChunkStore, ChunkStoreError};
use crate::store::{Store, StoreError, Tree};

/// How many missing ids a refused commit names.
const MISSING_SHOWN: usize = 5;
/// Versions kept per dataset; a push past it is refused until old ones are removed.
pub const MAX_VERSIONS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DatasetsError {
    #[error("{0:?} is not a dataset name: {rule}", rule = super::NAME_RULE)]
    InvalidName(String),
    /// The manifest broke a rule; the words name it.
    #[error("the manifest is refused: {0}")]
    InvalidManifest(String),
    #[error("{count} chunk(s) of the manifest are not in the chunk store (first: {}); upload them, then commit again", first.iter().map(|i| i.to_hex()).collect::<Vec<_>>().join(", "))]
    ChunksMissing { count: usize, first: Vec<ChunkId> },
    #[error("no dataset named {0:?}")]
    NotFound(String),
    #[error("dataset {name:?} has no version {version}")]
    VersionNotFound { name: String, version: u32 },
    #[error("dataset {0:?} has {MAX_VERSIONS} versions; remove old ones (cairn datasets rm NAME@V) before pushing")]
    TooManyVersions(String),
    #[error("the manifest of {name}@{version} is missing from the chunk store")]
    ManifestLost { name: String, version: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chunks(#[from] ChunkStoreError),
}

/// One immutable version of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetVersion {
    pub name: String,
    pub version: u32,
    /// Stored as hex; the manifest is in the chunk store under this id.
    #[serde(with = "hex_id")]
    pub manifest: ManifestId,
    /// Bytes of all files (duplicates counted each time).
    pub bytes: u64,
    pub files: u64,
    pub created_ms: u64,
    pub pushed_by: String,
}

/// A dataset: its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub name: String,
    pub versions: Vec<DatasetVersion>,
    /// The number the next push gets.
    pub next_version: u32,
    pub created_ms: u64,
}

impl DatasetRecord {
    pub fn latest(&self) -> Option<&DatasetVersion> {
        self.versions.last()
    }
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub version: DatasetVersion,
    /// The manifest is the latest version's: nothing was created.
    pub unchanged: bool,
}

pub(crate) mod hex_id {
    use cairn_shared::chunks::ChunkId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ChunkId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChunkId, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not a 64-hex-digit id"))
    }
}

/// The datasets catalogue.
pub struct Datasets {
    store: Store,
    chunks: Arc<dyn ChunkStore>,
    /// Serialises read-modify-write of records.
    write: Mutex<()>,
    /// Commits hold it shared, the collector exclusively (see the module doc).
    gc: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Datasets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datasets").finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<(), DatasetsError> {
    if super::valid_name(name) {
        Ok(())
    } else {
        Err(DatasetsError::InvalidName(name.chars().take(80).collect()))
    }
}

impl Datasets {
    pub fn new(store: Store, chunks: Arc<dyn ChunkStore>) -> Self {
        Datasets {
            store,
            chunks,
            write: Mutex::new(()),
            gc: tokio::sync::RwLock::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is in the store; a panic while held leaves nothing torn.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `manifest_bytes` as the next version of `name` (created if new),
    /// after checking it whole; the latest version again if the manifest is the
    /// latest's (nothing is created).
    pub async fn commit(
        &self,
        name: &str,
        manifest_bytes: &[u8],
        who: &str,
        now_ms: u64,
    ) -> Result<Committed, DatasetsError> {
        check_name(name)?;
        let manifest = Manifest::decode(manifest_bytes, &Limits::DEFAULT)
            .map_err(|e| DatasetsError::InvalidManifest(e.to_string()))?;
        // The id is of the canonical encoding, so the same tree always has one name.
        let encoded = manifest.encode();
        let id = ChunkId::of(&encoded);
        if let Some(latest) = self.get(name)?.as_ref().and_then(|r| r.latest()) {
            if latest.manifest == id {
                return Ok(Committed {
                    version: latest.clone(),
                    unchanged: true,
                });
            }
        }
        let _no_gc = self.gc.read().await;
        let missing = crate::chunks::missing_of(self.chunks.as_ref(), &manifest).await?;
        if !missing.is_empty() {
            return Err(DatasetsError::ChunksMissing {
                count: missing.len(),
                first: missing.into_iter().take(MISSING_SHOWN).collect(),
            });
        }
        self.chunks.put(id, Bytes::from(encoded)).await?;
        let _w = self.lock();
        let mut rec = self.get(name)?.unwrap_or_else(|| DatasetRecord {
            name: name.to_string(),
            versions: vec![],
            next_version: 1,
            created_ms: now_ms,
        });
        // A concurrent push of the same tree may have won the race.
        if let Some(latest) = rec.latest() {
            if latest.manifest == id {
                return Ok(Committed {
                    version: latest.clone(),
                    unchanged: true,
                });
            }
        }
        if rec.versions.len() >= MAX_VERSIONS {
            return Err(DatasetsError::TooManyVersions(name.to_string()));
        }
        let version = DatasetVersion {
            name: name.to_string(),
            version: rec.next_version,
            manifest: id,
            bytes: manifest.total_bytes(),
            files: manifest.file_count(),
            created_ms: now_ms,
            pushed_by: who.to_string(),
        };
        rec.next_version = rec.next_version.saturating_add(1);
        rec.versions.push(version.clone());
        self.store.put(Tree::Datasets, name, &rec)?;
        tracing::info!(dataset = name, version = version.version, manifest = %id, files = version.files, bytes = version.bytes, by = who, "dataset version committed");
        Ok(Committed {
            version,
            unchanged: false,
        })
    }

    /// `name@version`, or the latest version with `None`.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<DatasetVersion, DatasetsError> {
        check_name(name)?;
        let rec = self
            .get(name)?
            .ok_or_else(|| DatasetsError::NotFound(name.to_string()))?;
        let found = match version {
            None => rec.latest(),
            Some(v) => rec.versions.iter().find(|x| x.version == v),
        };
        found.cloned().ok_or_else(|| match version {
            // A record with no versions left is not shown as a dataset.
            None => DatasetsError::NotFound(name.to_string()),
            Some(v) => DatasetsError::VersionNotFound {
                name: name.to_string(),
                version: v,
            },
        })
    }

    /// The encoded manifest of a version, from the chunk store (verified there).
    pub async fn manifest_bytes(&self, v: &DatasetVersion) -> Result<Bytes, DatasetsError> {
        self.chunks
            .get(v.manifest)
            .await?
            .ok_or_else(|| DatasetsError::ManifestLost {
                name: v.name.clone(),
                version: v.version,
            })
    }

    /// Every dataset, by name.
    pub fn list(&self) -> Result<Vec<DatasetRecord>, DatasetsError> {
        let mut all: Vec<DatasetRecord> = self.store.all(Tree::Datasets)?;
        all.retain(|r| !r.versions.is_empty());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One dataset, `None` if absent or emptied.
    pub fn get(&self, name: &str) -> Result<Option<DatasetRecord>, DatasetsError> {
        check_name(name)?;
        Ok(self
            .store
            .get::<DatasetRecord>(Tree::Datasets, name)?
            .filter(|r| !r.versions.is_empty()))
    }

    /// Removes a whole dataset; its chunks go at the next collection.
    pub fn remove(&self, name: &str) -> Result<DatasetRecord, DatasetsError> {
        let _w = self.lock();
        let rec = self
            .get(name)?
            .ok_or_else(|| DatasetsError::NotFound(name.to_string()))?;
        self.store.remove(Tree::Datasets, name)?;
        Ok(rec)
    }

    /// Removes one version; the record (and its numbering) stays while the dataset
    /// has others. Removing the last version removes the dataset.
    pub fn remove_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<DatasetVersion, DatasetsError> {
        let _w = self.lock();
        let mut rec = self
            .get(name)?
            .ok_or_else(|| DatasetsError::NotFound(name.to_string()))?;
        let Some(at) = rec.versions.iter().position(|v| v.version == version) else {
            return Err(DatasetsError::VersionNotFound {
                name: name.to_string(),
                version,
            });
        };
        let gone = rec.versions.remove(at);
        if rec.versions.is_empty() {
            self.store.remove(Tree::Datasets, name)?;
        } else {
            self.store.put(Tree::Datasets, name, &rec)?;
        }
        Ok(gone)
    }

    /// Marks every manifest of every version and every chunk they list, then sweeps
    /// the rest of the chunk store older than `grace_ms`. Commits wait meanwhile.
    pub async fn collect_garbage(
        &self,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<crate::chunks::gc::Swept, DatasetsError> {
        self.collect_garbage_with(HashSet::new(), now_ms, grace_ms)
            .await
    }

    /// [`Datasets::collect_garbage`] keeping `also_live` too: the live set of the
    /// store's other users (image archives), marked by the caller, who keeps their
    /// commits out until this returns.
    pub async fn collect_garbage_with(
        &self,
        also_live: HashSet<ChunkId>,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<crate::chunks::gc::Swept, DatasetsError> {
        let _excl = self.gc.write().await;
        let mut live: HashSet<ChunkId> = also_live;
        for rec in self.store.all::<DatasetRecord>(Tree::Datasets)? {
            for v in &rec.versions {
                live.insert(v.manifest);
                let bytes = self.manifest_bytes(v).await?;
                // A stored manifest passed these limits when it was committed; one
                // that no longer decodes stops the sweep rather than losing chunks.
                let m = Manifest::decode(&bytes, &Limits::DEFAULT).map_err(|e| {
                    DatasetsError::InvalidManifest(format!("{}@{}: {e}", v.name, v.version))
                })?;
                live.extend(m.unique_chunks().iter().map(|c| c.id));
            }
        }
        Ok(crate::chunks::gc::collect(self.chunks.as_ref(), &live, now_ms, grace_ms).await?)
    }
}

/// The catalogue answers the instance manager's lookups (blueprint saves, launches).
impl crate::datasets::lookup::DatasetLookup for Datasets {
    fn lookup(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<cairn_shared::workload::DatasetSpec, crate::datasets::lookup::LookupError> {
        use crate::datasets::lookup::LookupError;
        match self.resolve(name, version) {
            Ok(v) => Ok(cairn_shared::workload::DatasetSpec {
                name: v.name,
                version: v.version,
                manifest: v.manifest,
                bytes: v.bytes,
            }),
            Err(DatasetsError::NotFound(_) | DatasetsError::InvalidName(_)) => {
                Err(LookupError::NoDataset(name.to_string()))
            }
            Err(DatasetsError::VersionNotFound { name, version }) => {
                Err(LookupError::NoVersion { name, version })
            }
            Err(e) => Err(LookupError::Unavailable(e.to_string())),
        }
    }
}
