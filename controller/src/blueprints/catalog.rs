//! Blueprints in the store, with their revision history.
//!
//! `blueprints/NAME` holds the current record; `blueprint_revisions/NAME@REV` holds
//! every revision ever saved. Writes are serialised so two admins editing at once get
//! consecutive revisions, never the same number twice.
//!
//! A blueprint's image is resolved (tag → digest, see [`crate::images::resolve`])
//! before it is saved, outside the write lock since a registry may be slow; the
//! record stores what instances run, so every host runs the same bits until an
//! admin edits the image or asks for a [`Catalog::refresh`].

use std::sync::Mutex;

use super::spec::{self, BlueprintInput, BlueprintSpec, FieldError, ResolvedImage};
use crate::store::{Store, StoreError, Tree};

pub use cairn_api::blueprints::{BlueprintRecord, Revision};

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

/// Resolves a blueprint's image when it is saved: implemented by
/// [`crate::images::resolve::Resolver`] (registry, uploads, `pull = never`); tests
/// use fakes. A failure is a field error, and nothing is saved.
pub trait ImageResolver: Sync {
    fn resolve(
        &self,
        spec: &BlueprintSpec,
    ) -> impl std::future::Future<Output = Result<ResolvedImage, FieldError>> + Send;
}

/// Whether an edit from `old` to `new` keeps `old`'s resolved image: same image,
/// same pull policy, and `old` was resolved at all (records from before resolution
/// are resolved at their first edit).
fn keeps_resolution(old: &BlueprintSpec, new: &BlueprintSpec) -> bool {
    old.image == new.image && old.pull == new.pull && old.resolved.is_some()
}

fn invalid(e: FieldError) -> CatalogError {
    CatalogError::Invalid(vec![e])
}

fn rev_key(name: &str, rev: u32) -> String {
    format!("{name}@{rev:010}")
}

/// The blueprint catalogue.
#[derive(Debug)]
pub struct Catalog {
    store: Store,
    write: Mutex<()>,
    /// Bumped by every save, so plans built from the catalogue know when to rebuild.
    generation: std::sync::atomic::AtomicU64,
}

