//! The instance manager: the shell around the pure cores. It holds every instance
//! in memory behind one lock (and in the store), feeds the lifecycle state machine
//! events (launches, placements, agent reports, user actions, time), keeps the
//! scheduler's books, and sends each host the difference in what it should run.
//!
//! Every change goes through one path, [`Instances::commit`]: apply the events
//! under the lock (books settled, hosts marked), save each changed instance, flush
//! the store once, then sync the touched hosts. A persistence error is returned to
//! the caller or logged, never dropped; nothing is sent to a host before it is
//! durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cairn_shared::ids::{HostId, InstanceId};
use cairn_shared::images::RegistryCredential;
use cairn_shared::protocol::ControllerMsg;
use cairn_shared::workload::{DatasetMount, DesiredInstance, InstanceReport};

use super::books::{request_of, snapshot, Books};
use super::desired::{desired_of, new_secrets};
use super::prepull::ImagePlan;
use super::state::{Event, Instance, InstanceState};
use super::sync::Syncs;
use crate::blueprints::spec::BlueprintSpec;
use crate::blueprints::{BlueprintRecord, Catalog};
use crate::config::InstancesConfig;
use crate::datasets::lookup::{DatasetLookup, Lookup};
use crate::datasets::prefetch::DatasetPlan;
use crate::groups::ledger::{Ledger, Spent};
use crate::hosts::pool::{PoolAction, PoolEvent};
use crate::hosts::{HostState, Registry};
use crate::scheduler::{Outcome, Resources, Shortfall};
use crate::store::{Store, StoreError, Tree};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Limit(String),
    /// Over a group's or a member's quota, with the numbers.
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The limits a launch is admitted under, decided by the service layer and checked
/// here atomically with the insertion (two concurrent launches cannot both pass).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// The blueprint's limit per user.
    pub per_blueprint: u32,
    /// The controller-wide limit per user.
    pub per_user: u32,
}

/// The group quotas a launch must fit, checked under the same lock.
#[derive(Debug, Clone)]
pub struct QuotaCheck {
    pub group: String,
    pub group_limits: crate::groups::core::Limits,
    pub member_limits: crate::groups::core::Limits,
    pub ask: crate::groups::core::Ask,
}

#[derive(Debug, Default)]
struct Inner {
    /// The instances in memory: the live ones ([`Instance::stays_in_memory`]).
    /// Ended instances are read from the store when asked for; what they spent is
    /// in `spent`.
    all: BTreeMap<InstanceId, Instance>,
    /// Ended instances only in the store, by final state, for the counts.
    ended_out: BTreeMap<InstanceState, usize>,
    /// What ended runs spent, per group and member, for quotas and usage.
    spent: Ledger,
    /// The instances that have not ended: what the tick looks at, so its cost
    /// follows what runs now, not everything kept for history.
    live: BTreeSet<InstanceId>,
    syncs: Syncs,
    books: Books,
}

/// One instance's change in a commit.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: InstanceId,
    pub was: InstanceState,
    pub now: InstanceState,
    pub reason: Option<String>,
}

/// What a commit changed: the instances, and the hosts to sync.
#[derive(Debug, Default)]
struct Applied {
    changes: Vec<Change>,
    hosts: BTreeSet<HostId>,
    error: Option<StoreError>,
}

/// All instances of this controller.
#[derive(Debug)]
pub struct Instances {
    store: Store,
    config: InstancesConfig,
    registry: Arc<Registry>,
    blueprints: Arc<Catalog>,
    credentials: Vec<RegistryCredential>,
    inner: Mutex<Inner>,
    /// Blueprint revisions never change once saved, so they are read once.
    specs: Mutex<HashMap<(String, u32), BlueprintSpec>>,
    /// The pre-pull plan last computed.
    images: Mutex<ImagePlan>,
    /// The dataset pre-fetch plan last computed.
    prefetch: Mutex<DatasetPlan>,
    /// The dataset catalogue, once the controller wires it in.
    lookup: std::sync::RwLock<Lookup>,
    /// When the scheduler's host snapshots and the pre-fetch plans were last built,
    /// and from which host shape and catalogue generation.
    refreshed: Mutex<Refreshed>,
}

/// See [`Instances::due_refresh`].
#[derive(Debug, Default, Clone, Copy)]
struct Refreshed {
    snapshots: Option<(u64, u64)>,
    plans: Option<(u64, u64, u64)>,
}

/// The key of an instance's `seq`th transition; the sequence number is padded so
/// keys sort in order.
fn transition_key(id: &InstanceId, seq: usize) -> String {
    format!("{}/{seq:04}", id.as_str())
}

/// The key of an instance in its owner's index.
fn owner_key(owner: &str, id: &InstanceId) -> String {
    format!("{owner}/{}", id.as_str())
}

