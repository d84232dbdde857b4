//! Which dataset versions each host should hold before anyone launches: the
//! pre-fetch plan, the datasets' counterpart of the image pre-pull plan, choosing
//! hosts with the same rule ([`crate::images::plan::choose`]).
//!
//! Each enabled blueprint's datasets, resolved to their current versions (`latest`
//! is today's newest: that is what the next launch mounts), go to the hosts its
//! `prepull` policy names: `all` eligible hosts its placement labels allow, `none`,
//! or `N` of them, hosts already holding the version first, then the least loaded,
//! then by id, so recomputing the plan does not move data around. Pure and
//! deterministic ([`plan`]); [`DatasetPlan::compute`] gathers its inputs.

use std::collections::{BTreeMap, BTreeSet};

use cairn_shared::chunks::ChunkId;
use cairn_shared::ids::HostId;
use cairn_shared::workload::{DatasetSpec, DesiredDatasets, MAX_PREFETCH_DATASETS};

use super::lookup::{Lookup, LookupError};
use crate::blueprints::spec::Prepull;
use crate::blueprints::BlueprintRecord;
use crate::hosts::pool::Standing;
use crate::hosts::{HostState, HostView};

/// What the plan needs of one blueprint's dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedDataset {
    pub blueprint: String,
    pub dataset: DatasetSpec,
    pub prepull: Prepull,
    /// Labels a host must carry to run the blueprint: only such hosts fetch it.
    pub placement: BTreeMap<String, String>,
}

/// What the plan needs of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDatasets {
    pub id: HostId,
    pub labels: BTreeMap<String, String>,
    /// Takes new work: connected, active, open.
    pub eligible: bool,
    /// Manifests of the versions the host reports holding.
    pub present: BTreeSet<ChunkId>,
}

/// Each host's pre-fetch set, in blueprint order without duplicates, at most
/// [`MAX_PREFETCH_DATASETS`] (the link's bound; what is left out is fetched at its
/// first launch). Every host is present, with an empty set if it gets nothing, so
/// "stop keeping X" reaches it.
pub fn plan(
    wanted: &[WantedDataset],
    hosts: &[HostDatasets],
) -> BTreeMap<HostId, Vec<DatasetSpec>> {
    let mut out: BTreeMap<HostId, Vec<DatasetSpec>> =
        hosts.iter().map(|h| (h.id.clone(), vec![])).collect();
    let mut load: BTreeMap<&HostId, usize> = BTreeMap::new();
    for w in wanted {
        if w.prepull == Prepull::None {
            continue;
        }
        let m = &w.dataset.manifest;
        let chosen = crate::images::plan::choose(
            w.prepull,
            hosts,
            |h| h.eligible && w.placement.iter().all(|(k, v)| h.labels.get(k) == Some(v)),
            |h| h.present.contains(m),
            |h| &h.id,
            &load,
        );
        for h in chosen {
            let set = out.entry(h.id.clone()).or_default();
            if set.len() >= MAX_PREFETCH_DATASETS {
                continue;
            }
            if !set.iter().any(|s| s.manifest == w.dataset.manifest) {
                set.push(w.dataset.clone());
                *load.entry(&h.id).or_default() += 1;
            }
        }
    }
    out
}

/// The plan last computed.
#[derive(Debug, Default, Clone)]
pub struct DatasetPlan {
    pub per_host: BTreeMap<HostId, Vec<DatasetSpec>>,
}

impl DatasetPlan {
    /// Computes the plan for `hosts` from the enabled `blueprints`, their datasets
    /// looked up now. A dataset that cannot be found is left out (and logged): the
    /// blueprint's launches will say why.
    pub fn compute(blueprints: &[BlueprintRecord], hosts: &[HostView], lookup: &Lookup) -> Self {
        let mut wanted = vec![];
        // Blueprints often share a dataset: each version is looked up once per plan.
        let mut seen: BTreeMap<(&str, Option<u32>), Result<DatasetSpec, LookupError>> =
            BTreeMap::new();
        for b in blueprints.iter().filter(|b| b.spec.enabled) {
            for d in &b.spec.datasets {
                let found = seen
                    .entry((d.name.as_str(), d.version))
                    .or_insert_with(|| lookup.lookup(&d.name, d.version))
                    .clone();
                match found {
                    Ok(dataset) => wanted.push(WantedDataset {
                        blueprint: b.spec.name.clone(),
                        dataset,
                        prepull: b.spec.prepull,
                        placement: b.spec.placement.clone(),
                    }),
                    Err(e) => {
                        tracing::warn!(blueprint = %b.spec.name, dataset = %d.reference(), error = %e, "cannot pre-fetch a blueprint's dataset")
                    }
                }
            }
        }
        let views: Vec<HostDatasets> = hosts
            .iter()
            .filter(|h| h.pool.standing != Standing::Removed)
            .map(|h| HostDatasets {
                id: h.id.clone(),
                labels: h.labels.clone(),
                eligible: h.connected && h.state == HostState::Active && h.pool.open(),
                present: h
                    .datasets
                    .iter()
                    .filter_map(|m| ChunkId::from_hex(m))
                    .collect(),
            })
            .collect();
        DatasetPlan {
            per_host: plan(&wanted, &views),
        }
    }