impl Catalog {
    pub fn new(store: Store) -> Self {
        Catalog {
            store,
            write: Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Changes with every save (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes the record and its revision in one transaction, only if the record is
    /// still as read (`expect`: its version, or `None` for a name not taken): a
    /// revision never exists without its record, nor two saves under one number.
    fn save(
        &self,
        spec: BlueprintSpec,
        revision: u32,
        created_ms: u64,
        now_ms: u64,
        expect: Option<crate::store::Version>,
    ) -> Result<BlueprintRecord, StoreError> {
        let record = BlueprintRecord {
            revision,
            created_ms,
            updated_ms: now_ms,
            spec: spec.clone(),
        };
        self.store
            .transaction()
            .expect(Tree::Blueprints, &spec.name, expect)
            .expect(
                Tree::BlueprintRevisions,
                &rev_key(&spec.name, revision),
                None,
            )
            .put(
                Tree::BlueprintRevisions,
                &rev_key(&spec.name, revision),
                &Revision {
                    revision,
                    saved_ms: now_ms,
                    spec,
                },
            )?
            .put(Tree::Blueprints, &record.spec.name, &record)?
            .commit()?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(record)
    }

    /// Creates revision 1 of a new blueprint, its image resolved first (outside the
    /// write lock: a registry may take seconds). Nothing is saved if resolution fails.
    pub async fn create(
        &self,
        input: &BlueprintInput,
        images: &impl ImageResolver,
        now_ms: u64,
    ) -> Result<BlueprintRecord, CatalogError> {
        let mut spec = spec::validate(input).map_err(CatalogError::Invalid)?;
        // A taken name should not cost a registry round trip.
        if self.get(&spec.name)?.is_some() {
            return Err(CatalogError::Exists(spec.name));
        }
        spec.resolved = Some(images.resolve(&spec).await.map_err(invalid)?);
        let record = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            if self
                .store
                .get::<BlueprintRecord>(Tree::Blueprints, &spec.name)?
                .is_some()
            {
                return Err(CatalogError::Exists(spec.name));
            }
            self.save(spec, 1, now_ms, now_ms, None)?
        };
        self.store.flush().await?;
        Ok(record)
    }

    /// Replaces a blueprint's fields, as a new revision. The name cannot change.
    ///
    /// The image is resolved again only if `image` or `pull` changed: editing the
    /// memory limit must not silently move instances to whatever the tag points at
    /// today (that is what [`Catalog::refresh`] is for).
    pub async fn update(
        &self,
        name: &str,
        input: &BlueprintInput,
        images: &impl ImageResolver,
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
        let mut fresh: Option<ResolvedImage> = None;
        // At most two rounds: the second only if someone changed the image between
        // our read and the write lock, and then `fresh` is set.
        loop {
            let current = self
                .get(name)?
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
            if !keeps_resolution(&current.spec, &spec) && fresh.is_none() {
                fresh = Some(images.resolve(&spec).await.map_err(invalid)?);
            }
            let done = self
                .modify(name, now_ms, |old| {
                    let resolved = if keeps_resolution(old, &spec) {
                        old.resolved.clone()
                    } else {
                        Some(fresh.clone()?)
                    };
                    Some(BlueprintSpec {
                        resolved,
                        ..spec.clone()
                    })
                })
                .await?;
            if let Some((record, _)) = done {
                return Ok(record);
            }
        }
    }

    /// Resolves the image again (a moved tag, a new upload): a new revision if
    /// instances would now run something else, else the record unchanged. Returns
    /// the record and whether it changed. Running instances keep their revision.
    pub async fn refresh(
        &self,
        name: &str,
        images: &impl ImageResolver,
        now_ms: u64,
    ) -> Result<(BlueprintRecord, bool), CatalogError> {
        // Repeats only if the image was edited while the registry answered.
        loop {
            let current = self
                .get(name)?
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
            let fresh = images.resolve(&current.spec).await.map_err(invalid)?;
            let done = self
                .modify(name, now_ms, |old| {
                    if old.image != current.spec.image || old.pull != current.spec.pull {
                        return None;
                    }
                    let same = old.resolved.as_ref().is_some_and(|r| {
                        r.reference == fresh.reference && r.source == fresh.source
                    });
                    Some(if same {
                        old.clone()
                    } else {
                        BlueprintSpec {
                            resolved: Some(fresh.clone()),
                            ..old.clone()
                        }
                    })
                })
                .await?;
            if let Some(done) = done {
                return Ok(done);
            }
        }
    }

    /// Enables or disables a blueprint (a new revision, so the history shows it).
    /// The resolved image stays as it is.
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        now_ms: u64,
    ) -> Result<BlueprintRecord, CatalogError> {
        let done = self
            .modify(name, now_ms, |old| {
                Some(BlueprintSpec {
                    enabled,
                    ..old.clone()
                })
            })
            .await?;
        // `change` always answers, so `modify` always does.
        done.map(|(r, _)| r)
            .ok_or_else(|| CatalogError::NotFound(name.to_string()))
    }

    /// Applies `change` to the current spec under the write lock and saves the result
    /// as a new revision if it differs. `change` answers `None` to give up (the record
    /// moved under the caller); then nothing is written and `Ok(None)` returned.
    /// Otherwise the record and whether a new revision was saved.
    async fn modify(
        &self,
        name: &str,
        now_ms: u64,
        change: impl FnOnce(&BlueprintSpec) -> Option<BlueprintSpec>,
    ) -> Result<Option<(BlueprintRecord, bool)>, CatalogError> {
        let record = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let (old, version): (BlueprintRecord, _) = self
                .store
                .get_versioned(Tree::Blueprints, name)?
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
            let Some(spec) = change(&old.spec) else {
                return Ok(None);
            };
            if spec == old.spec {
                return Ok(Some((old, false)));
            }
            self.save(
                spec,
                old.revision + 1,
                old.created_ms,
                now_ms,
                Some(version),
            )?
        };
        self.store.flush().await?;
        Ok(Some((record, true)))
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

    use cairn_shared::images::ImageSource;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Resolves `IMAGE` to `IMAGE@sha256:<generation>…`, counting calls; an image
    /// named `missing:*` fails as an unknown tag would.
    #[derive(Default)]
    struct Fake {
        generation: AtomicUsize,
        calls: AtomicUsize,
    }

    impl ImageResolver for Fake {
        async fn resolve(&self, spec: &BlueprintSpec) -> Result<ResolvedImage, FieldError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if spec.image.starts_with("missing:") {
                return Err(FieldError {
                    field: "image".into(),
                    message: "tag not found".into(),
                });
            }
            let g = self.generation.load(Ordering::SeqCst);
            Ok(ResolvedImage {
                reference: format!("{}@sha256:{g:064}", spec.image),
                source: ImageSource::Registry,
                resolved_ms: self.calls.load(Ordering::SeqCst) as u64,
            })
        }
    }

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
        let f = Fake::default();
        let r1 = c.create(&input("web", 64), &f, 1).await.unwrap();
        assert_eq!(r1.revision, 1);
        assert!(matches!(
            c.create(&input("web", 64), &f, 2).await,
            Err(CatalogError::Exists(_))
        ));
        let r2 = c
            .update(
                "web",
                &BlueprintInput {
                    name: None,
                    ..input("web", 128)
                },
                &f,
                3,
            )
            .await
            .unwrap();
        assert_eq!((r2.revision, r2.created_ms, r2.updated_ms), (2, 1, 3));
        // Saving the same fields again is not a new revision.
        assert_eq!(
            c.update("web", &input("web", 128), &f, 4)
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
        c.create(&input("web2", 64), &f, 6).await.unwrap();
        assert_eq!(c.revisions("web").unwrap().len(), 3);
        assert!(matches!(
            c.update("nope", &input("nope", 64), &f, 7).await,
            Err(CatalogError::NotFound(_))
        ));
        let err = c
            .update("web", &input("other", 64), &f, 8)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CatalogError::Invalid(ref f) if f[0].field == "name"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn invalid_input_saves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::new(Store::open(tmp.path()).unwrap());
        let f = Fake::default();
        assert!(matches!(
            c.create(&input("web", 1), &f, 1).await,
            Err(CatalogError::Invalid(_))
        ));
        assert!(c.list().unwrap().is_empty());
        assert!(c.revisions("web").unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_resolution_is_kept_until_the_image_changes_or_a_refresh() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::new(Store::open(tmp.path()).unwrap());
        let f = Fake::default();
        let r1 = c.create(&input("web", 64), &f, 1).await.unwrap();
        let first = r1.spec.resolved.clone().unwrap();
        assert_eq!(first.reference, format!("img:1@sha256:{:064}", 0));
        assert_eq!(r1.spec.run_image(), first.reference);
        // The tag moves in the registry; editing the memory keeps the old digest.
        f.generation.store(1, Ordering::SeqCst);
        let r2 = c.update("web", &input("web", 128), &f, 2).await.unwrap();
        assert_eq!((r2.revision, r2.spec.resolved.as_ref()), (2, Some(&first)));
        assert_eq!(f.calls.load(Ordering::SeqCst), 1, "no registry call");
        // Disabling keeps it too.
        let r3 = c.set_enabled("web", false, 3).await.unwrap();
        assert_eq!(r3.spec.resolved.as_ref(), Some(&first));
        // A refresh moves it: a new revision; a second refresh changes nothing.
        let (r4, changed) = c.refresh("web", &f, 4).await.unwrap();
        assert!(changed);
        assert_eq!(r4.revision, 4);
        assert_eq!(r4.spec.run_image(), format!("img:1@sha256:{:064}", 1));
        let (r5, changed) = c.refresh("web", &f, 5).await.unwrap();
        assert!(!changed);
        assert_eq!(r5, r4);
        // The old revision still says what its instances run.
        assert_eq!(
            c.revision("web", 1).unwrap().unwrap().spec.run_image(),
            first.reference
        );
        // A new image is resolved on save; a pull policy change as well.
        let new_image = BlueprintInput {
            image: Some("img:2".into()),
            ..input("web", 128)
        };
        let r6 = c.update("web", &new_image, &f, 6).await.unwrap();
        assert_eq!(r6.spec.run_image(), format!("img:2@sha256:{:064}", 1));
        let calls = f.calls.load(Ordering::SeqCst);
        let never = BlueprintInput {
            pull: Some("never".into()),
            ..new_image.clone()
        };
        c.update("web", &never, &f, 7).await.unwrap();
        assert_eq!(f.calls.load(Ordering::SeqCst), calls + 1);
        assert!(matches!(
            c.refresh("nope", &f, 8).await,
            Err(CatalogError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_resolution_saves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::new(Store::open(tmp.path()).unwrap());
        let f = Fake::default();
        let missing = BlueprintInput {
            image: Some("missing:1".into()),
            ..input("web", 64)
        };
        let err = c.create(&missing, &f, 1).await.unwrap_err();
        assert!(
            matches!(err, CatalogError::Invalid(ref e) if e[0].field == "image"),
            "{err:?}"
        );
        assert!(c.get("web").unwrap().is_none());
        assert!(c.revisions("web").unwrap().is_empty());
        c.create(&input("web", 64), &f, 2).await.unwrap();
        assert!(c.update("web", &missing, &f, 3).await.is_err());
        let now = c.get("web").unwrap().unwrap();
        assert_eq!((now.revision, now.spec.image.as_str()), (1, "img:1"));
        // A taken name is refused before any registry call.
        let calls = f.calls.load(Ordering::SeqCst);
        assert!(matches!(
            c.create(&input("web", 64), &f, 4).await,
            Err(CatalogError::Exists(_))
        ));
        assert_eq!(f.calls.load(Ordering::SeqCst), calls);
    }
}
