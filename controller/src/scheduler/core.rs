//! The placement core: filter, score, reserve, queue. No I/O and no clock — it is fed
//! host snapshots, requests and releases, and answers with decisions, so the same
//! inputs always give the same placements.
//!
//! * **Filter**: the host is schedulable (active, connected, not draining or
//!   quarantined); it fences instances in, unless its pool allows unisolated hosts;
//!   its *reserved* memory and CPU plus the request stay within its capacity times
//!   the pool's over-commit ratio; it has every label the request asks for; it is
//!   under its instance cap.
//! * **Score**: bin-pack (fill busy hosts so idle ones can be removed) or spread;
//!   a bonus when the host already has the image; whatever the [`Bonus`] extension
//!   adds ([`DataLocality`]: the dataset versions the request mounts that the host
//!   already holds); a penalty per recent launch failure, and one per launch
//!   waiting in the host's queue for container operations (bounded, see
//!   [`queue_penalty`]), so a burst spills onto hosts that are not busy. The queue
//!   is the longer of what the host last reported and what the scheduler knows it
//!   sent there itself: launches placed on the host that have not started yet,
//!   beyond the [`HOST_SLOTS`] the host works on at once. A burst placed within a
//!   second, before any heartbeat, is steered too. Ties go to the lowest host id.
//!   Scores only rank hosts that passed the filter: no bonus makes a host fit.
//! * **Queue**: a request that fits nowhere waits, by priority then arrival. Every
//!   [`Scheduler::drain`] walks the queue in that order and places what fits
//!   (smaller requests may pass a big one that fits nowhere yet, so one large
//!   request cannot stall everyone); the [`Scheduler::shortfall`] of what waits
//!   tells the autoscaler how much capacity is missing, per pool.
//!
//! Reservations are taken at placement, before any host reports usage, so two
//! launches decided back to back never overbook a host.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cairn_shared::chunks::ChunkId;
use cairn_shared::ids::{HostId, InstanceId};

/// Memory in bytes and CPU in thousandths of a core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory: u64,
    pub millicpus: u64,
}

impl Resources {
    pub fn new(memory: u64, millicpus: u64) -> Self {
        Resources { memory, millicpus }
    }
    fn add(self, o: Resources) -> Resources {
        Resources {
            memory: self.memory.saturating_add(o.memory),
            millicpus: self.millicpus.saturating_add(o.millicpus),
        }
    }
    fn sub(self, o: Resources) -> Resources {
        Resources {
            memory: self.memory.saturating_sub(o.memory),
            millicpus: self.millicpus.saturating_sub(o.millicpus),
        }
    }
}

/// How a pool prefers to place: the API model's type, since blueprints name it.
pub use cairn_api::blueprints::Strategy;

/// Placement rules of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Reservable memory is capacity × this (1.0 = no over-commit).
    pub memory_overcommit: f64,
    /// Reservable CPU is capacity × this.
    pub cpu_overcommit: f64,
    pub strategy: Strategy,
    /// Most instances on one host; 0 = no limit.
    pub max_instances_per_host: u32,
    /// Place instances on hosts whose isolation failed or is not known yet.
    pub allow_unisolated: bool,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            memory_overcommit: 1.0,
            cpu_overcommit: 1.0,
            strategy: Strategy::Binpack,
            max_instances_per_host: 0,
            allow_unisolated: false,
        }
    }
}

/// What the scheduler needs to know about a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSnapshot {
    pub id: HostId,
    pub pool: String,
    /// Active, connected, neither draining nor quarantined.
    pub schedulable: bool,
    /// The agent reported its instances fenced off from the host.
    pub isolated: bool,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    /// Images present on the host (tags and digests).
    pub images: BTreeSet<String>,
    /// Launch failures in the recent past, for the score penalty.
    pub recent_failures: u32,
    /// Dataset versions (their manifests) the host holds ready, as it reported.
    pub datasets: BTreeSet<ChunkId>,
    /// Launches waiting in the host's queue for container operations, as it last
    /// reported, for the busy-host penalty.
    pub launch_queue: u32,
}

/// A dataset version a request mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetNeed {
    pub manifest: ChunkId,
    /// Bytes of its files: what a host without it has to fetch.
    pub bytes: u64,
}

/// A request to place one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub instance: InstanceId,
    pub resources: Resources,
    /// Labels the host must have.
    pub labels: BTreeMap<String, String>,
    pub image: String,
    /// Overrides the pool's strategy (a blueprint may ask to spread).
    pub strategy: Option<Strategy>,
    /// Higher goes first in the queue; the blueprint's, -100 to 100, default 0.
    /// Never preempts: a placed request keeps its room.
    pub priority: i8,
    /// Dataset versions the instance mounts, for the data-locality bonus.
    pub datasets: Vec<DatasetNeed>,
}

/// Extra score for a host, for what the core does not know about (cached datasets,
/// the user's chunks). Deterministic implementations only.
pub trait Bonus: Send + Sync {
    fn bonus(&self, request: &Request, host: &HostSnapshot) -> i64;
}

/// No extra score.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBonus;

impl Bonus for NoBonus {
    fn bonus(&self, _: &Request, _: &HostSnapshot) -> i64 {
        0
    }
}

/// Score weights; a full host scores [`FIT_SCALE`] for bin-packing.
pub const FIT_SCALE: i64 = 1000;
pub const IMAGE_BONUS: i64 = 200;
pub const FAILURE_PENALTY: i64 = 150;
/// The most [`DataLocality`] adds: a host holding every dataset a request mounts.
pub const DATASET_BONUS: i64 = 2 * IMAGE_BONUS;
/// Container operations a host works on at once before launches queue there: the
/// agent's default `--container-slots`.
pub const HOST_SLOTS: u32 = cairn_shared::workload::DEFAULT_CONTAINER_SLOTS;
/// Per launch waiting in a host's queue …
pub const QUEUE_PENALTY: i64 = 25;
/// … up to this much: a queue weighs at most like a full host's fill, so a busy
/// host still takes launches no other host fits (the penalty ranks, never filters).
pub const MAX_QUEUE_PENALTY: i64 = FIT_SCALE;

