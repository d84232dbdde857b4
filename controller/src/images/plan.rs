//! Which images each host should hold before anyone launches: the pre-pull plan.
//!
//! Pure and deterministic: enabled blueprints (their resolved image, pre-pull policy
//! and placement labels) and the hosts (labels, standing, what they already hold) in,
//! one image set per host out. The instance manager sends each host its set as part
//! of the desired state and the agent pulls in the background, so a host is warm for
//! an image before the scheduler sends a launch there; the scheduler's image bonus
//! only counts what agents *report*, never what was merely asked for.

use std::collections::{BTreeMap, BTreeSet};

use cairn_shared::ids::HostId;
use cairn_shared::images::{ImageSource, ImageSpec};

use crate::blueprints::spec::Prepull;

/// What the plan needs of one blueprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedImage {
    pub blueprint: String,
    pub image: ImageSpec,
    pub prepull: Prepull,
    /// Labels a host must carry to run the blueprint: only such hosts pre-pull it.
    pub placement: BTreeMap<String, String>,
}

/// What the plan needs of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImages {
    pub id: HostId,
    pub labels: BTreeMap<String, String>,
    /// Takes new work: not draining, drained, removed or lost.
    pub eligible: bool,
    /// References and ids of the images the host reports.
    pub present: BTreeSet<String>,
}

/// The hosts a `prepull` policy picks among those that `fit`: all of them, none, or
/// `N`, hosts that already `hold` the thing first (no transfer, and no churn when the
/// plan is recomputed), then the least `load`ed so far, then by id for a stable,
/// repeatable choice. The one rule of both pre-pull (images) and pre-fetch
/// (datasets, [`crate::datasets::prefetch`]).
pub fn choose<'a, H>(
    prepull: Prepull,
    hosts: &'a [H],
    fits: impl Fn(&H) -> bool,
    holds: impl Fn(&H) -> bool,
    id: impl Fn(&H) -> &HostId,
    load: &BTreeMap<&HostId, usize>,
) -> Vec<&'a H> {
    let candidates = hosts.iter().filter(|h| fits(h));
    match prepull {
        Prepull::None => vec![],
        Prepull::All => candidates.collect(),
        Prepull::Hosts(n) => {
            let mut c: Vec<&H> = candidates.collect();
            c.sort_by(|a, b| {
                holds(b)
                    .cmp(&holds(a))
                    .then(load.get(id(a)).cmp(&load.get(id(b))))
                    .then(id(a).cmp(id(b)))
            });
            c.truncate(n as usize);
            c
        }
    }
}

/// Each eligible host's pre-pull set, in blueprint order without duplicates. Hosts
/// that get nothing are present with an empty set, so "stop keeping X" reaches them.
pub fn plan(wanted: &[WantedImage], hosts: &[HostImages]) -> BTreeMap<HostId, Vec<ImageSpec>> {
    let mut out: BTreeMap<HostId, Vec<ImageSpec>> =
        hosts.iter().map(|h| (h.id.clone(), vec![])).collect();
    // How many images each host was given so far, to share `N hosts` choices out.
    let mut load: BTreeMap<&HostId, usize> = BTreeMap::new();
    for w in wanted {
        if matches!(w.image.source, ImageSource::Host) || w.prepull == Prepull::None {
            continue;
        }
        let chosen = choose(
            w.prepull,
            hosts,
            |h| h.eligible && w.placement.iter().all(|(k, v)| h.labels.get(k) == Some(v)),
            |h| h.present.contains(&w.image.reference),
            |h| &h.id,
            &load,
        );
        for h in chosen {
            let set = out.entry(h.id.clone()).or_default();
            if !set.iter().any(|s| s.reference == w.image.reference) {
                set.push(w.image.clone());
                *load.entry(&h.id).or_default() += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn host(n: u32, labels: &[(&str, &str)], present: &[&str]) -> HostImages {
        HostImages {
            id: HostId::parse(&format!("h-{n:016x}")).unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            eligible: true,
            present: present.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn wanted(name: &str, reference: &str, prepull: Prepull) -> WantedImage {
        WantedImage {
            blueprint: name.into(),
            image: ImageSpec {
                reference: reference.into(),
                source: ImageSource::Registry,
            },
            prepull,
            placement: BTreeMap::new(),
        }
    }

    fn refs(p: &BTreeMap<HostId, Vec<ImageSpec>>, h: &HostImages) -> Vec<String> {
        p[&h.id].iter().map(|s| s.reference.clone()).collect()
    }

    #[test]
    fn all_goes_to_every_eligible_host_and_none_to_nobody() {
        let (a, b) = (host(1, &[], &[]), host(2, &[], &[]));
        let mut c = host(3, &[], &[]);
        c.eligible = false;
        let w = [
            wanted("py", "r/py@sha256:1", Prepull::All),
            wanted("r", "r/r@sha256:2", Prepull::None),
        ];
        let p = plan(&w, &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(refs(&p, &a), ["r/py@sha256:1"]);
        assert_eq!(refs(&p, &b), ["r/py@sha256:1"]);
        assert!(refs(&p, &c).is_empty(), "a draining host pulls nothing new");
    }

    #[test]
    fn placement_labels_limit_where_an_image_goes() {
        let gpu = host(1, &[("gpu", "true")], &[]);
        let cpu = host(2, &[], &[]);
        let mut w = wanted("cuda", "r/cuda@sha256:1", Prepull::All);
        w.placement.insert("gpu".into(), "true".into());
        let p = plan(&[w], &[gpu.clone(), cpu.clone()]);
        assert_eq!(refs(&p, &gpu), ["r/cuda@sha256:1"]);
        assert!(refs(&p, &cpu).is_empty());
    }

    #[test]
    fn n_hosts_prefers_hosts_that_have_it_then_spreads_the_load() {
        let hosts = [
            host(1, &[], &[]),
            host(2, &[], &[]),
            host(3, &[], &["r/b@sha256:2"]),
            host(4, &[], &[]),
        ];
        let w = [
            wanted("a", "r/a@sha256:1", Prepull::Hosts(2)),
            wanted("b", "r/b@sha256:2", Prepull::Hosts(2)),
        ];
        let p = plan(&w, &hosts);
        // a: nobody has it, lowest ids 1 and 2.
        assert_eq!(refs(&p, &hosts[0]), ["r/a@sha256:1"]);
        assert_eq!(refs(&p, &hosts[1]), ["r/a@sha256:1"]);
        // b: host 3 has it; the second goes to the least loaded, host 4.
        assert_eq!(refs(&p, &hosts[2]), ["r/b@sha256:2"]);
        assert_eq!(refs(&p, &hosts[3]), ["r/b@sha256:2"]);
        // The same input gives the same plan.
        assert_eq!(plan(&w, &hosts), p);
    }

    #[test]
    fn host_images_are_never_pulled_and_duplicates_collapse() {
        let h = host(1, &[], &[]);
        let mut local = wanted("local", "course:1", Prepull::All);
        local.image.source = ImageSource::Host;
        let w = [
            local,
            wanted("one", "r/x@sha256:1", Prepull::All),
            wanted("two", "r/x@sha256:1", Prepull::Hosts(1)),
        ];
        assert_eq!(
            refs(&plan(&w, std::slice::from_ref(&h)), &h),
            ["r/x@sha256:1"]
        );
    }
}