/// Counts (`add`) or takes back an ended run's credits in the ledger.
fn note_spent(ledger: &mut Ledger, i: &Instance, add: bool) {
    let Some(run) = i.as_run() else {
        return;
    };
    let Some(c) = &i.charge else {
        return;
    };
    let credits = crate::groups::core::credits(
        run.cost,
        run.running_since_ms,
        run.ended_ms.unwrap_or_default(),
    );
    if add {
        ledger.add(&c.group, &i.owner, credits);
    } else {
        ledger.remove(&c.group, &i.owner, credits);
    }
}

/// Gives store records their keyed transitions (`ID/SEQ`, in order). A record
/// written before transitions had keys of their own carries them inline and has
/// none there.
fn attach_history(
    all: &mut BTreeMap<InstanceId, Instance>,
    keyed: Vec<(String, crate::instances::state::Transition)>,
) {
    for (key, t) in keyed {
        let Some(i) = key
            .split_once('/')
            .and_then(|(id, _)| InstanceId::parse(id).ok())
            .and_then(|id| all.get_mut(&id))
        else {
            tracing::warn!(%key, "skipping the transition of an unknown instance");
            continue;
        };
        if i.stored_transitions == 0 {
            i.transitions.clear();
        }
        i.transitions.push(t);
        i.stored_transitions = i.transitions.len();
    }
}

/// Host snapshots and plans are rebuilt when a host or blueprint changed, and at
/// least this often (dataset versions pushed meanwhile, say) — not on every tick.
const REFRESH_MS: u64 = 5_000;

impl Instances {
    pub fn load(
        store: Store,
        config: InstancesConfig,
        registry: Arc<Registry>,
        blueprints: Arc<Catalog>,
        credentials: Vec<RegistryCredential>,
    ) -> Result<Self, StoreError> {
        let mut all: BTreeMap<InstanceId, Instance> = store
            .all::<Instance>(Tree::Instances)?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        attach_history(&mut all, store.scan_keyed(Tree::InstanceTransitions, "")?);
        // Owners' indexes of stores written before they existed.
        let indexed: std::collections::HashSet<String> =
            store.keys(Tree::InstanceOwners, "")?.into_iter().collect();
        for i in all.values() {
            let key = owner_key(&i.owner, &i.id);
            if !indexed.contains(&key) {
                store.put(Tree::InstanceOwners, &key, &i.created_ms)?;
            }
        }
        // Ended instances stay in the store only.
        let mut ended_out: BTreeMap<InstanceState, usize> = BTreeMap::new();
        let mut spent = Ledger::default();
        all.retain(|_, i| {
            let keep = i.stays_in_memory();
            if !keep {
                *ended_out.entry(i.state).or_default() += 1;
                note_spent(&mut spent, i, true);
            }
            keep
        });
        Ok(Instances {
            store,
            config,
            registry,
            blueprints,
            credentials,
            specs: Mutex::new(HashMap::new()),
            images: Mutex::new(ImagePlan::default()),
            prefetch: Mutex::new(DatasetPlan::default()),
            lookup: std::sync::RwLock::new(Lookup::default()),
            refreshed: Mutex::new(Refreshed::default()),
            inner: Mutex::new(Inner {
                books: Books::of(all.values()),
                live: all
                    .values()
                    .filter(|i| !i.state.is_terminal())
                    .map(|i| i.id.clone())
                    .collect(),
                all,
                ended_out,
                spent,
                syncs: Syncs::default(),
            }),
        })
    }

    /// Wires in the dataset catalogue: launches resolve blueprints' datasets with
    /// it, the pre-fetch plan looks versions up in it. Without it a blueprint with
    /// datasets cannot launch.
    pub fn set_dataset_lookup(&self, lookup: std::sync::Arc<dyn DatasetLookup>) {
        *self.lookup.write().unwrap_or_else(|p| p.into_inner()) = Lookup::new(lookup);
    }