/// The score a host loses for the launches waiting in its queue: each one means
/// a new launch there waits longer before its container is even created. Each
/// weighs [`QUEUE_PENALTY`] plus `step`, the fill one more such launch adds to the
/// host: otherwise bin-packing, which gains `step` with every launch it piles on,
/// would keep a whole burst on one host when requests are large for their hosts.
/// So a host whose queue is longer than another's by one loses more than one
/// launch's worth of packing, and a burst alternates between hosts once queues
/// form; without a queue, nothing changes.
pub fn queue_penalty(waiting: u32, step: i64) -> i64 {
    QUEUE_PENALTY
        .saturating_add(step.max(0))
        .saturating_mul(i64::from(waiting))
        .min(MAX_QUEUE_PENALTY)
}

/// The data-locality bonus: a host that already holds the dataset versions a request
/// mounts saves fetching them, so it scores up to [`DATASET_BONUS`], in proportion
/// to the bytes it would not fetch (a host holding the 10 GiB set of two beats one
/// holding the 1 KiB one). Counts only what hosts *report* holding. Bounded, so
/// it weighs like an image and a half at most: it breaks near-ties and prefers warm
/// hosts, but a failing host's penalty or the strategy's fill still count.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataLocality;

impl Bonus for DataLocality {
    fn bonus(&self, request: &Request, host: &HostSnapshot) -> i64 {
        if request.datasets.is_empty() || host.datasets.is_empty() {
            return 0;
        }
        // Every version weighs at least one byte, so empty datasets still count.
        let weight = |d: &DatasetNeed| u128::from(d.bytes.max(1));
        let total: u128 = request.datasets.iter().map(weight).sum();
        let held: u128 = request
            .datasets
            .iter()
            .filter(|d| host.datasets.contains(&d.manifest))
            .map(weight)
            .sum();
        // u128: a sum of u64 byte counts cannot overflow; the result is at most
        // DATASET_BONUS.
        (held * DATASET_BONUS as u128 / total) as i64
    }
}

/// The answer to a submitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Placed(HostId),
    /// Waiting; `position` counts from 1.
    Queued {
        position: usize,
    },
}

/// Capacity the queue is waiting for, per pool, for the autoscaler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shortfall {
    pub waiting: usize,
    pub resources: Resources,
}

#[derive(Debug, Clone)]
struct HostEntry {
    snap: HostSnapshot,
    reserved: Resources,
    instances: u32,
    /// Placements on the host that have not started yet (see [`Scheduler::started`]).
    launching: u32,
}

impl HostEntry {
    /// The host's launch queue as the scheduler reckons it: what the host said in
    /// its last heartbeat, or what was sent there since beyond its slots, whichever
    /// is longer (a heartbeat lags a burst by seconds).
    fn queue(&self) -> u32 {
        self.snap
            .launch_queue
            .max(self.launching.saturating_sub(HOST_SLOTS))
    }
}

/// A placement: where, how much, and whether its launch is still under way.
#[derive(Debug, Clone)]
struct Placement {
    host: HostId,
    resources: Resources,
    launching: bool,
}

/// The scheduler's whole state.
pub struct Scheduler {
    hosts: BTreeMap<HostId, HostEntry>,
    placed: HashMap<InstanceId, Placement>,
    /// Waiting requests by (priority descending, arrival).
    queue: BTreeMap<(std::cmp::Reverse<i8>, u64), Request>,
    queued: HashMap<InstanceId, (std::cmp::Reverse<i8>, u64)>,
    seq: u64,
    pools: HashMap<String, PoolPolicy>,
    default_policy: PoolPolicy,
    bonus: Box<dyn Bonus>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("hosts", &self.hosts.len())
            .field("placed", &self.placed.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(PoolPolicy::default())
    }
}

impl Scheduler {
    pub fn new(default_policy: PoolPolicy) -> Self {
        Scheduler {
            hosts: BTreeMap::new(),
            placed: HashMap::new(),
            queue: BTreeMap::new(),
            queued: HashMap::new(),
            seq: 0,
            pools: HashMap::new(),
            default_policy,
            bonus: Box::new(NoBonus),
        }
    }

    pub fn with_bonus(mut self, bonus: Box<dyn Bonus>) -> Self {
        self.bonus = bonus;
        self
    }

    pub fn set_pool_policy(&mut self, pool: &str, policy: PoolPolicy) {
        self.pools.insert(pool.to_string(), policy);
    }

    fn policy(&self, pool: &str) -> &PoolPolicy {
        self.pools.get(pool).unwrap_or(&self.default_policy)
    }

    /// Adds or refreshes a host. Its reservations are kept.
    pub fn upsert_host(&mut self, snap: HostSnapshot) {
        match self.hosts.get_mut(&snap.id) {
            Some(e) => e.snap = snap,
            None => {
                // Placements restored before the host was known count from now on.
                let (mut reserved, mut instances, mut launching) = (Resources::default(), 0, 0);
                for p in self.placed.values() {
                    if p.host == snap.id {
                        reserved = reserved.add(p.resources);
                        instances += 1;
                        launching += u32::from(p.launching);
                    }
                }
                self.hosts.insert(
                    snap.id.clone(),
                    HostEntry {
                        snap,
                        reserved,
                        instances,
                        launching,
                    },
                );
            }
        }
    }

