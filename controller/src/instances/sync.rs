//! What each host was last sent of its desired state, and the next update to send
//! it: the full set on a new connection or when the agent asks, else only the
//! instances that changed since (marked dirty), so a launch costs one instance's
//! work, not the whole host's. Pure bookkeeping; the manager sends the messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cairn_shared::ids::{HostId, InstanceId};
use cairn_shared::images::DesiredImages;
use cairn_shared::workload::{DesiredInstance, DesiredUpdate};

use super::state::Instance;

#[derive(Debug, Default)]
struct HostSync {
    version: u64,
    sent: BTreeMap<InstanceId, DesiredInstance>,
    dirty: BTreeSet<InstanceId>,
    images_sent: Option<DesiredImages>,
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
    /// an instance; `images` is the host's image set, sent with every full update.
    pub fn update(
        &mut self,
        host: &HostId,
        full: bool,
        placed: &mut BTreeSet<InstanceId>,
        all: &BTreeMap<InstanceId, Instance>,
        desired: impl Fn(&Instance) -> Option<DesiredInstance>,
        images: impl FnOnce() -> DesiredImages,
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
        Some(DesiredUpdate {
            version: sync.version,
            full,
            upsert,
            remove,
            images,
            datasets: full.then(Default::default),
        })
    }

    /// Image-only updates for every connected host whose image set changed.
    pub fn image_updates(
        &mut self,
        want: impl Fn(&HostId) -> DesiredImages,
    ) -> Vec<(HostId, DesiredUpdate)> {
        let mut out = vec![];
        for (host, sync) in self.hosts.iter_mut().filter(|(_, s)| s.version > 0) {
            let images = want(host);
            if sync.images_sent.as_ref() == Some(&images) {
                continue;
            }
            tracing::info!(%host, images = images.prepull.len(), "sending the host's pre-pull set");
            sync.version += 1;
            sync.images_sent = Some(images.clone());
            out.push((
                host.clone(),
                DesiredUpdate {
                    version: sync.version,
                    full: false,
                    upsert: vec![],
                    remove: vec![],
                    images: Some(images),
                    datasets: Some(Default::default()),
                },
            ));
        }
        out
    }
}