    /// The dataset catalogue's lookup (empty when none is wired in).
    pub fn dataset_lookup(&self) -> Lookup {
        self.lookup
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation under the lock leaves the maps consistent, so a poisoned
        // lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- reading ----

    /// An instance, from memory or, once ended, from the store.
    pub fn get(&self, id: &InstanceId) -> Option<Instance> {
        if let Some(i) = self.lock().all.get(id) {
            return Some(i.clone());
        }
        self.stored(id)
    }

    /// An instance as the store holds it, with its history; `None` if it is not
    /// there or cannot be read (logged).
    fn stored(&self, id: &InstanceId) -> Option<Instance> {
        let read = || -> Result<Option<Instance>, StoreError> {
            let Some(i) = self.store.get::<Instance>(Tree::Instances, id.as_str())? else {
                return Ok(None);
            };
            let mut one = BTreeMap::from([(id.clone(), i)]);
            attach_history(
                &mut one,
                self.store
                    .scan_keyed(Tree::InstanceTransitions, &format!("{}/", id.as_str()))?,
            );
            Ok(one.remove(id))
        };
        read().unwrap_or_else(|e| {
            tracing::error!(instance = %id, error = %e, "cannot read an ended instance");
            None
        })
    }

    /// Gives records read from the store their history, in one scan of every
    /// instance's transitions (for reads of many records).
    fn attach_stored_history(
        &self,
        some: &mut BTreeMap<InstanceId, Instance>,
    ) -> Result<(), StoreError> {
        let keyed: Vec<_> = self
            .store
            .scan_keyed(Tree::InstanceTransitions, "")?
            .into_iter()
            .filter(|(k, _)| {
                k.split_once('/')
                    .and_then(|(id, _)| InstanceId::parse(id).ok())
                    .is_some_and(|id| some.contains_key(&id))
            })
            .collect();
        attach_history(some, keyed);
        Ok(())
    }

    /// Instances of `owner`, or everyone's when `owner` is `None`, newest first:
    /// those in memory, and the ended ones from the store (through the owner's
    /// index; everyone's by a scan of the whole tree).
    pub fn list(&self, owner: Option<&str>) -> Vec<Instance> {
        let mut v: BTreeMap<InstanceId, Instance> = self
            .lock()
            .all
            .values()
            .filter(|i| owner.is_none_or(|o| i.owner == o))
            .map(|i| (i.id.clone(), i.clone()))
            .collect();
        let from_store = || -> Result<Vec<Instance>, StoreError> {
            Ok(match owner {
                Some(o) => {
                    let prefix = format!("{o}/");
                    self.store
                        .keys(Tree::InstanceOwners, &prefix)?
                        .iter()
                        .filter_map(|k| InstanceId::parse(k.strip_prefix(&prefix)?).ok())
                        .filter(|id| !v.contains_key(id))
                        .filter_map(|id| self.stored(&id))
                        .collect()
                }
                None => {
                    let mut ended: BTreeMap<InstanceId, Instance> = self
                        .store
                        .all::<Instance>(Tree::Instances)?
                        .into_iter()
                        .filter(|i| !v.contains_key(&i.id))
                        .map(|i| (i.id.clone(), i))
                        .collect();
                    self.attach_stored_history(&mut ended)?;
                    ended.into_values().collect()
                }
            })
        };
        match from_store() {
            Ok(ended) => v.extend(ended.into_iter().map(|i| (i.id.clone(), i))),
            Err(e) => tracing::error!(error = %e, "cannot read ended instances; listing live ones"),
        }
        let mut v: Vec<Instance> = v.into_values().collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.created_ms));
        v
    }

    /// The live instances `keep` picks, newest first (ended ones are in the store,
    /// and what they spent in [`Instances::spent_in`]).
    pub fn matching(&self, keep: impl Fn(&Instance) -> bool) -> Vec<Instance> {
        let mut v: Vec<Instance> = self
            .lock()
            .all
            .values()
            .filter(|i| keep(i))
            .cloned()
            .collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.created_ms));
        v
    }

    /// What `f` picks out of each live instance, looked at in place under the
    /// table's lock (no copies): for periodic passes over everything that runs.
    /// `f` must not call back into the instance table.
    pub fn visit_live<T>(&self, mut f: impl FnMut(&Instance) -> Option<T>) -> Vec<T> {
        let inner = self.lock();
        inner
            .live
            .iter()
            .filter_map(|id| inner.all.get(id))
            .filter_map(&mut f)
            .collect()
    }

    /// What the ended runs in `group` spent, per member.
    pub fn spent_in(&self, group: &str) -> Vec<(String, Spent)> {
        self.lock().spent.members(group)
    }

    /// The groups `user` has ended runs in.
    pub fn spent_groups_of(&self, user: &str) -> std::collections::BTreeSet<String> {
        self.lock().spent.groups_of(user)
    }

    /// What the instance holding a volume's lease is doing, for the volume's rules:
    /// gone or ended (`Ended`), cut off with its host (`Unreachable`), or anything
    /// else, saving its files included (`Running`).
    pub fn lease_holder(&self, id: &str) -> crate::volumes::core::Holder {
        use crate::volumes::core::Holder;
        let Ok(id) = InstanceId::parse(id) else {
            return Holder::Ended;
        };
        let Some((state, host, had_container)) = self
            .get(&id)
            .map(|i| (i.state, i.host.clone(), i.container_seen))
        else {
            return Holder::Ended;
        };
        let standing = host.and_then(|h| self.registry.get(&h)).map(|h| h.state);
        match state {
            // Ended, but still holding the lease: its final save is not in yet.
            // An instance whose container exited by itself is `failed` at once
            // while its agent saves; until that save is in (it releases the
            // lease), a relaunch would restore an older head.
            s if s.is_terminal() => {
                if had_container && standing == Some(HostState::Active) {
                    Holder::Running
                } else {
                    Holder::Ended
                }
            }
            InstanceState::Unreachable => Holder::Unreachable,
            // A holder stopping on a lost host (waiting for it to save) must not
            // lock its owner out: a relaunch moves the lease.
            _ if standing == Some(HostState::Lost) => Holder::Unreachable,
            _ => Holder::Running,
        }
    }

    /// The host an instance is placed on, for requests to its agent.
    pub fn location(&self, id: &InstanceId) -> Option<HostId> {
        self.lock().all.get(id).and_then(|i| i.host.clone())
    }

    /// How many instances are in each state.
    pub fn count_by_state(&self) -> BTreeMap<InstanceState, usize> {
        let inner = self.lock();
        let mut m = inner.ended_out.clone();
        for i in inner.all.values() {
            *m.entry(i.state).or_default() += 1;
        }
        m
    }

    /// Instances per state and the launches waiting for a host, in one look (for
    /// the metrics).
    pub fn gauges(&self) -> (BTreeMap<InstanceState, usize>, usize) {
        let inner = self.lock();
        let mut m = BTreeMap::new();
        for i in inner.all.values() {
            *m.entry(i.state).or_default() += 1;
        }
        (m, inner.books.sched.queue_len())
    }

    /// An instance's place in the launch queue (1 = next), if it waits.
    pub fn queue_position(&self, id: &InstanceId) -> Option<usize> {
        self.lock().books.sched.position(id)
    }

    /// Reserved resources and instance count per host.
    pub fn reservations(&self) -> HashMap<HostId, (Resources, u32)> {
        let inner = self.lock();
        let s = &inner.books.sched;
        s.host_ids()
            .filter_map(|h| s.reserved(h).map(|r| (h.clone(), r)))
            .collect()
    }

    /// What the queue waits for, per pool, for the autoscaler.
    pub fn shortfall(&self) -> BTreeMap<String, Shortfall> {
        self.lock().books.sched.shortfall()
    }

    /// Sets each configured pool's placement rules.
    pub fn configure_pools(&self, pools: &[crate::config::PoolConfig]) {
        let mut inner = self.lock();
        for p in pools {
            inner.books.sched.set_pool_policy(&p.name, p.placement());
        }
    }

    // ---- the one path for changes ----

    /// Writes the record (without its history) and the transitions the store does
    /// not hold yet, each as a key of its own, in one transaction: a change costs
    /// its own size, not the size of everything that happened before.
    fn save(&self, i: &mut Instance) -> Result<(), StoreError> {
        // Transitions first: if a crash kept only a prefix of this commit, an extra
        // history entry is harmless; a record without its history's newest is not.
        let mut t = self.store.transaction();
        if i.stored_transitions == 0 {
            // A new instance (or an old record's first save since): its owner's
            // index first, so no record is ever missing from its owner's list.
            t = t.put(
                Tree::InstanceOwners,
                &owner_key(&i.owner, &i.id),
                &i.created_ms,
            )?;
        }
        for (seq, tr) in i.transitions.iter().enumerate().skip(i.stored_transitions) {
            t = t.put(Tree::InstanceTransitions, &transition_key(&i.id, seq), tr)?;
        }
        t.put(Tree::Instances, i.id.as_str(), &*i)?.commit()?;
        i.stored_transitions = i.transitions.len();
        Ok(())
    }

    /// Applies one event under the lock: the state machine, the books, the host's
    /// dirty mark, the store write.
    fn apply_locked(
        &self,
        inner: &mut Inner,
        id: &InstanceId,
        event: Event,
        now_ms: u64,
        applied: &mut Applied,
    ) {
        let placing = match &event {
            Event::Scheduled(h) => Some(h.clone()),
            _ => None,
        };
        let Some(i) = inner.all.get_mut(id) else {
            if placing.is_some() {
                inner.books.sched.release(id);
            }
            return;
        };
        let was = i.state;
        if !i.apply(event, now_ms) {
            if placing.is_some() {
                // It left the queue some other way meanwhile.
                inner.books.sched.release(id);
            }
            return;
        }
        inner.books.settle(i, was);
        if i.state.is_terminal() {
            inner.live.remove(id);
        }
        if let Some(h) = &placing {
            inner.books.placed(h, id);
        }
        if let Some(h) = &i.host {
            inner.syncs.mark(h, id);
            applied.hosts.insert(h.clone());
        }
        tracing::info!(instance = %i.id, user = %i.owner, host = ?i.host, from = ?was, to = ?i.state, reason = ?i.state_reason, "instance state changed");
        crate::metrics::instance_changed(
            was,
            i.state,
            std::time::Duration::from_millis(now_ms.saturating_sub(i.created_ms)),
        );
        let saved = match self.save(i) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(instance = %i.id, error = %e, "could not store an instance's state");
                applied.error.get_or_insert(e);
                false
            }
        };
        applied.changes.push(Change {
            id: id.clone(),
            was,
            now: i.state,
            reason: i.state_reason.clone(),
        });
        // Ended: nothing changes it again, and the store holds it (written above,
        // durable before anyone is told), so it leaves memory now.
        if saved && !i.stays_in_memory() {
            *inner.ended_out.entry(i.state).or_default() += 1;
            note_spent(&mut inner.spent, i, true);
            inner.all.remove(id);
        }
    }

    /// Makes a batch durable, then tells the touched hosts. A failed write is
    /// returned (and nothing is sent for it).
    async fn finish(&self, applied: Applied) -> Result<Vec<Change>, StoreError> {
        if let Some(e) = applied.error {
            return Err(e);
        }
        if applied.changes.is_empty() {
            return Ok(vec![]);
        }
        self.store.flush().await?;
        for h in &applied.hosts {
            self.sync_host(h, false);
        }
        Ok(applied.changes)
    }

    /// Apply → persist → sync hosts, for a batch of events.
    async fn commit(
        &self,
        events: Vec<(InstanceId, Event)>,
        now_ms: u64,
    ) -> Result<Vec<Change>, StoreError> {
        let mut applied = Applied::default();
        {
            let mut inner = self.lock();
            for (id, ev) in events {
                self.apply_locked(&mut inner, &id, ev, now_ms, &mut applied);
            }
        }
        self.finish(applied).await
    }

    // ---- operations ----

    /// Creates instance `id` of `bp` for `owner` within `limits`, mounting
    /// `datasets` (the blueprint's, versions fixed now by the caller, see
    /// [`crate::datasets::lookup::resolve_mounts`]) and writing `volume` (whose
    /// lease the caller took for `id`), and places it if the scheduler can.
    #[allow(clippy::too_many_arguments)]
    pub async fn launch(
        &self,
        id: InstanceId,
        owner: &str,
        bp: &BlueprintRecord,
        datasets: Vec<DatasetMount>,
        volume: Option<super::state::InstanceVolume>,
        limits: Admission,
        charge: Option<(super::state::Charge, QuotaCheck)>,
        now_ms: u64,
    ) -> Result<Instance, LaunchError> {
        let mut applied = Applied::default();
        let id = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            // Without a limit nothing needs counting: no walk over what runs.
            let unlimited = crate::groups::core::Limits::default();
            let limited = |l: &crate::groups::core::Limits| *l != unlimited;
            if let Some((_, q)) = charge
                .as_ref()
                .filter(|(_, q)| limited(&q.member_limits) || limited(&q.group_limits))
            {
                let runs = inner
                    .all
                    .values()
                    .filter(|i| i.charge.as_ref().is_some_and(|c| c.group == q.group))
                    .filter_map(Instance::as_run);
                let (mut mine, mut group) = crate::groups::core::usage(runs, owner, now_ms);
                mine.credits += inner.spent.of(&q.group, owner).credits;
                group.credits += inner.spent.group_total(&q.group).credits;
                crate::groups::core::check_quota(
                    (&q.member_limits, &mine),
                    (&q.group_limits, &group),
                    &q.ask,
                )
                .map_err(|e| {
                    crate::metrics::launch_refused();
                    LaunchError::Quota(format!("{e} (group {})", q.group))
                })?;
            }
            let (mine, of_bp) = inner.books.live.of(owner, &bp.spec.name);
            if of_bp >= limits.per_blueprint {
                crate::metrics::launch_refused();
                return Err(LaunchError::Limit(format!(
                    "you already have {of_bp} instance(s) of {} and its limit is {}; stop one first",
                    bp.spec.name, limits.per_blueprint
                )));
            }
            if mine >= limits.per_user {
                crate::metrics::launch_refused();
                return Err(LaunchError::Limit(format!(
                    "you already have {mine} instances, the most one user may run; stop one first"
                )));
            }
            let mut inst = Instance::new(
                id,
                owner.to_string(),
                bp.spec.name.clone(),
                bp.revision,
                bp.spec.max_lifetime_secs * 1000,
                new_secrets(bp.spec.app),
                now_ms,
            );
            inst.datasets = datasets;
            inst.volume = volume;
            inst.charge = charge.map(|(c, _)| c);
            self.save(&mut inst)?;
            let id = inst.id.clone();
            tracing::info!(instance = %id, user = %owner, blueprint = %inst.blueprint, datasets = inst.datasets.len(), "instance queued");
            crate::metrics::launch_accepted();
            inner.books.live.add(&inst);
            let placed = if inner.books.primed {
                match inner.books.sched.submit(request_of(&inst, &bp.spec)) {
                    Outcome::Placed(h) => Some(h),
                    _ => None,
                }
            } else {
                None
            };
            inner.live.insert(id.clone());
            inner.all.insert(id.clone(), inst);
            if let Some(h) = placed {
                self.apply_locked(inner, &id, Event::Scheduled(h), now_ms, &mut applied);
            }
            id
        };
        let placed = !applied.changes.is_empty();
        if placed {
            self.finish(applied).await?;
        } else {
            self.store.flush().await?;
            // Right after a start the scheduler's books are not built yet.
            if !self.lock().books.primed {
                self.schedule(now_ms).await;
            }
        }
        self.get(&id)
            .ok_or_else(|| LaunchError::Limit("the instance vanished while launching".into()))
    }

    /// Refreshes the scheduler's view of the hosts, rebuilds its books after a
    /// start, and places what the queue can place now.
    pub async fn schedule(&self, now_ms: u64) {
        // Host snapshots are rebuilt only when a host changed (or every few seconds):
        // with a thousand idle hosts, rebuilding them every tick was most of the
        // controller's idle cost.
        let snapshots: Option<Vec<_>> = self
            .due_refresh(now_ms, true)
            .then(|| self.registry.list().iter().map(snapshot).collect());
        let mut applied = Applied::default();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if let Some(snapshots) = snapshots {
                let present: std::collections::HashSet<&HostId> =
                    snapshots.iter().map(|s| &s.id).collect();
                let gone: Vec<HostId> = inner
                    .books
                    .sched
                    .host_ids()
                    .filter(|h| !present.contains(h))
                    .cloned()
                    .collect();
                for h in gone {
                    inner.books.sched.remove_host(&h);
                }
                for snap in snapshots {
                    inner.books.sched.upsert_host(snap);
                }
            }
            let mut placements = vec![];
            if !inner.books.primed {
                inner.books.primed = true;
                let mut order: Vec<&Instance> = inner.all.values().collect();
                order.sort_by_key(|i| (i.created_ms, i.id.clone()));
                for i in order {
                    let Some(spec) = self.spec_of(i) else {
                        continue;
                    };
                    let req = request_of(i, &spec);
                    if i.state.holds_host() {
                        if let Some(h) = &i.host {
                            inner.books.sched.restore(i.id.clone(), h, req.resources);
                        }
                    } else if i.state == InstanceState::Queued {
                        if let Outcome::Placed(h) = inner.books.sched.submit(req) {
                            placements.push((i.id.clone(), h));
                        }
                    }
                }
            }
            placements.extend(inner.books.sched.drain());
            for (id, h) in placements {
                self.apply_locked(inner, &id, Event::Scheduled(h), now_ms, &mut applied);
            }
        }
        if let Err(e) = self.finish(applied).await {
            tracing::error!(error = %e, "could not store placements");
        }
    }

    /// Applies what an agent reported. Reports about instances not placed on that
    /// host are ignored (the agent removes containers nobody wants).
    pub async fn on_reports(&self, host: &HostId, reports: Vec<InstanceReport>, now_ms: u64) {
        let mut applied = Applied::default();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for r in reports {
                let ours = inner
                    .all
                    .get(&r.id)
                    .is_some_and(|i| i.host.as_ref() == Some(host));
                if ours {
                    self.apply_locked(inner, &r.id, Event::Report(r.phase), now_ms, &mut applied);
                }
            }
        }
        let changes = match self.finish(applied).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%host, error = %e, "could not store reported instance states");
                return;
            }
        };
        let mut freed = changes
            .iter()
            .any(|c| c.was.holds_host() && !c.now.holds_host());
        for c in &changes {
            let launching = matches!(
                c.was,
                InstanceState::Scheduled | InstanceState::Preparing | InstanceState::Starting
            );
            let ev = match c.now {
                InstanceState::Running if launching => PoolEvent::LaunchSucceeded,
                InstanceState::Failed if launching => PoolEvent::LaunchFailed {
                    reason: c.reason.clone().unwrap_or_default(),
                },
                _ => continue,
            };
            let failed = matches!(ev, PoolEvent::LaunchFailed { .. });
            match self.registry.pool_event(host, ev, false, now_ms).await {
                // A quarantine changes where the queue can go.
                Ok(actions) if failed && !actions.is_empty() => freed = true,
                Ok(_) => {}
                Err(e) => tracing::error!(%host, error = %e, "could not record a launch result"),
            }
        }
        if freed {
            self.schedule(now_ms).await;
        }
    }

    /// Stops an instance (idempotent). `None` if there is no such instance.
    pub async fn stop(
        &self,
        id: &InstanceId,
        reason: String,
        now_ms: u64,
    ) -> Result<Option<Instance>, StoreError> {
        let changes = self
            .commit(vec![(id.clone(), Event::StopRequested { reason })], now_ms)
            .await?;
        if changes.iter().any(|c| c.now.is_terminal()) {
            // A queued instance ended at once: the queue may move.
            self.schedule(now_ms).await;
        }
        Ok(self.get(id))
    }

    /// Moves an instance's expiry; ended instances are left as they are.
    pub async fn extend(
        &self,
        id: &InstanceId,
        by_ms: u64,
    ) -> Result<Option<Instance>, StoreError> {
        let inst = {
            let mut inner = self.lock();
            let Some(i) = inner.all.get_mut(id) else {
                drop(inner);
                // Ended (or unknown): nothing to extend.
                return Ok(self.get(id));
            };
            if !i.state.is_terminal() {
                i.expires_ms = i.expires_ms.saturating_add(by_ms);
                self.save(i)?;
            }
            i.clone()
        };
        self.store.flush().await?;
        Ok(Some(inst))
    }

    /// Forgets instances that ended `keep_days` ago or more: from the store (with
    /// their history and their owners' index keys), then from memory. Returns how
    /// many. Ended instances live in the store, so this reads the whole instance
    /// tree and its history once per sweep.
    pub async fn forget_ended(&self, now_ms: u64, keep_days: u32) -> Result<usize, StoreError> {
        let mut ended: BTreeMap<InstanceId, Instance> = self
            .store
            .all::<Instance>(Tree::Instances)?
            .into_iter()
            .filter(|i| i.state.is_terminal())
            .map(|i| (i.id.clone(), i))
            .collect();
        if ended.is_empty() {
            return Ok(0);
        }
        self.attach_stored_history(&mut ended)?;
        let due: Vec<&Instance> = ended
            .values()
            .filter(|i| crate::retention::instance_due(i.ended_at(), now_ms, keep_days))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        for chunk in due.chunks(100) {
            let mut t = self.store.transaction();
            for i in chunk {
                // The record last: a crash part way leaves it listed and due again.
                for key in self
                    .store
                    .keys(Tree::InstanceTransitions, &format!("{}/", i.id.as_str()))?
                {
                    t = t.remove(Tree::InstanceTransitions, &key);
                }
                t = t.remove(Tree::InstanceOwners, &owner_key(&i.owner, &i.id));
                t = t.remove(Tree::Instances, i.id.as_str());
            }
            t.commit()?;
        }
        self.store.flush().await?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        for i in &due {
            // Ended instances never change again, so what was due still is.
            if let Some(n) = inner.ended_out.get_mut(&i.state) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.ended_out.remove(&i.state);
                }
            }
            note_spent(&mut inner.spent, i, false);
        }
        Ok(due.len())
    }

    /// Whether the scheduler's snapshots (`snapshots`) or the pre-fetch plans are
    /// stale at `now_ms`: a host or blueprint changed since they were built, or
    /// [`REFRESH_MS`] passed. Marks them rebuilt if so.
    fn due_refresh(&self, now_ms: u64, snapshots: bool) -> bool {
        let shape = self.registry.shape();
        let catalog = self.blueprints.generation();
        let mut r = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        if snapshots {
            let due = r
                .snapshots
                .is_none_or(|(s, at)| s != shape || now_ms.saturating_sub(at) >= REFRESH_MS);
            if due {
                r.snapshots = Some((shape, now_ms));
            }
            due
        } else {
            let due = r.plans.is_none_or(|(s, c, at)| {
                s != shape || c != catalog || now_ms.saturating_sub(at) >= REFRESH_MS
            });
            if due {
                r.plans = Some((shape, catalog, now_ms));
            }
            due
        }
    }

    /// Time-driven work: host standings (quarantines ending, drains finishing or
    /// reaching their deadline), the pre-pull plan, lost hosts, lifetimes, start
    /// time-outs, and waiting launches. What is due for each instance is decided by
    /// the state machine ([`Instance::due`]).
    pub async fn tick(&self, now_ms: u64) {
        let counts: HashMap<HostId, u32> = {
            let inner = self.lock();
            let mut m = HashMap::new();
            let live = inner.live.iter().filter_map(|id| inner.all.get(id));
            for i in live.filter(|i| i.state.holds_host()) {
                if let Some(h) = &i.host {
                    *m.entry(h.clone()).or_insert(0) += 1;
                }
            }
            m
        };
        match self.registry.pool_tick(now_ms, &counts).await {
            Ok(actions) => {
                for (host, a) in actions {
                    if a == PoolAction::StopRemaining {
                        self.stop_all_on(&host, now_ms).await;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "host standing update failed"),
        }
        if self.due_refresh(now_ms, false) {
            self.sync_images(&self.registry.list());
        }
        let standing: HashMap<HostId, HostState> = self.registry.states();
        let watchdog = self.config.start_timeout_ms + 60_000;
        let mut applied = Applied::default();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let due: Vec<(InstanceId, Event)> = inner
                .live
                .iter()
                .filter_map(|id| inner.all.get(id))
                .filter_map(|i| {
                    let host = i.host.as_ref().and_then(|h| standing.get(h).copied());
                    i.due(now_ms, host, watchdog).map(|e| (i.id.clone(), e))
                })
                .collect();
            for (id, ev) in due {
                self.apply_locked(inner, &id, ev, now_ms, &mut applied);
            }
        }
        if let Err(e) = self.finish(applied).await {
            tracing::error!(error = %e, "could not store time-driven instance changes");
        }
        self.schedule(now_ms).await;
    }

    /// Stops every instance still on a host whose drain deadline passed.
    async fn stop_all_on(&self, host: &HostId, now_ms: u64) {
        let ids: Vec<InstanceId> = {
            let inner = self.lock();
            inner
                .live
                .iter()
                .filter_map(|id| inner.all.get(id))
                .filter(|i| i.host.as_ref() == Some(host) && !i.state.is_terminal())
                .filter(|i| i.state != InstanceState::Stopping)
                .map(|i| i.id.clone())
                .collect()
        };
        for id in ids {
            tracing::info!(instance = %id, %host, "stopping: the host's drain deadline passed");
            let reason = "its host was drained and the deadline passed".to_string();
            if let Err(e) = self.stop(&id, reason, now_ms).await {
                tracing::error!(instance = %id, error = %e, "could not stop an instance on a drained host");
            }
        }
    }

    // ---- desired state ----

    fn spec_of(&self, i: &Instance) -> Option<BlueprintSpec> {
        let key = (i.blueprint.clone(), i.revision);
        let cache = || self.specs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache().get(&key) {
            return Some(s.clone());
        }
        match self.blueprints.revision(&i.blueprint, i.revision) {
            Ok(Some(r)) => {
                cache().insert(key, r.spec.clone());
                Some(r.spec)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(instance = %i.id, error = %e, "cannot read blueprint revision");
                None
            }
        }
    }

    fn desired_of(&self, i: &Instance) -> Option<DesiredInstance> {
        let spec = self.spec_of(i)?;
        Some(desired_of(i, &spec, self.config.start_timeout_ms))
    }

    /// Sends `host` what changed in its desired instances: everything when `full`
    /// (a new connection, a resync), else only what changed since the last update.
    pub fn sync_host(&self, host: &HostId, full: bool) {
        let update = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let placed = inner.books.by_host.entry(host.clone()).or_default();
            inner.syncs.update(
                host,
                full,
                placed,
                &inner.all,
                |i| self.desired_of(i),
                || {
                    self.images
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .for_host(host)
                },
                || {
                    self.prefetch
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .for_host(host)
                },
            )
        };
        if let Some(u) = update {
            if !self.registry.send(host, ControllerMsg::Desired(u)) {
                // Not connected: the next connection starts with the full set.
                self.lock().syncs.forget(host);
            }
        }
    }

    /// A host (re)connected: it gets its full set.
    pub fn host_connected(&self, host: &HostId) {
        self.sync_host(host, true);
    }

    /// Recomputes the pre-pull and dataset pre-fetch plans and sends each connected
    /// host whose sets changed its new sets. Level-triggered: called every tick, so
    /// a new blueprint, a refreshed digest, a newly pushed dataset version or a new
    /// host reaches agents within one.
    fn sync_images(&self, hosts: &[crate::hosts::HostView]) {
        let blueprints = match self.blueprints.list() {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "cannot read blueprints for the pre-pull plan");
                return;
            }
        };
        let plan = ImagePlan::compute(&blueprints, hosts, self.credentials.clone());
        let datasets = DatasetPlan::compute(&blueprints, hosts, &self.dataset_lookup());
        let sends = self
            .lock()
            .syncs
            .prefetch_updates(|h| plan.for_host(h), |h| datasets.for_host(h));
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) = plan;
        *self.prefetch.lock().unwrap_or_else(|p| p.into_inner()) = datasets;
        for (host, u) in sends {
            if !self.registry.send(&host, ControllerMsg::Desired(u)) {
                self.lock().syncs.forget(&host);
            }
        }
    }
}
