//! The collector's inputs from the rest of the agent: the desired set (by source)
//! and containers created from an image, through [`GcHandle`]; and
//! [`DesiredImagesFeed`], which fills the desired set from the controller's updates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{DesiredUpdate, InstanceReport};
use futures::future::BoxFuture;
use tokio::sync::{watch, Notify};

use super::plan::{reference_matches, GcImage};
use super::usage::now_ms;
use crate::runtime::Workloads;

/// Notes of containers created since the last pass, kept at most; more than this
/// between two passes means the oldest are dropped, costing only precision.
const MAX_NOTES: usize = 1024;
/// Desired-set source: the controller's pre-pull set for this host.
pub const SOURCE_PREPULL: &str = "prepull";
/// Desired-set source: the images of the instances this host should run.
pub const SOURCE_INSTANCES: &str = "instances";

struct Shared {
    /// Desired references by source; replaced whole per source.
    desired: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Becomes true with the first desired set.
    known: watch::Sender<bool>,
    /// `(image reference or id, ms)` of containers created since the last pass.
    notes: Mutex<Vec<(String, u64)>>,
    /// References pulled or loaded by this agent since the last pass.
    brought: Mutex<Vec<String>>,
}

/// The collector's inputs from the rest of the agent; cheap to clone.
///
/// * The desired set: every component that wants images kept sets its own source
///   with [`GcHandle::set_desired`] — [`SOURCE_PREPULL`] for the controller's
///   pre-pull set, [`SOURCE_INSTANCES`] for the images of desired instances — and
///   replaces it whole on every change. The collector keeps the union. **Until the
///   first set arrives nothing is removed**: right after a start the agent does not
///   yet know which images the controller wants kept, like the supervisor, which
///   removes no container before the first desired state.
/// * Container creations: the runtime calls [`GcHandle::note_used`] with the image
///   reference (or id) when it creates a container, so an image whose container ran
///   only between two passes still counts as used.
#[derive(Clone)]
pub struct GcHandle(Arc<Shared>);

impl std::fmt::Debug for GcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcHandle").finish_non_exhaustive()
    }
}

impl Default for GcHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl GcHandle {
    pub fn new() -> Self {
        GcHandle(Arc::new(Shared {
            desired: Mutex::new(BTreeMap::new()),
            known: watch::Sender::new(false),
            notes: Mutex::new(vec![]),
            brought: Mutex::new(vec![]),
        }))
    }

    /// Replaces the references `source` wants kept: image ids (`sha256:…`), digest
    /// references (`REPO@sha256:…`) or names (`REPO[:TAG]`).
    pub fn set_desired<I, S>(&self, source: &str, references: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: BTreeSet<String> = references.into_iter().map(Into::into).collect();
        self.set_sources([(source, set)]);
    }

