//! Blueprints in the store, with their revision history.
//!
//! `blueprints/NAME` holds the current record; `blueprint_revisions/NAME@REV` holds
//! every revision ever saved. Writes are serialised so two admins editing at once get
//! consecutive revisions, never the same number twice.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::spec::{self, BlueprintInput, BlueprintSpec, FieldError};
use crate::store::{Store, StoreError, Tree};

/// The current state of a blueprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlueprintRecord {
    pub revision: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(flatten)]
    pub spec: BlueprintSpec,
}

/// One saved revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u32,
    pub saved_ms: u64,
    pub spec: BlueprintSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the blueprint is invalid")]
    Invalid(Vec<FieldError>),
    #[error("a blueprint named {0:?} already exists")]
    Exists(String),
    #[error("no blueprint named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn rev_key(name: &str, rev: u32) -> String {
    format!("{name}@{rev:010}")
}

/// The blueprint catalogue.
#[derive(Debug)]
pub struct Catalog {
    store: Store,
    write: Mutex<()>,
}

impl Catalog {
    pub fn new(store: Store) -> Self {
        Catalog {
            store,
            write: Mutex::new(()),
        }
    }

    fn save(
        &self,
        spec: BlueprintSpec,
        revision: u32,
        created_ms: u64,
        now_ms: u64,
    ) -> Result<BlueprintRecord, StoreError> {
        let record = BlueprintRecord {
            revision,
            created_ms,
            updated_ms: now_ms,
            spec: spec.clone(),
        };
        self.store.put(
            Tree::BlueprintRevisions,
            &rev_key(&spec.name, revision),
            &Revision {
                revision,
                saved_ms: now_ms,
                spec,
            },
        )?;
        self.store
            .put(Tree::Blueprints, &record.spec.name, &record)?;
        Ok(record)
    }

    /// Creates revision 1 of a new blueprint.
    pub async fn create(
        &self,
        input: &BlueprintInput,
        now_ms: u64,
    ) -> Result<BlueprintRecord, CatalogError> {
        let spec = spec::validate(input).map_err(CatalogError::Invalid)?;
        let record = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            if self
                .store
                .get::<BlueprintRecord>(Tree::Blueprints, &spec.name)?
                .is_some()
            {
                return Err(CatalogError::Exists(spec.name));
            }
            self.save(spec, 1, now_ms, now_ms)?
        };
        self.store.flush().await?;
        Ok(record)
    }

    /// Replaces a blueprint's fields, as a new revision. The name cannot change.
    pub async fn update(
        &self,
        name: &str,
        input: &BlueprintInput,
        now_ms: u64,
    ) -> Result<BlueprintRecord, CatalogError> {
        if input.name.as_deref().is_some_and(|n| n != name) {
            return Err(CatalogError::Invalid(vec![FieldError {
                field: "name".into(),
                message: "a blueprint cannot be renamed; create a new one".into(),
            }]));
        }
        let input = BlueprintInput {
            name: Some(name.to_string()),
            ..input.clone()
        };
        let spec = spec::validate(&input).map_err(CatalogError::Invalid)?;
        self.modify(name, now_ms, |_| spec).await
    }

    /// Enables or disables a blueprint (a new revision, so the history shows it).
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        now_ms: u64,
    ) -> Result<BlueprintRecord, CatalogError> {
        self.modify(name, now_ms, |old| BlueprintSpec {
            enabled,
            ..old.clone()
        })
        .await
    }

    async fn modify(
        &self,
        name: &str,
        now_ms: u64,
        change: impl FnOnce(&BlueprintSpec) -> BlueprintSpec,
    ) -> Result<BlueprintRecord, CatalogError> {
        let record = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let old: BlueprintRecord = self
                .store
                .get(Tree::Blueprints, name)?
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
            let spec = change(&old.spec);
            if spec == old.spec {
                return Ok(old);
            }
            self.save(spec, old.revision + 1, old.created_ms, now_ms)?
        };
        self.store.flush().await?;
        Ok(record)
    }

    pub fn get(&self, name: &str) -> Result<Option<BlueprintRecord>, StoreError> {
        self.store.get(Tree::Blueprints, name)
    }

    pub fn list(&self) -> Result<Vec<BlueprintRecord>, StoreError> {
        let mut all: Vec<BlueprintRecord> = self.store.all(Tree::Blueprints)?;
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(all)
    }

    /// Every revision of a blueprint, oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<Revision>, StoreError> {
        self.store
            .scan_prefix(Tree::BlueprintRevisions, &format!("{name}@"))
    }

    /// One revision (an instance's, for example).
    pub fn revision(&self, name: &str, revision: u32) -> Result<Option<Revision>, StoreError> {
        self.store
            .get(Tree::BlueprintRevisions, &rev_key(name, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, mem: i64) -> BlueprintInput {
        BlueprintInput {
            name: Some(name.into()),
            image: Some("img:1".into()),
            app: Some("http".into()),
            app_port: Some(8080),
            memory_mib: Some(mem),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn edits_make_revisions_and_old_ones_stay_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::new(Store::open(tmp.path()).unwrap());
        let r1 = c.create(&input("web", 64), 1).await.unwrap();
        assert_eq!(r1.revision, 1);
        assert!(matches!(
            c.create(&input("web", 64), 2).await,
            Err(CatalogError::Exists(_))
        ));
        let r2 = c
            .update(
                "web",
                &BlueprintInput {
                    name: None,
                    ..input("web", 128)
                },
                3,
            )
            .await
            .unwrap();
        assert_eq!((r2.revision, r2.created_ms, r2.updated_ms), (2, 1, 3));
        // Saving the same fields again is not a new revision.
        assert_eq!(
            c.update("web", &input("web", 128), 4)
                .await
                .unwrap()
                .revision,
            2
        );
        let r3 = c.set_enabled("web", false, 5).await.unwrap();
        assert_eq!((r3.revision, r3.spec.enabled), (3, false));
        let revs = c.revisions("web").unwrap();
        assert_eq!(
            revs.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(c.revision("web", 1).unwrap().unwrap().spec.memory_mib, 64);
        // Another blueprint whose name shares a prefix keeps its own history.
        c.create(&input("web2", 64), 6).await.unwrap();
        assert_eq!(c.revisions("web").unwrap().len(), 3);
        assert!(matches!(
            c.update("nope", &input("nope", 64), 7).await,
            Err(CatalogError::NotFound(_))
        ));
        let err = c.update("web", &input("other", 64), 8).await.unwrap_err();
        assert!(
            matches!(err, CatalogError::Invalid(ref f) if f[0].field == "name"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn invalid_input_saves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::new(Store::open(tmp.path()).unwrap());
        assert!(matches!(
            c.create(&input("web", 1), 1).await,
            Err(CatalogError::Invalid(_))
        ));
        assert!(c.list().unwrap().is_empty());
        assert!(c.revisions("web").unwrap().is_empty());
    }
}
