//! What each host was last sent of its desired state, and the next update to send
//! it: the full set on a new connection or when the agent asks, else only the
//! instances that changed since (marked dirty), so a launch costs one instance's
//! work, not the whole host's. Pure bookkeeping; the manager sends the messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cairn_shared::ids::{HostId, InstanceId};
use cairn_shared::images::DesiredImages;
use cairn_shared::workload::{DesiredDatasets, DesiredInstance, DesiredUpdate};

use super::state::Instance;

#[derive(Debug, Default)]
struct HostSync {
    version: u64,
    sent: BTreeMap<InstanceId, DesiredInstance>,
    dirty: BTreeSet<InstanceId>,
    images_sent: Option<DesiredImages>,
    datasets_sent: Option<DesiredDatasets>,
}

/// Every host's sync state.
#[derive(Debug, Default)]
pub struct Syncs {
    hosts: HashMap<HostId, HostSync>,
}

impl Syncs {
    /// Marks an instance changed, for its host's next update.
    pub fn mark(&mut self, host: &HostId, id: &InstanceId) {
        self.hosts
            .entry(host.clone())
            .or_default()
            .dirty
            .insert(id.clone());
    }

    /// The host is not connected: its next connection starts with the full set.
    pub fn forget(&mut self, host: &HostId) {
        self.hosts.remove(host);
    }

