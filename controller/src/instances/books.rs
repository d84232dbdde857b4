//! The scheduler's books: reservations and the launch queue (kept by the pure
//! [`Scheduler`] core), which unfinished instances sit on each host, and how many
//! each owner runs. [`Books::settle`] keeps them in step with every transition, so
//! limits and desired-state syncs never scan every instance.

use std::collections::{BTreeSet, HashMap};

use cairn_shared::chunks::ChunkId;
use cairn_shared::ids::{HostId, InstanceId};

use super::state::{Instance, InstanceState};
use crate::blueprints::spec::BlueprintSpec;
use crate::hosts::{HostState, HostView};
use crate::scheduler::{DataLocality, DatasetNeed, HostSnapshot, Request, Resources, Scheduler};

const MIB: u64 = 1024 * 1024;

/// Unfinished instances per owner and per (owner, blueprint).
#[derive(Debug, Default)]
pub struct Live {
    by_owner: HashMap<String, u32>,
    by_blueprint: HashMap<(String, String), u32>,
}

impl Live {
    pub fn add(&mut self, i: &Instance) {
        *self.by_owner.entry(i.owner.clone()).or_default() += 1;
        *self
            .by_blueprint
            .entry((i.owner.clone(), i.blueprint.clone()))
            .or_default() += 1;
    }

    fn remove(&mut self, i: &Instance) {
        if let Some(n) = self.by_owner.get_mut(&i.owner) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self
            .by_blueprint
            .get_mut(&(i.owner.clone(), i.blueprint.clone()))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// (all of the owner's, the owner's of this blueprint).
    pub fn of(&self, owner: &str, blueprint: &str) -> (u32, u32) {
        (
            self.by_owner.get(owner).copied().unwrap_or(0),
            self.by_blueprint
                .get(&(owner.to_string(), blueprint.to_string()))
                .copied()
                .unwrap_or(0),
        )
    }
}

#[derive(Debug)]
pub struct Books {
    pub sched: Scheduler,
    /// The scheduler's reservations are rebuilt from the instances on the first
    /// pass after a start, once host snapshots are known.
    pub primed: bool,
    /// Instances placed on each host (pruned as they end).
    pub by_host: HashMap<HostId, BTreeSet<InstanceId>>,
    pub live: Live,
}

impl Default for Books {
    fn default() -> Self {
        Books {
            // Hosts holding the datasets a launch mounts are preferred.
            sched: Scheduler::default().with_bonus(Box::new(DataLocality)),
            primed: false,
            by_host: HashMap::new(),
            live: Live::default(),
        }
    }
}

impl Books {
    /// The books of the instances loaded at start (reservations come later, when
    /// the scheduler is primed).
    pub fn of<'a>(all: impl Iterator<Item = &'a Instance>) -> Self {
        let mut b = Books::default();
        for i in all.filter(|i| !i.state.is_terminal()) {
            b.live.add(i);
            if let Some(h) = &i.host {
                b.by_host.entry(h.clone()).or_default().insert(i.id.clone());
            }
        }
        b
    }

    /// Records that `id` now sits on `host`.
    pub fn placed(&mut self, host: &HostId, id: &InstanceId) {
        self.by_host
            .entry(host.clone())
            .or_default()
            .insert(id.clone());
    }

    /// Keeps the books in step with one instance's transition from `was`.
    pub fn settle(&mut self, i: &Instance, was: InstanceState) {
        if !was.is_terminal() && i.state.is_terminal() {
            self.live.remove(i);
        }
        let left_host = was.holds_host() && !i.state.holds_host();
        let left_queue = was == InstanceState::Queued && i.state != InstanceState::Queued;
        if left_host || (left_queue && !i.state.holds_host()) {
            self.sched.release(&i.id);
        } else if launching(was) && !launching(i.state) {
            // Running (or unreachable) on its host: no longer in the host's queue.
            self.sched.started(&i.id);
        }
    }
}

/// Placed but not started yet: what the scheduler counts as a host's queue.
fn launching(s: InstanceState) -> bool {
    matches!(
        s,
        InstanceState::Scheduled | InstanceState::Preparing | InstanceState::Starting
    )
}

/// The scheduler's request for an instance of `spec`.
pub fn request_of(i: &Instance, spec: &BlueprintSpec) -> Request {
    Request {
        instance: i.id.clone(),
        resources: Resources::new(spec.memory_mib * MIB, (spec.cpus * 1000.0).round() as u64),
        labels: spec.placement.clone(),
        image: spec.run_image().to_string(),
        strategy: spec.strategy,
        priority: spec.priority,
        datasets: i
            .datasets
            .iter()
            .map(|m| DatasetNeed {
                manifest: m.dataset.manifest,
                bytes: m.dataset.bytes,
            })
            .collect(),
    }
}

