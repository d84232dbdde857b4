//! Dataset versions for instances: the lookup the controller's dataset catalogue
//! answers ([`DatasetLookup`]), the check a blueprint's datasets pass when it is
//! saved, and the resolution of its mounts when an instance is launched (`latest`
//! becomes the newest version *then*, and the instance keeps it). Pure: the lookup
//! is handed in, so tests use closures.

use std::sync::Arc;

use cairn_shared::workload::{DatasetMount, DatasetSpec};

use crate::blueprints::spec::{BlueprintDataset, FieldError};

/// Why a dataset version could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no dataset {0:?}")]
    NoDataset(String),
    #[error("dataset {name:?} has no version {version}")]
    NoVersion { name: String, version: u32 },
    /// The catalogue could not answer (a store error): not the blueprint's fault.
    #[error("the dataset catalogue is unavailable: {0}")]
    Unavailable(String),
}

/// Finds a dataset version: `None` asks for the latest. Implemented by the
/// controller's dataset catalogue; any `Fn(&str, Option<u32>)` closure is one too.
pub trait DatasetLookup: Send + Sync {
    fn lookup(&self, name: &str, version: Option<u32>) -> Result<DatasetSpec, LookupError>;
}

impl<F> DatasetLookup for F
where
    F: Fn(&str, Option<u32>) -> Result<DatasetSpec, LookupError> + Send + Sync,
{
    fn lookup(&self, name: &str, version: Option<u32>) -> Result<DatasetSpec, LookupError> {
        self(name, version)
    }
}

/// The lookup the manager and the service use, if the controller has datasets.
#[derive(Clone, Default)]
pub struct Lookup(Option<Arc<dyn DatasetLookup>>);

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Lookup(set)"
        } else {
            "Lookup(none)"
        })
    }
}

impl Lookup {
    pub fn new(lookup: Arc<dyn DatasetLookup>) -> Self {
        Lookup(Some(lookup))
    }

    /// One dataset version; without a catalogue every lookup is unavailable.
    pub fn lookup(&self, name: &str, version: Option<u32>) -> Result<DatasetSpec, LookupError> {
        match &self.0 {
            Some(l) => l.lookup(name, version),
            None => Err(LookupError::Unavailable(
                "this controller keeps no datasets".into(),
            )),
        }
    }
}

/// The field a lookup failure belongs to: a missing dataset is its `name`, a missing
/// pinned version its `version`.
fn field_error(n: usize, e: &LookupError) -> FieldError {
    let field = match e {
        LookupError::NoVersion { .. } => format!("datasets[{n}].version"),
        _ => format!("datasets[{n}].name"),
    };
    FieldError {
        field,
        message: e.to_string(),
    }
}

/// Checks that every dataset (and pinned version) a blueprint names exists, for a
/// save: one field error per problem, empty when all is well.
pub fn check(datasets: &[BlueprintDataset], lookup: &Lookup) -> Vec<FieldError> {
    datasets
        .iter()
        .enumerate()
        .filter_map(|(n, d)| {
            lookup
                .lookup(&d.name, d.version)
                .err()
                .map(|e| field_error(n, &e))
        })
        .collect()
}

/// A blueprint's mounts with versions fixed now (`latest` → today's newest), for a
/// launch. Fails on the first dataset that cannot be found, naming it.
pub fn resolve_mounts(
    datasets: &[BlueprintDataset],
    lookup: &Lookup,
) -> Result<Vec<DatasetMount>, LookupError> {
    datasets
        .iter()
        .map(|d| {
            let spec = lookup.lookup(&d.name, d.version)?;
            Ok(DatasetMount {
                dataset: spec,
                path: d.path.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_shared::chunks::ChunkId;

    /// `course-data` has versions 1..=3 (latest 3); nothing else exists.
    pub(crate) fn catalogue() -> Lookup {
        Lookup::new(Arc::new(|name: &str, version: Option<u32>| {
            if name != "course-data" {
                return Err(LookupError::NoDataset(name.into()));
            }
            let v = version.unwrap_or(3);
            if !(1..=3).contains(&v) {
                return Err(LookupError::NoVersion {
                    name: name.into(),
                    version: v,
                });
            }
            Ok(DatasetSpec {
                name: name.into(),
                version: v,
                manifest: ChunkId([v as u8; 32]),
                bytes: u64::from(v) * 1000,
            })
        }))
    }

    fn mount(name: &str, version: Option<u32>, path: &str) -> BlueprintDataset {
        BlueprintDataset {
            name: name.into(),
            version,
            path: path.into(),
        }
    }

    #[test]
    fn latest_becomes_a_number_and_pins_stay() {
        let m = resolve_mounts(
            &[
                mount("course-data", None, "/data/now"),
                mount("course-data", Some(1), "/data/old"),
            ],
            &catalogue(),
        )
        .unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.dataset.version, m.path.as_str(), m.dataset.manifest))
                .collect::<Vec<_>>(),
            vec![
                (3, "/data/now", ChunkId([3; 32])),
                (1, "/data/old", ChunkId([1; 32]))
            ]
        );
        assert_eq!(resolve_mounts(&[], &Lookup::default()).unwrap(), vec![]);
    }

    #[test]
    fn missing_datasets_and_versions_are_named() {
        let list = [
            mount("course-data", Some(2), "/a"),
            mount("nope", None, "/b"),
            mount("course-data", Some(9), "/c"),
        ];
        let errs = check(&list, &catalogue());
        assert_eq!(
            errs.iter()
                .map(|e| (e.field.as_str(), e.message.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("datasets[1].name", "no dataset \"nope\""),
                (
                    "datasets[2].version",
                    "dataset \"course-data\" has no version 9"
                ),
            ]
        );
        assert_eq!(
            resolve_mounts(&list, &catalogue()).unwrap_err(),
            LookupError::NoDataset("nope".into())
        );
        // Without a catalogue nothing resolves, and the check says why.
        let errs = check(&list[..1], &Lookup::default());
        assert_eq!(errs[0].field, "datasets[0].name");
        assert!(errs[0].message.contains("keeps no datasets"), "{errs:?}");
    }
}