    /// Forgets a host; its reservations go with it.
    pub fn remove_host(&mut self, id: &HostId) {
        self.hosts.remove(id);
        self.placed.retain(|_, p| p.host != *id);
    }

    pub fn host_ids(&self) -> impl Iterator<Item = &HostId> {
        self.hosts.keys()
    }

    /// Records a placement made earlier (a restarted controller rebuilding its view);
    /// it counts as started: the host's own report says what still waits.
    pub fn restore(&mut self, instance: InstanceId, host: &HostId, resources: Resources) {
        self.release(&instance);
        if let Some(e) = self.hosts.get_mut(host) {
            e.reserved = e.reserved.add(resources);
            e.instances += 1;
        }
        self.placed.insert(
            instance,
            Placement {
                host: host.clone(),
                resources,
                launching: false,
            },
        );
    }

    /// The instance's launch is over (it runs): it no longer counts towards its
    /// host's queue. Its reservation stays.
    pub fn started(&mut self, instance: &InstanceId) {
        if let Some(p) = self.placed.get_mut(instance) {
            if std::mem::take(&mut p.launching) {
                if let Some(e) = self.hosts.get_mut(&p.host) {
                    e.launching = e.launching.saturating_sub(1);
                }
            }
        }
    }

    /// Frees an instance's reservation, or takes it out of the queue.
    pub fn release(&mut self, instance: &InstanceId) {
        if let Some(p) = self.placed.remove(instance) {
            if let Some(e) = self.hosts.get_mut(&p.host) {
                e.reserved = e.reserved.sub(p.resources);
                e.instances = e.instances.saturating_sub(1);
                e.launching = e.launching.saturating_sub(u32::from(p.launching));
            }
        }
        if let Some(key) = self.queued.remove(instance) {
            self.queue.remove(&key);
        }
    }

    /// Where an instance holds a reservation.
    pub fn placement(&self, instance: &InstanceId) -> Option<&HostId> {
        self.placed.get(instance).map(|p| &p.host)
    }

    /// Reserved resources and instance count of a host.
    pub fn reserved(&self, host: &HostId) -> Option<(Resources, u32)> {
        self.hosts.get(host).map(|e| (e.reserved, e.instances))
    }

    /// Places the request now if it fits and nothing of its priority or higher waits;
    /// otherwise queues it.
    pub fn submit(&mut self, req: Request) -> Outcome {
        self.release(&req.instance);
        let blocked = self
            .queue
            .keys()
            .next()
            .is_some_and(|(std::cmp::Reverse(p), _)| *p >= req.priority);
        if !blocked {
            if let Some(h) = self.choose(&req) {
                self.reserve(&req, &h);
                return Outcome::Placed(h);
            }
        }
        self.seq += 1;
        let key = (std::cmp::Reverse(req.priority), self.seq);
        self.queued.insert(req.instance.clone(), key);
        self.queue.insert(key, req.clone());
        let position = self.queue.range(..=key).count();
        Outcome::Queued { position }
    }

    /// Places what waiting requests fit now, in queue order; returns the placements.
    pub fn drain(&mut self) -> Vec<(InstanceId, HostId)> {
        let mut out = vec![];
        let keys: Vec<_> = self.queue.keys().copied().collect();
        for key in keys {
            let Some(req) = self.queue.get(&key).cloned() else {
                continue;
            };
            if let Some(h) = self.choose(&req) {
                self.queue.remove(&key);
                self.queued.remove(&req.instance);
                self.reserve(&req, &h);
                out.push((req.instance, h));
            }
        }
        out
    }

    /// 1-based position in the queue.
    pub fn position(&self, instance: &InstanceId) -> Option<usize> {
        let key = self.queued.get(instance)?;
        Some(self.queue.range(..=*key).count())
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// What the queue waits for, per pool that could ever hold it (by labels); requests
    /// no pool's labels match are counted under `""`.
    pub fn shortfall(&self) -> BTreeMap<String, Shortfall> {
        let mut out: BTreeMap<String, Shortfall> = BTreeMap::new();
        for req in self.queue.values() {
            let pool = self
                .hosts
                .values()
                .find(|e| labels_match(&req.labels, &e.snap.labels))
                .map(|e| e.snap.pool.clone())
                .unwrap_or_default();
            let s = out.entry(pool).or_default();
            s.waiting += 1;
            s.resources = s.resources.add(req.resources);
        }
        out
    }

    fn reserve(&mut self, req: &Request, host: &HostId) {
        if let Some(e) = self.hosts.get_mut(host) {
            e.reserved = e.reserved.add(req.resources);
            e.instances += 1;
            e.launching += 1;
        }
        self.placed.insert(
            req.instance.clone(),
            Placement {
                host: host.clone(),
                resources: req.resources,
                launching: true,
            },
        );
    }

    /// Reservable capacity of a host under its pool's over-commit.
    fn limit(&self, e: &HostEntry) -> Resources {
        let p = self.policy(&e.snap.pool);
        Resources {
            memory: (e.snap.capacity.memory as f64 * p.memory_overcommit) as u64,
            millicpus: (e.snap.capacity.millicpus as f64 * p.cpu_overcommit) as u64,
        }
    }

    fn fits(&self, req: &Request, e: &HostEntry) -> bool {
        let p = self.policy(&e.snap.pool);
        let limit = self.limit(e);
        let after = e.reserved.add(req.resources);
        e.snap.schedulable
            && (e.snap.isolated || p.allow_unisolated)
            && after.memory <= limit.memory
            && after.millicpus <= limit.millicpus
            && (p.max_instances_per_host == 0 || e.instances < p.max_instances_per_host)
            && labels_match(&req.labels, &e.snap.labels)
    }

    /// The score of a host that fits.
    fn score(&self, req: &Request, e: &HostEntry) -> i64 {
        let limit = self.limit(e);
        let after = e.reserved.add(req.resources);
        let frac = |used: u64, cap: u64| {
            if cap == 0 {
                1.0
            } else {
                used as f64 / cap as f64
            }
        };
        let fill_of = |r: Resources| {
            let f = (frac(r.memory, limit.memory) + frac(r.millicpus, limit.millicpus)) / 2.0;
            (f * FIT_SCALE as f64).round() as i64
        };
        let fill = fill_of(after);
        let step = fill - fill_of(e.reserved);
        let strategy = req.strategy.unwrap_or(self.policy(&e.snap.pool).strategy);
        let mut score = match strategy {
            Strategy::Binpack => fill,
            Strategy::Spread => FIT_SCALE - fill,
        };
        if e.snap.images.contains(&req.image) {
            score += IMAGE_BONUS;
        }
        score -= FAILURE_PENALTY * i64::from(e.snap.recent_failures);
        score -= queue_penalty(e.queue(), step);
        score + self.bonus.bonus(req, &e.snap)
    }

    /// The best host for a request, if any fits. Ties go to the lowest host id
    /// (hosts are visited in id order and only a strictly better score wins).
    pub fn choose(&self, req: &Request) -> Option<HostId> {
        let mut best: Option<(i64, &HostId)> = None;
        for (id, e) in &self.hosts {
            if !self.fits(req, e) {
                continue;
            }
            let s = self.score(req, e);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, id));
            }
        }
        best.map(|(_, id)| id.clone())
    }
}