    /// Replaces several sources at once, so a pass never sees one updated without
    /// the other.
    fn set_sources<'a>(&self, sets: impl IntoIterator<Item = (&'a str, BTreeSet<String>)>) {
        {
            let mut all = self.0.desired.lock().unwrap_or_else(|p| p.into_inner());
            for (source, set) in sets {
                all.insert(source.to_owned(), set);
            }
        }
        self.0.known.send_replace(true);
    }

    /// The union of every source's references; `None` until one has been set.
    pub fn desired(&self) -> Option<BTreeSet<String>> {
        if !*self.0.known.borrow() {
            return None;
        }
        let all = self.0.desired.lock().unwrap_or_else(|p| p.into_inner());
        Some(all.values().flatten().cloned().collect())
    }

    /// Records that a container was just created from `image` (a reference or id).
    pub fn note_used(&self, image: &str) {
        self.note_used_at(image, now_ms());
    }

    pub(super) fn note_used_at(&self, image: &str, at_ms: u64) {
        let mut notes = self.0.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() >= MAX_NOTES {
            notes.remove(0);
        }
        notes.push((image.to_owned(), at_ms));
    }

    /// Records that this agent just pulled or loaded `reference`: from then on the
    /// image is one the collector may remove when nothing uses or wants it.
    pub fn note_brought(&self, reference: &str) {
        let mut b = self.0.brought.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_NOTES {
            b.remove(0);
        }
        b.push(reference.to_owned());
    }

    /// Changes when the first desired set arrives.
    pub(super) fn first_set_told(&self) -> watch::Receiver<bool> {
        self.0.known.subscribe()
    }

    pub(super) fn take_brought(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.brought.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn take_notes(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.0.notes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn is_desired(&self, img: &GcImage) -> bool {
        let all = self.0.desired.lock().unwrap_or_else(|p| p.into_inner());
        all.values().flatten().any(|r| reference_matches(img, r))
    }
}

/// Wraps the supervisor as the link sees it, and feeds the [`GcHandle`] the images
/// the controller wants: the pre-pull set ([`SOURCE_PREPULL`]) and the images of the
/// desired instances ([`SOURCE_INSTANCES`]). Updates pass through unchanged; only
/// updates the supervisor accepted are followed, so both stay on the same version.
pub struct DesiredImagesFeed {
    inner: Arc<dyn Workloads>,
    gc: GcHandle,
    instances: Mutex<BTreeMap<InstanceId, String>>,
}

impl std::fmt::Debug for DesiredImagesFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredImagesFeed").finish_non_exhaustive()
    }
}