    /// What `host` should hold.
    pub fn for_host(&self, host: &HostId) -> DesiredDatasets {
        DesiredDatasets {
            prefetch: self.per_host.get(host).cloned().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn host(n: u32, labels: &[(&str, &str)], present: &[u8]) -> HostDatasets {
        HostDatasets {
            id: HostId::parse(&format!("h-{n:016x}")).unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            eligible: true,
            present: present.iter().map(|m| ChunkId([*m; 32])).collect(),
        }
    }

    fn wanted(blueprint: &str, m: u8, prepull: Prepull) -> WantedDataset {
        WantedDataset {
            blueprint: blueprint.into(),
            dataset: DatasetSpec {
                name: format!("d{m}"),
                version: 1,
                manifest: ChunkId([m; 32]),
                bytes: 10,
            },
            prepull,
            placement: BTreeMap::new(),
        }
    }

    fn names(p: &BTreeMap<HostId, Vec<DatasetSpec>>, h: &HostDatasets) -> Vec<String> {
        p[&h.id].iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn all_goes_to_every_eligible_host_and_none_to_nobody() {
        let (a, b) = (host(1, &[], &[]), host(2, &[], &[]));
        let mut c = host(3, &[], &[]);
        c.eligible = false;
        let w = [wanted("py", 1, Prepull::All), wanted("r", 2, Prepull::None)];
        let p = plan(&w, &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(names(&p, &a), ["d1"]);
        assert_eq!(names(&p, &b), ["d1"]);
        assert!(
            names(&p, &c).is_empty(),
            "a draining host fetches nothing new"
        );
    }

    #[test]
    fn placement_labels_limit_where_a_dataset_goes() {
        let gpu = host(1, &[("gpu", "true")], &[]);
        let cpu = host(2, &[], &[]);
        let mut w = wanted("cuda", 1, Prepull::All);
        w.placement.insert("gpu".into(), "true".into());
        let p = plan(&[w], &[gpu.clone(), cpu.clone()]);
        assert_eq!(names(&p, &gpu), ["d1"]);
        assert!(names(&p, &cpu).is_empty());
    }

    #[test]
    fn n_hosts_prefers_hosts_that_hold_it_then_spreads_the_load() {
        let hosts = [
            host(1, &[], &[]),
            host(2, &[], &[]),
            host(3, &[], &[2]),
            host(4, &[], &[]),
        ];
        let w = [
            wanted("a", 1, Prepull::Hosts(2)),
            wanted("b", 2, Prepull::Hosts(2)),
        ];
        let p = plan(&w, &hosts);
        assert_eq!(names(&p, &hosts[0]), ["d1"]);
        assert_eq!(names(&p, &hosts[1]), ["d1"]);
        assert_eq!(names(&p, &hosts[2]), ["d2"], "it already holds d2");
        assert_eq!(names(&p, &hosts[3]), ["d2"], "the least loaded");
        assert_eq!(plan(&w, &hosts), p, "deterministic");
    }

    #[test]
    fn duplicates_collapse_and_the_set_is_bounded() {
        let h = host(1, &[], &[]);
        let w = [
            wanted("one", 1, Prepull::All),
            wanted("two", 1, Prepull::Hosts(1)),
        ];
        assert_eq!(names(&plan(&w, std::slice::from_ref(&h)), &h), ["d1"]);
        let many: Vec<WantedDataset> = (0..=MAX_PREFETCH_DATASETS)
            .map(|n| {
                let mut w = wanted("x", 0, Prepull::All);
                w.dataset.manifest = ChunkId::of(&n.to_le_bytes());
                w
            })
            .collect();
        assert_eq!(
            plan(&many, std::slice::from_ref(&h))[&h.id].len(),
            MAX_PREFETCH_DATASETS
        );
    }

    #[test]
    fn compute_resolves_latest_and_skips_disabled_and_missing() {
        use crate::blueprints::spec::{validate, BlueprintInput, DatasetInput};
        let bp = |name: &str, dataset: &str, enabled: bool| {
            let mut spec = validate(&BlueprintInput {
                name: Some(name.into()),
                image: Some("img:1".into()),
                app: Some("jupyter".into()),
                memory_mib: Some(512),
                datasets: Some(vec![DatasetInput {
                    name: Some(dataset.into()),
                    version: None,
                    path: Some("/data".into()),
                }]),
                ..Default::default()
            })
            .unwrap();
            spec.enabled = enabled;
            BlueprintRecord {
                revision: 1,
                created_ms: 0,
                updated_ms: 0,
                spec,
            }
        };
        let mut r = crate::hosts::HostRecord::new(HostId::generate(), "h".into(), "t".into(), 0, 0);
        r.liveness.connected = true;
        r.liveness.state = HostState::Active;
        let view = HostView::from(&r);
        let p = DatasetPlan::compute(
            &[
                bp("py", "course-data", true),
                bp("off", "course-data", false),
                bp("gone", "nope", true),
            ],
            std::slice::from_ref(&view),
            &super::super::lookup::tests::catalogue(),
        );
        let set = p.for_host(&view.id).prefetch;
        assert_eq!(
            set.iter()
                .map(|d| (d.name.as_str(), d.version))
                .collect::<Vec<_>>(),
            vec![("course-data", 3)]
        );
        assert!(p.for_host(&HostId::generate()).prefetch.is_empty());
    }
}