fn labels_match(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    // Not the prelude: its `Strategy` would clash with the scheduler's.
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;

    const GIB: u64 = 1 << 30;

    fn host(n: u32, mem_gib: u64, cpus: u64) -> HostSnapshot {
        HostSnapshot {
            id: HostId::parse(&format!("h-{n:016x}")).unwrap(),
            pool: "default".into(),
            schedulable: true,
            isolated: true,
            capacity: Resources::new(mem_gib * GIB, cpus * 1000),
            labels: BTreeMap::new(),
            images: BTreeSet::new(),
            recent_failures: 0,
            datasets: BTreeSet::new(),
            launch_queue: 0,
        }
    }

    fn inst(n: u32) -> InstanceId {
        InstanceId::parse(&format!("i-{n:016x}")).unwrap()
    }

    fn req(n: u32, mem_gib: u64) -> Request {
        Request {
            instance: inst(n),
            resources: Resources::new(mem_gib * GIB, 500),
            labels: BTreeMap::new(),
            image: "img:1".into(),
            strategy: None,
            priority: 0,
            datasets: vec![],
        }
    }

    fn placed(o: Outcome) -> HostId {
        match o {
            Outcome::Placed(h) => h,
            other => panic!("not placed: {other:?}"),
        }
    }

    #[test]
    fn binpack_fills_one_host_before_the_next() {
        let mut s = Scheduler::default();
        s.upsert_host(host(1, 4, 8));
        s.upsert_host(host(2, 4, 8));
        let hosts: Vec<HostId> = (0..8).map(|i| placed(s.submit(req(i, 1)))).collect();
        assert!(hosts[..4].iter().all(|h| *h == hosts[0]));
        assert!(hosts[4..].iter().all(|h| *h != hosts[0]));
        assert_eq!(s.submit(req(9, 1)), Outcome::Queued { position: 1 });
    }

    #[test]
    fn spread_alternates() {
        let mut s = Scheduler::new(PoolPolicy {
            strategy: Strategy::Spread,
            ..Default::default()
        });
        s.upsert_host(host(1, 4, 8));
        s.upsert_host(host(2, 4, 8));
        let hosts: Vec<HostId> = (0..4).map(|i| placed(s.submit(req(i, 1)))).collect();
        assert_ne!(hosts[0], hosts[1]);
        assert_eq!(hosts[0], hosts[2]);
        assert_eq!(hosts[1], hosts[3]);
        // A request may ask to bin-pack in a spread pool.
        let mut r = req(10, 1);
        r.strategy = Some(Strategy::Binpack);
        let h = placed(s.submit(r));
        assert_eq!(s.reserved(&h).unwrap().1, 3);
    }

    #[test]
    fn constraints_and_unschedulable_hosts_filter() {
        let mut s = Scheduler::default();
        let mut gpu = host(1, 4, 8);
        gpu.labels.insert("gpu".into(), "true".into());
        s.upsert_host(gpu.clone());
        let mut draining = host(2, 64, 64);
        draining.schedulable = false;
        draining.labels.insert("gpu".into(), "true".into());
        s.upsert_host(draining);
        s.upsert_host(host(3, 64, 64));
        let mut r = req(1, 1);
        r.labels.insert("gpu".into(), "true".into());
        assert_eq!(placed(s.submit(r)), gpu.id);
        let mut r = req(2, 1);
        r.labels.insert("zone".into(), "b".into());
        assert_eq!(s.submit(r), Outcome::Queued { position: 1 });
    }

    #[test]
    fn unisolated_hosts_only_in_pools_that_allow_them() {
        let mut s = Scheduler::default();
        let mut open = host(1, 64, 64);
        open.isolated = false;
        let mut lab = host(2, 64, 64);
        lab.isolated = false;
        lab.pool = "lab".into();
        s.upsert_host(open.clone());
        s.upsert_host(lab.clone());
        s.set_pool_policy(
            "lab",
            PoolPolicy {
                allow_unisolated: true,
                ..Default::default()
            },
        );
        // Only the lab pool takes it, though the default pool's host is emptier
        // by id order and would otherwise win the tie.
        assert_eq!(placed(s.submit(req(1, 1))), lab.id);
        // With the lab host gone, requests wait rather than land unfenced.
        s.remove_host(&lab.id);
        assert_eq!(s.submit(req(2, 1)), Outcome::Queued { position: 1 });
        assert_eq!(s.drain(), vec![]);
        // The host reports its rules installed: the waiting request goes there.
        open.isolated = true;
        s.upsert_host(open.clone());
        assert_eq!(s.drain(), vec![(inst(2), open.id.clone())]);
    }

    #[test]
    fn overcommit_and_instance_caps() {
        let mut s = Scheduler::new(PoolPolicy {
            memory_overcommit: 1.5,
            ..Default::default()
        });
        s.upsert_host(host(1, 4, 64));
        for i in 0..6 {
            placed(s.submit(req(i, 1)));
        }
        assert!(matches!(s.submit(req(7, 1)), Outcome::Queued { .. }));

        let mut s = Scheduler::new(PoolPolicy {
            max_instances_per_host: 2,
            ..Default::default()
        });
        s.upsert_host(host(1, 64, 64));
        placed(s.submit(req(1, 1)));
        placed(s.submit(req(2, 1)));
        assert!(matches!(s.submit(req(3, 1)), Outcome::Queued { .. }));
    }

    #[test]
    fn image_bonus_and_failure_penalty_steer() {
        let mut s = Scheduler::new(PoolPolicy {
            strategy: Strategy::Spread,
            ..Default::default()
        });
        let a = host(1, 8, 8);
        let mut b = host(2, 8, 8);
        b.images.insert("img:1".into());
        s.upsert_host(a.clone());
        s.upsert_host(b.clone());
        assert_eq!(placed(s.submit(req(1, 1))), b.id);
        b.recent_failures = 3;
        s.upsert_host(b);
        assert_eq!(placed(s.submit(req(2, 1))), a.id);
    }

    #[test]
    fn the_queue_penalty_grows_with_the_queue_and_is_bounded() {
        assert_eq!(queue_penalty(0, 50), 0);
        assert_eq!(queue_penalty(4, 0), 4 * QUEUE_PENALTY);
        assert_eq!(queue_penalty(4, 50), 4 * (QUEUE_PENALTY + 50));
        assert_eq!(queue_penalty(4, -3), 4 * QUEUE_PENALTY);
        assert_eq!(queue_penalty(10_000, 0), MAX_QUEUE_PENALTY);
        assert_eq!(queue_penalty(u32::MAX, i64::MAX / 2), MAX_QUEUE_PENALTY);
        assert!(queue_penalty(7, 0) > queue_penalty(6, 0));
    }

    #[test]
    fn a_long_launch_queue_steers_a_burst_to_a_quieter_host() {
        // Bin-packing would keep filling a (it already holds instances and the
        // image); its queue of launches waiting for the engine sends the next to b.
        let mut s = Scheduler::default();
        let mut a = host(1, 64, 64);
        a.images.insert("img:1".into());
        let b = host(2, 64, 64);
        s.upsert_host(a.clone());
        s.upsert_host(b.clone());
        for n in 0..4 {
            assert_eq!(placed(s.submit(req(n, 1))), a.id, "bin-packing onto a");
        }
        a.launch_queue = 12;
        s.upsert_host(a.clone());
        assert_eq!(placed(s.submit(req(10, 1))), b.id);
        // The same input, the same answer.
        let mut again = Scheduler::default();
        again.upsert_host(a.clone());
        again.upsert_host(b.clone());
        assert_eq!(placed(again.submit(req(10, 1))), b.id);
        // The queue drains: back to packing a.
        a.launch_queue = 0;
        s.upsert_host(a.clone());
        assert_eq!(placed(s.submit(req(11, 1))), a.id);
        // A penalty never filters: with b gone, a busy a still takes launches.
        s.remove_host(&b.id);
        a.launch_queue = 1_000;
        s.upsert_host(a.clone());
        assert_eq!(placed(s.submit(req(12, 1))), a.id);
    }

    #[test]
    fn a_burst_spills_over_before_any_heartbeat_and_packs_again_once_started() {
        // Both hosts hold the image and report no queue: a burst placed within a
        // second, before any heartbeat says otherwise.
        let mut s = Scheduler::default();
        let mut a = host(1, 64, 64);
        let mut b = host(2, 64, 64);
        a.images.insert("img:1".into());
        b.images.insert("img:1".into());
        s.upsert_host(a.clone());
        s.upsert_host(b.clone());
        let hosts: Vec<HostId> = (0..40).map(|n| placed(s.submit(req(n, 1)))).collect();
        let on_a = hosts.iter().filter(|h| **h == a.id).count();
        // The first HOST_SLOTS and a few more pack onto a, then the burst alternates.
        assert!(
            hosts[..=HOST_SLOTS as usize].iter().all(|h| *h == a.id),
            "{hosts:?}"
        );
        assert!((20..=26).contains(&on_a), "{on_a} of 40 on a");
        // Once they run, packing resumes onto the fuller host: started placements
        // are no queue (and saying so twice is harmless).
        for n in 0..40 {
            s.started(&inst(n));
        }
        s.started(&inst(0));
        let fuller = if on_a >= 40 - on_a { &a.id } else { &b.id };
        assert_eq!(placed(s.submit(req(100, 1))), *fuller);
        // Another burst spreads again; released while still launching, its
        // placements leave no queue behind either.
        let second: Vec<HostId> = (200..230).map(|n| placed(s.submit(req(n, 1)))).collect();
        assert!(second.iter().any(|h| h != fuller), "{second:?}");
        for n in 200..230 {
            s.release(&inst(n));
        }
        assert_eq!(placed(s.submit(req(300, 1))), *fuller);
    }

    #[test]
    fn a_burst_of_requests_large_for_their_hosts_still_spreads() {
        // A tenth of a core on 2-core hosts: each launch adds 25 to a host's fill,
        // as much as a queued launch used to cost, so packing used to win.
        let mut s = Scheduler::default();
        for n in 1..=2 {
            let mut h = host(n, 8, 2);
            h.images.insert("img:1".into());
            s.upsert_host(h);
        }
        let mut small = |n: u32| {
            let mut r = req(n, 0);
            r.resources = Resources::new(64 << 20, 100);
            placed(s.submit(r))
        };
        let hosts: Vec<HostId> = (0..30).map(&mut small).collect();
        let first = hosts.iter().filter(|h| **h == hosts[0]).count();
        assert!(
            (13..=17).contains(&first),
            "{first} of 30 on one host: {hosts:?}"
        );
    }

    fn manifest(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn mounting(n: u32, sets: &[(u8, u64)]) -> Request {
        Request {
            datasets: sets
                .iter()
                .map(|&(m, bytes)| DatasetNeed {
                    manifest: manifest(m),
                    bytes,
                })
                .collect(),
            ..req(n, 1)
        }
    }

    #[test]
    fn a_host_holding_the_dataset_wins_over_an_equal_one() {
        let mut s = Scheduler::default().with_bonus(Box::new(DataLocality));
        // Host 1 would win the tie by id; host 2 holds the dataset.
        let a = host(1, 8, 8);
        let mut b = host(2, 8, 8);
        b.datasets.insert(manifest(7));
        s.upsert_host(a.clone());
        s.upsert_host(b.clone());
        assert_eq!(placed(s.submit(mounting(1, &[(7, 1 << 30)]))), b.id);
        // Without the bonus the tie goes to the lowest id: the bonus decided it.
        let mut plain = Scheduler::default();
        plain.upsert_host(host(1, 8, 8));
        plain.upsert_host(b.clone());
        assert_eq!(placed(plain.submit(mounting(1, &[(7, 1 << 30)]))), a.id);
        // A request mounting something else gets no bonus: back to the tie rule.
        let mut s = Scheduler::default().with_bonus(Box::new(DataLocality));
        s.upsert_host(host(1, 8, 8));
        s.upsert_host(b);
        assert_eq!(placed(s.submit(mounting(2, &[(8, 1 << 30)]))), a.id);
    }

    #[test]
    fn the_dataset_bonus_is_proportional_to_bytes_and_bounded() {
        let mut h = host(1, 8, 8);
        h.datasets.insert(manifest(1));
        let bonus = |r: &Request| DataLocality.bonus(r, &h);
        assert_eq!(bonus(&mounting(1, &[])), 0);
        assert_eq!(bonus(&mounting(1, &[(1, 100)])), DATASET_BONUS);
        // It holds 3 of 4 GiB.
        assert_eq!(
            bonus(&mounting(1, &[(1, 3 << 30), (2, 1 << 30)])),
            DATASET_BONUS * 3 / 4
        );
        assert_eq!(bonus(&mounting(1, &[(2, 1 << 30)])), 0);
        // Empty datasets still count, and huge ones do not overflow.
        assert_eq!(bonus(&mounting(1, &[(1, 0), (2, 0)])), DATASET_BONUS / 2);
        assert_eq!(
            bonus(&mounting(1, &[(1, u64::MAX), (2, u64::MAX)])),
            DATASET_BONUS / 2
        );
    }

    #[test]
    fn the_dataset_bonus_never_makes_a_host_fit() {
        let mut s = Scheduler::default().with_bonus(Box::new(DataLocality));
        // The warm host has 1 GiB; the request wants 2.
        let mut warm = host(1, 1, 8);
        warm.datasets.insert(manifest(7));
        let cold = host(2, 8, 8);
        s.upsert_host(warm.clone());
        s.upsert_host(cold.clone());
        let big = Request {
            resources: Resources::new(2 * GIB, 500),
            ..mounting(1, &[(7, 1 << 40)])
        };
        assert_eq!(placed(s.submit(big)), cold.id);
        // Nor one that is not schedulable, or lacks a label.
        let mut s = Scheduler::default().with_bonus(Box::new(DataLocality));
        let mut draining = host(1, 8, 8);
        draining.datasets.insert(manifest(7));
        draining.schedulable = false;
        s.upsert_host(draining);
        s.upsert_host(cold.clone());
        assert_eq!(placed(s.submit(mounting(2, &[(7, 1)]))), cold.id);
        let mut s = Scheduler::default().with_bonus(Box::new(DataLocality));
        s.upsert_host(warm);
        assert_eq!(
            s.submit(Request {
                labels: [("gpu".to_string(), "true".to_string())].into(),
                ..mounting(3, &[(7, 1)])
            }),
            Outcome::Queued { position: 1 }
        );
    }

    /// Per host, what the placements the scheduler announced add up to.
    type Books = HashMap<HostId, (Resources, u32)>;

    fn book(books: &mut Books, host: &HostId, r: Resources) {
        let e = books.entry(host.clone()).or_default();
        e.0 = e.0.add(r);
        e.1 += 1;
    }

    #[test]
    fn no_overbooking_under_a_thousand_requests() {
        let mut s = Scheduler::default();
        // Half the hosts short of CPU, half short of memory.
        let mut capacity = HashMap::new();
        for n in 0..10 {
            let h = if n % 2 == 0 {
                host(n, 16, 8)
            } else {
                host(n, 8, 16)
            };
            capacity.insert(h.id.clone(), h.capacity);
            s.upsert_host(h);
        }
        // 1..4 GiB and 0.5..2.5 CPUs, in a deterministic mix that exhausts memory on
        // some hosts and CPU on others.
        let size = |i: u32| {
            Resources::new(
                (1 + u64::from(i % 4)) * GIB,
                500 * (1 + u64::from(i * 7 % 5)),
            )
        };
        let mut books = Books::new();
        let mut queued = 0;
        for i in 0..1000 {
            let r = Request {
                resources: size(i),
                ..req(i, 0)
            };
            let res = r.resources;
            match s.submit(r) {
                Outcome::Placed(h) => book(&mut books, &h, res),
                Outcome::Queued { .. } => queued += 1,
            }
        }
        // Arrivals queue behind the first that waits; a drain fills what is left.
        let sizes: HashMap<InstanceId, Resources> = (0..1000).map(|i| (inst(i), size(i))).collect();
        for (i, h) in s.drain() {
            book(&mut books, &h, sizes[&i]);
            queued -= 1;
        }
        for (h, (used, n)) in &books {
            let cap = capacity[h];
            assert!(used.memory <= cap.memory, "{h}: {used:?} of {cap:?}");
            assert!(used.millicpus <= cap.millicpus, "{h}: {used:?} of {cap:?}");
            assert_eq!(s.reserved(h), Some((*used, *n)));
        }
        // Every host is full: the smallest request (1 GiB, 0.5 CPU) fits nowhere. Some
        // are full in memory, some in CPU, so both limits were really tested.
        let free: Vec<Resources> = books
            .iter()
            .map(|(h, (used, _))| capacity[h].sub(*used))
            .collect();
        assert_eq!(free.len(), 10);
        assert!(
            free.iter().all(|f| f.memory < GIB || f.millicpus < 500),
            "{free:?}"
        );
        assert!(
            free.iter().any(|f| f.memory < GIB),
            "no host full in memory: {free:?}"
        );
        assert!(
            free.iter().any(|f| f.millicpus < 500),
            "no host full in CPU: {free:?}"
        );
        assert_eq!(queued, s.queue_len());
    }

    #[test]
    fn cpu_alone_can_be_what_is_full() {
        let mut s = Scheduler::default();
        let h = host(1, 64, 2);
        s.upsert_host(h.clone());
        let cpu_heavy = |n: u32| Request {
            resources: Resources::new(GIB / 2, 1000),
            ..req(n, 0)
        };
        assert_eq!(placed(s.submit(cpu_heavy(1))), h.id);
        assert_eq!(placed(s.submit(cpu_heavy(2))), h.id);
        // 63 GiB of memory free, no CPU.
        assert_eq!(s.submit(cpu_heavy(3)), Outcome::Queued { position: 1 });
        assert_eq!(s.shortfall()["default"].resources.millicpus, 1000);
    }

    /// One step of the property below.
    #[derive(Debug, Clone)]
    enum Op {
        Submit {
            mib: u64,
            millicpus: u64,
        },
        /// Releases the `n`-th (modulo) instance submitted so far.
        Release(usize),
        Drain,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        prop_oneof![
            4 => (64u64..6144, 100u64..4000)
                .prop_map(|(mib, millicpus)| Op::Submit { mib, millicpus }),
            2 => any::<usize>().prop_map(Op::Release),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// Whatever arrives, leaves and is drained, under any over-commit: no host is
        /// ever promised more memory or more CPU than its capacity times the pool's
        /// ratio, and the scheduler's books agree with the placements it announced.
        #[test]
        fn no_host_is_overbooked_in_memory_or_cpu(
            hosts in prop::collection::vec((1u64..32, 1u64..16), 1..6),
            memory_overcommit in prop::sample::select(vec![1.0, 1.5]),
            cpu_overcommit in prop::sample::select(vec![1.0, 2.0, 4.0]),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut s = Scheduler::new(PoolPolicy {
                memory_overcommit,
                cpu_overcommit,
                ..Default::default()
            });
            let mut limits = HashMap::new();
            for (n, (gib, cpus)) in hosts.iter().enumerate() {
                let snap = host(n as u32, *gib, *cpus);
                limits.insert(
                    snap.id.clone(),
                    Resources::new(
                        (snap.capacity.memory as f64 * memory_overcommit) as u64,
                        (snap.capacity.millicpus as f64 * cpu_overcommit) as u64,
                    ),
                );
                s.upsert_host(snap);
            }
            let mut submitted: Vec<(InstanceId, Resources)> = vec![];
            let mut placements: HashMap<InstanceId, (HostId, Resources)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Submit { mib, millicpus } => {
                        let id = inst(submitted.len() as u32);
                        let r = Request {
                            resources: Resources::new(mib << 20, millicpus),
                            ..req(submitted.len() as u32, 0)
                        };
                        submitted.push((id.clone(), r.resources));
                        if let Outcome::Placed(h) = s.submit(r.clone()) {
                            placements.insert(id, (h, r.resources));
                        }
                    }
                    Op::Release(n) if !submitted.is_empty() => {
                        let (id, _) = &submitted[n % submitted.len()];
                        s.release(id);
                        placements.remove(id);
                    }
                    Op::Release(_) => {}
                    Op::Drain => {
                        for (id, h) in s.drain() {
                            let r = submitted.iter().find(|(i, _)| *i == id).map(|(_, r)| *r);
                            prop_assert!(r.is_some(), "drain placed {} it was never given", id);
                            prop_assert!(!placements.contains_key(&id), "{} placed twice", id);
                            placements.insert(id, (h, r.unwrap_or_default()));
                        }
                    }
                }
                let mut books = Books::new();
                for (h, r) in placements.values() {
                    book(&mut books, h, *r);
                }
                for (h, limit) in &limits {
                    let (used, n) = books.get(h).copied().unwrap_or_default();
                    prop_assert!(used.memory <= limit.memory, "{}: {:?} > {:?}", h, used, limit);
                    prop_assert!(used.millicpus <= limit.millicpus, "{}: {:?} > {:?}", h, used, limit);
                    prop_assert_eq!(s.reserved(h), Some((used, n)));
                }
            }
        }
    }

    /// The queue's rule as the core implements it: **an arrival never overtakes a
    /// waiting request of its priority or higher** (it queues even if it would fit),
    /// and **a drain places in queue order whatever fits**, so a small request passes
    /// a big one that fits nowhere yet, while the big one keeps the head of the queue
    /// and goes first once it fits.
    #[test]
    fn the_queue_is_fifo_per_priority_and_fills_when_capacity_appears() {
        let mut s = Scheduler::default();
        s.upsert_host(host(1, 2, 8));
        placed(s.submit(req(1, 2)));
        assert_eq!(s.submit(req(2, 1)), Outcome::Queued { position: 1 });
        assert_eq!(s.submit(req(3, 1)), Outcome::Queued { position: 2 });
        let mut urgent = req(4, 1);
        urgent.priority = 5;
        assert_eq!(s.submit(urgent), Outcome::Queued { position: 1 });
        assert_eq!(s.position(&inst(2)), Some(2));
        let short = s.shortfall();
        assert_eq!(short["default"].waiting, 3);
        assert_eq!(short["default"].resources.memory, 3 * GIB);

        s.release(&inst(1));
        let placed_now: Vec<InstanceId> = s.drain().into_iter().map(|(i, _)| i).collect();
        assert_eq!(placed_now, vec![inst(4), inst(2)]);
        assert_eq!(s.position(&inst(3)), Some(1));
        // Room appears (a new host) while 3 waits: a new request that would fit there
        // still queues behind 3, and the drain gives the room to 3 first.
        let h2 = host(2, 1, 8);
        s.upsert_host(h2.clone());
        assert_eq!(s.choose(&req(5, 1)), Some(h2.id.clone()), "5 would fit");
        assert_eq!(s.submit(req(5, 1)), Outcome::Queued { position: 2 });
        assert_eq!(s.reserved(&h2.id), Some((Resources::default(), 0)));
        assert_eq!(s.drain(), vec![(inst(3), h2.id.clone())]);
        assert_eq!(s.position(&inst(5)), Some(1));
        s.release(&inst(4));
        assert_eq!(s.drain(), vec![(inst(5), host(1, 2, 8).id)]);
        assert_eq!(s.queue_len(), 0);
    }

    #[test]
    fn a_small_request_behind_a_big_one_waits_then_passes_it_at_the_next_drain() {
        let mut s = Scheduler::default();
        let h = host(1, 4, 8);
        s.upsert_host(h.clone());
        placed(s.submit(req(1, 2)));
        let before = s.reserved(&h.id);
        // Big: 3 GiB, 2 free. Small: 1 GiB, fits, but arrives behind big.
        assert_eq!(s.submit(req(2, 3)), Outcome::Queued { position: 1 });
        assert_eq!(s.choose(&req(3, 1)), Some(h.id.clone()), "small would fit");
        assert_eq!(s.submit(req(3, 1)), Outcome::Queued { position: 2 });
        assert_eq!(s.reserved(&h.id), before, "a queued arrival took room");
        // The next drain passes big, which fits nowhere, and places small.
        assert_eq!(s.drain(), vec![(inst(3), h.id.clone())]);
        assert_eq!(s.position(&inst(2)), Some(1));
        // A higher priority is not held back by a lower one waiting.
        let mut urgent = req(4, 1);
        urgent.priority = 1;
        assert_eq!(s.submit(urgent), Outcome::Placed(h.id.clone()));
        // Another small one at big's priority queues behind it again.
        assert_eq!(s.submit(req(5, 1)), Outcome::Queued { position: 2 });
        // Room for big: it goes first, and what no longer fits after it waits.
        s.release(&inst(1));
        s.release(&inst(4));
        assert_eq!(s.drain(), vec![(inst(2), h.id.clone())]);
        assert_eq!(s.position(&inst(5)), Some(1));
    }

    #[test]
    fn a_large_request_does_not_stall_smaller_ones() {
        let mut s = Scheduler::default();
        s.upsert_host(host(1, 4, 8));
        placed(s.submit(req(1, 2)));
        assert!(matches!(s.submit(req(2, 8)), Outcome::Queued { .. }));
        assert!(matches!(s.submit(req(3, 1)), Outcome::Queued { .. }));
        let placed_now: Vec<InstanceId> = s.drain().into_iter().map(|(i, _)| i).collect();
        assert_eq!(placed_now, vec![inst(3)]);
        assert_eq!(s.position(&inst(2)), Some(1));
    }

    #[test]
    fn the_same_input_gives_the_same_placements() {
        let run = || {
            let mut s = Scheduler::default();
            for n in (0..20).rev() {
                s.upsert_host(host(n, 8, 8));
            }
            (0..300)
                .map(|i| s.submit(req(i, 1 + u64::from(i % 3))))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn placements_restored_before_their_host_appears_still_count() {
        let mut s = Scheduler::default();
        let h = host(1, 4, 8);
        s.restore(inst(1), &h.id, Resources::new(3 * GIB, 100));
        s.upsert_host(h.clone());
        assert_eq!(s.reserved(&h.id).unwrap().1, 1);
        assert!(matches!(s.submit(req(2, 2)), Outcome::Queued { .. }));
    }

    #[test]
    fn restore_and_remove_keep_books_straight() {
        let mut s = Scheduler::default();
        let h = host(1, 4, 8);
        s.upsert_host(h.clone());
        s.restore(inst(1), &h.id, Resources::new(3 * GIB, 100));
        assert!(matches!(s.submit(req(2, 2)), Outcome::Queued { .. }));
        s.release(&inst(1));
        assert_eq!(s.drain(), vec![(inst(2), h.id.clone())]);
        s.remove_host(&h.id);
        assert_eq!(s.placement(&inst(2)), None);
    }
}