    /// The next update for `host`, or `None` if nothing changed. `placed` is the
    /// host's instance index (ended instances leave it here); `desired` translates
    /// an instance; `images` and `datasets` are the host's pre-pull and pre-fetch
    /// sets, sent with every full update.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        host: &HostId,
        full: bool,
        placed: &mut BTreeSet<InstanceId>,
        all: &BTreeMap<InstanceId, Instance>,
        desired: impl Fn(&Instance) -> Option<DesiredInstance>,
        images: impl FnOnce() -> DesiredImages,
        datasets: impl FnOnce() -> DesiredDatasets,
    ) -> Option<DesiredUpdate> {
        let sync = self.hosts.entry(host.clone()).or_default();
        let full = full || sync.version == 0;
        let dirty = std::mem::take(&mut sync.dirty);
        let on_host = |i: &&Instance| i.host.as_ref() == Some(host) && i.state.desired_on_host();
        let mut upsert = vec![];
        let mut remove = vec![];
        if full {
            placed.retain(|id| {
                all.get(id)
                    .is_some_and(|i| !i.state.is_terminal() && i.host.as_ref() == Some(host))
            });
            let want: BTreeMap<InstanceId, DesiredInstance> = placed
                .iter()
                .filter_map(|id| all.get(id))
                .filter(on_host)
                .filter_map(|i| desired(i).map(|d| (i.id.clone(), d)))
                .collect();
            upsert = want.values().cloned().collect();
            sync.sent = want;
        } else {
            for id in dirty {
                match all.get(&id).filter(on_host).and_then(&desired) {
                    Some(d) => {
                        if sync.sent.get(&id) != Some(&d) {
                            sync.sent.insert(id, d.clone());
                            upsert.push(d);
                        }
                    }
                    None => {
                        if sync.sent.remove(&id).is_some() {
                            remove.push(id.clone());
                        }
                        if all.get(&id).is_none_or(|i| i.state.is_terminal()) {
                            placed.remove(&id);
                        }
                    }
                }
            }
            if upsert.is_empty() && remove.is_empty() {
                return None;
            }
        }
        sync.version += 1;
        let images = full.then(images);
        if images.is_some() {
            sync.images_sent = images.clone();
        }
        let datasets = full.then(datasets);
        if datasets.is_some() {
            sync.datasets_sent = datasets.clone();
        }
        Some(DesiredUpdate {
            version: sync.version,
            full,
            upsert,
            remove,
            images,
            datasets,
        })
    }

    /// Updates for every connected host whose pre-pull or pre-fetch set changed:
    /// each carries only the set that changed (`None` leaves the other as it is).
    pub fn prefetch_updates(
        &mut self,
        images: impl Fn(&HostId) -> DesiredImages,
        datasets: impl Fn(&HostId) -> DesiredDatasets,
    ) -> Vec<(HostId, DesiredUpdate)> {
        let mut out = vec![];
        for (host, sync) in self.hosts.iter_mut().filter(|(_, s)| s.version > 0) {
            let images = Some(images(host)).filter(|i| sync.images_sent.as_ref() != Some(i));
            let datasets = Some(datasets(host)).filter(|d| sync.datasets_sent.as_ref() != Some(d));
            if images.is_none() && datasets.is_none() {
                continue;
            }
            if let Some(i) = &images {
                tracing::info!(%host, images = i.prepull.len(), "sending the host's pre-pull set");
                sync.images_sent = Some(i.clone());
            }
            if let Some(d) = &datasets {
                tracing::info!(%host, datasets = d.prefetch.len(), "sending the host's dataset pre-fetch set");
                sync.datasets_sent = Some(d.clone());
            }
            sync.version += 1;
            out.push((
                host.clone(),
                DesiredUpdate {
                    version: sync.version,
                    full: false,
                    upsert: vec![],
                    remove: vec![],
                    images,
                    datasets,
                },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_shared::chunks::ChunkId;
    use cairn_shared::images::{ImageSource, ImageSpec};
    use cairn_shared::workload::DatasetSpec;

    fn images(refs: &[&str]) -> DesiredImages {
        DesiredImages {
            prepull: refs
                .iter()
                .map(|r| ImageSpec {
                    reference: r.to_string(),
                    source: ImageSource::Registry,
                })
                .collect(),
            credentials: vec![],
        }
    }

    fn datasets(versions: &[u32]) -> DesiredDatasets {
        DesiredDatasets {
            prefetch: versions
                .iter()
                .map(|&v| DatasetSpec {
                    name: "course-data".into(),
                    version: v,
                    manifest: ChunkId([v as u8; 32]),
                    bytes: 1,
                })
                .collect(),
        }
    }

    /// The full update carries both sets; later, only a set that changed travels,
    /// and the other stays `None` (which the agent reads as "keep it").
    #[test]
    fn each_prefetch_set_is_sent_in_full_updates_and_when_it_changes() {
        let host = HostId::generate();
        let mut s = Syncs::default();
        let all = BTreeMap::new();
        let mut placed = BTreeSet::new();
        let full = s
            .update(
                &host,
                true,
                &mut placed,
                &all,
                |_| None,
                || images(&["a"]),
                || datasets(&[1]),
            )
            .unwrap();
        assert!(full.full);
        assert_eq!(full.images, Some(images(&["a"])));
        assert_eq!(full.datasets, Some(datasets(&[1])));

        // Nothing changed: nothing to send.
        assert!(s
            .prefetch_updates(|_| images(&["a"]), |_| datasets(&[1]))
            .is_empty());
        // A new dataset version: a datasets-only update.
        let u = s.prefetch_updates(|_| images(&["a"]), |_| datasets(&[2]));
        assert_eq!(u.len(), 1);
        let (to, u) = &u[0];
        assert_eq!(to, &host);
        assert_eq!((u.version, u.full), (full.version + 1, false));
        assert_eq!(
            (u.images.as_ref(), u.datasets.as_ref()),
            (None, Some(&datasets(&[2])))
        );
        // A new image: an images-only update; the pre-fetch set is left alone.
        let u = s.prefetch_updates(|_| images(&["b"]), |_| datasets(&[2]));
        assert_eq!(
            (u[0].1.images.as_ref(), u[0].1.datasets.as_ref()),
            (Some(&images(&["b"])), None)
        );
        // A host never sent a full update gets nothing from here.
        s.forget(&host);
        assert!(s
            .prefetch_updates(|_| images(&["c"]), |_| datasets(&[3]))
            .is_empty());
    }
}