impl DesiredImagesFeed {
    pub fn new(inner: Arc<dyn Workloads>, gc: GcHandle) -> Self {
        DesiredImagesFeed {
            inner,
            gc,
            instances: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Workloads for DesiredImagesFeed {
    fn apply(&self, update: DesiredUpdate) -> bool {
        let full = update.full;
        let remove = update.remove.clone();
        let upsert: Vec<(InstanceId, String)> = update
            .upsert
            .iter()
            .map(|d| (d.id.clone(), d.image.clone()))
            .collect();
        let prepull: Option<Vec<String>> = update
            .images
            .as_ref()
            .map(|i| i.prepull.iter().map(|s| s.reference.clone()).collect());
        if !self.inner.apply(update) {
            return false;
        }
        let images: BTreeSet<String> = {
            let mut map = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            if full {
                map.clear();
            }
            for id in &remove {
                map.remove(id);
            }
            map.extend(upsert);
            map.values().cloned().collect()
        };
        // A full update always carries the pre-pull set, so the first time the set
        // counts as known it holds both sources.
        let mut sets = vec![(SOURCE_INSTANCES, images)];
        if let Some(prepull) = prepull {
            sets.push((SOURCE_PREPULL, prepull.into_iter().collect()));
        }
        self.gc.set_sources(sets);
        true
    }

    fn snapshot(&self) -> Vec<InstanceReport> {
        self.inner.snapshot()
    }

    fn drain(&self) -> Vec<InstanceReport> {
        self.inner.drain()
    }

    fn changed(&self) -> &Notify {
        self.inner.changed()
    }

    fn logs(&self, instance: InstanceId, tail: u32) -> BoxFuture<'_, Result<String, String>> {
        self.inner.logs(instance, tail)
    }

    fn app_address(&self, instance: &InstanceId) -> Option<std::net::SocketAddr> {
        self.inner.app_address(instance)
    }

    fn isolation(&self) -> cairn_shared::resources::Isolation {
        self.inner.isolation()
    }

    fn launch_queue(&self) -> u32 {
        self.inner.launch_queue()
    }

    fn images(&self) -> Option<Arc<crate::images::pull::ImageManager>> {
        self.inner.images()
    }

    fn datasets(&self) -> Option<Arc<crate::datasets::DatasetCache>> {
        self.inner.datasets()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::gc::testing::*;

    #[test]
    fn handle_unions_sources_and_knows_when_it_has_been_told() {
        let h = GcHandle::new();
        assert_eq!(h.desired(), None);
        h.set_desired(SOURCE_PREPULL, ["a:1", "b:1"]);
        h.set_desired(SOURCE_INSTANCES, ["b:1", "c:1"]);
        assert_eq!(h.desired(), Some(set(&["a:1", "b:1", "c:1"])));
        h.set_desired(SOURCE_PREPULL, Vec::<String>::new());
        assert_eq!(h.desired(), Some(set(&["b:1", "c:1"])));
        for i in 0..MAX_NOTES + 5 {
            h.note_used_at(&format!("x:{i}"), i as u64);
        }
        let notes = h.take_notes();
        assert_eq!(notes.len(), MAX_NOTES);
        assert_eq!(notes[0].1, 5);
        assert!(h.take_notes().is_empty());
    }

    #[tokio::test]
    async fn the_feed_tracks_instances_and_prepull_from_accepted_updates() {
        use cairn_shared::images::{DesiredImages, ImageSource, ImageSpec};
        use cairn_shared::workload::{DesiredInstance, Probe};

        #[derive(Default)]
        struct Accept {
            version: Mutex<Option<u64>>,
            changed: Notify,
        }
        impl Workloads for Accept {
            fn apply(&self, u: DesiredUpdate) -> bool {
                let mut v = self.version.lock().unwrap();
                if !u.full && *v != Some(u.version - 1) {
                    return false;
                }
                *v = Some(u.version);
                true
            }
            fn snapshot(&self) -> Vec<InstanceReport> {
                vec![]
            }
            fn drain(&self) -> Vec<InstanceReport> {
                vec![]
            }
            fn changed(&self) -> &Notify {
                &self.changed
            }
            fn logs(&self, _: InstanceId, _: u32) -> BoxFuture<'_, Result<String, String>> {
                Box::pin(async { Ok(String::new()) })
            }
            fn app_address(&self, _: &InstanceId) -> Option<std::net::SocketAddr> {
                None
            }
            fn isolation(&self) -> cairn_shared::resources::Isolation {
                cairn_shared::resources::Isolation::Enforced
            }
        }

        let inst = |image: &str| DesiredInstance {
            id: InstanceId::generate(),
            owner: "u".into(),
            blueprint: "b".into(),
            revision: 1,
            image: image.into(),
            image_source: ImageSource::Host,
            command: None,
            env: vec![],
            memory_bytes: 1,
            nano_cpus: 1,
            app_port: 8888,
            probe: Probe::Tcp,
            start_timeout_ms: 1,
            expect_existing: false,
            datasets: vec![],
            volume: None,
        };
        let h = GcHandle::new();
        let feed = DesiredImagesFeed::new(Arc::new(Accept::default()), h.clone());
        let (one, two) = (inst("one:1"), inst("two:1"));
        let one_id = one.id.clone();
        assert!(feed.apply(DesiredUpdate {
            version: 1,
            full: true,
            upsert: vec![one, two],
            remove: vec![],
            datasets: None,
            images: Some(DesiredImages {
                prepull: vec![ImageSpec {
                    reference: "pre@sha256:ab".into(),
                    source: ImageSource::Registry,
                }],
                credentials: vec![],
            }),
        }));
        assert_eq!(h.desired(), Some(set(&["one:1", "two:1", "pre@sha256:ab"])));
        // A change: one instance gone, the pre-pull set untouched.
        assert!(feed.apply(DesiredUpdate {
            version: 2,
            full: false,
            upsert: vec![],
            remove: vec![one_id],
            images: None,
            datasets: None,
        }));
        assert_eq!(h.desired(), Some(set(&["two:1", "pre@sha256:ab"])));
        // A gap is refused by the supervisor, so the feed ignores it too.
        assert!(!feed.apply(DesiredUpdate {
            version: 9,
            full: false,
            upsert: vec![inst("three:1")],
            remove: vec![],
            images: None,
            datasets: None,
        }));
        assert_eq!(h.desired(), Some(set(&["two:1", "pre@sha256:ab"])));
    }
}