/// The scheduler's view of a host from the registry.
pub fn snapshot(h: &HostView) -> HostSnapshot {
    HostSnapshot {
        id: h.id.clone(),
        pool: h
            .labels
            .get("pool")
            .cloned()
            .unwrap_or_else(|| "default".into()),
        schedulable: h.state == HostState::Active
            && h.connected
            && h.capacity.is_some()
            && h.pool.open(),
        capacity: h
            .capacity
            .as_ref()
            .map(|c| Resources::new(c.memory_total_bytes, u64::from(c.cpus) * 1000))
            .unwrap_or_default(),
        labels: h.labels.clone(),
        images: super::prepull::present_images(h),
        recent_failures: h.pool.consecutive_failures,
        isolated: h.isolation.is_enforced(),
        datasets: h
            .datasets
            .iter()
            .filter_map(|m| ChunkId::from_hex(m))
            .collect(),
        launch_queue: h.launch_queue,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::blueprints::spec::{validate, BlueprintInput};
    use crate::instances::state::AppSecrets;
    use crate::scheduler::Outcome;

    /// A 1 GiB blueprint of the given priority (`None`: left out, so the default).
    fn blueprint(name: &str, priority: Option<i64>) -> BlueprintSpec {
        validate(&BlueprintInput {
            name: Some(name.into()),
            image: Some("img:1".into()),
            app: Some("jupyter".into()),
            memory_mib: Some(1024),
            priority,
            ..Default::default()
        })
        .unwrap()
    }

    fn launch(spec: &BlueprintSpec, now_ms: u64) -> Instance {
        Instance::new(
            InstanceId::generate(),
            "alice".into(),
            spec.name.clone(),
            1,
            3_600_000,
            AppSecrets::default(),
            now_ms,
        )
    }

    /// Room for one such instance.
    fn one_slot_host() -> HostSnapshot {
        HostSnapshot {
            id: HostId::parse("h-0000000000000001").unwrap(),
            pool: "default".into(),
            schedulable: true,
            isolated: true,
            capacity: Resources::new(1024 * MIB, 2000),
            labels: BTreeMap::new(),
            images: BTreeSet::new(),
            recent_failures: 0,
            datasets: BTreeSet::new(),
            launch_queue: 0,
        }
    }

    /// The blueprint's priority reaches the queue: when room appears, a waiting
    /// launch of a higher-priority blueprint is placed before an older one of a
    /// lower priority, which keeps waiting at the head of what is left.
    #[test]
    fn a_higher_priority_blueprint_is_placed_first_when_room_appears() {
        let course = blueprint("course", None);
        let exam = blueprint("exam", Some(50));
        assert_eq!((course.priority, exam.priority), (0, 50));
        let mut s = Scheduler::default();
        let host = one_slot_host();
        s.upsert_host(host.clone());

        let running = launch(&course, 0);
        assert_eq!(
            s.submit(request_of(&running, &course)),
            Outcome::Placed(host.id.clone())
        );
        let older = launch(&course, 1);
        assert_eq!(
            s.submit(request_of(&older, &course)),
            Outcome::Queued { position: 1 }
        );
        let urgent = launch(&exam, 2);
        assert_eq!(
            s.submit(request_of(&urgent, &exam)),
            Outcome::Queued { position: 1 },
            "queued ahead of the older launch, but not placed: no preemption"
        );
        assert_eq!(s.placement(&running.id), Some(&host.id));

        s.release(&running.id);
        assert_eq!(s.drain(), vec![(urgent.id.clone(), host.id.clone())]);
        assert_eq!(s.position(&older.id), Some(1));
    }

    /// What a heartbeat said the host holds reaches the scheduler, and a launch's
    /// mounts reach its request, so the data-locality bonus can match them.
    #[test]
    fn held_datasets_and_mounts_reach_the_scheduler() {
        let mut r = crate::hosts::HostRecord::new(HostId::generate(), "h".into(), "t".into(), 0, 0);
        r.datasets = vec![ChunkId([7; 32]), ChunkId([8; 32])];
        let view = HostView::from(&r);
        assert_eq!(view.datasets, vec!["07".repeat(32), "08".repeat(32)]);
        assert_eq!(
            snapshot(&view).datasets,
            [ChunkId([7; 32]), ChunkId([8; 32])].into_iter().collect()
        );
        let spec = blueprint("course", None);
        let mut i = launch(&spec, 0);
        i.datasets = vec![cairn_shared::workload::DatasetMount {
            dataset: cairn_shared::workload::DatasetSpec {
                name: "course-data".into(),
                version: 2,
                manifest: ChunkId([7; 32]),
                bytes: 5,
            },
            path: "/data".into(),
        }];
        assert_eq!(
            request_of(&i, &spec).datasets,
            vec![DatasetNeed {
                manifest: ChunkId([7; 32]),
                bytes: 5
            }]
        );
    }
}
