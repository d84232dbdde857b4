//! The instance manager: launches, placement, the desired state sent to each host,
//! agent reports, lifetimes and time-outs.
//!
//! All instances live in memory behind one lock and in the store. Every change is
//! written before anything depends on it; a change that alters what a host should run
//! is followed by [`Instances::sync_host`], which sends that host the difference (the
//! full set on connection or when the agent asks).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use cairn_shared::ids::{HostId, InstanceId};
use cairn_shared::images::{DesiredImages, ImageSpec, RegistryCredential};
use cairn_shared::protocol::ControllerMsg;
use cairn_shared::workload::{DesiredInstance, DesiredUpdate, InstanceReport, Probe};

use crate::images::plan::{HostImages, WantedImage};
use crate::images::reference::Reference;

use super::state::{AppSecrets, Event, Instance, InstanceState};
use crate::app::App;
use crate::auth;
use crate::blueprints::spec::{AppKind, BlueprintSpec};
use crate::config::InstancesConfig;
use crate::hosts::pool::{PoolAction, PoolEvent};
use crate::hosts::HostState;
use crate::scheduler::{HostSnapshot, Outcome, Request, Resources, Scheduler};
use crate::store::{Store, StoreError, Tree};
use crate::users::Principal;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no blueprint named {0:?}")]
    NoBlueprint(String),
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default)]
struct HostSync {
    version: u64,
    sent: BTreeMap<InstanceId, DesiredInstance>,
    /// Instances changed since the last update.
    dirty: std::collections::BTreeSet<InstanceId>,
    /// The image set last sent.
    images_sent: Option<DesiredImages>,
}

/// Marks an instance changed, for its host's next update.
fn dirty(hosts: &mut HashMap<HostId, HostSync>, host: &HostId, id: &InstanceId) {
    hosts
        .entry(host.clone())
        .or_default()
        .dirty
        .insert(id.clone());
}

#[derive(Debug, Default)]
struct Inner {
    all: BTreeMap<InstanceId, Instance>,
    hosts: HashMap<HostId, HostSync>,
    /// Reservations and the queue. Rebuilt from `all` on the first pass after start
    /// (`primed`), then kept in step with every transition.
    sched: Scheduler,
    primed: bool,
    /// Instances placed on each host (pruned as they end), so syncing one host's
    /// desired state never scans every instance.
    by_host: HashMap<HostId, std::collections::BTreeSet<InstanceId>>,
    /// Unfinished instances per owner and per (owner, blueprint), for the limits
    /// checked at every launch without a scan of every instance.
    live: Live,
}

#[derive(Debug, Default)]
struct Live {
    by_owner: HashMap<String, u32>,
    by_blueprint: HashMap<(String, String), u32>,
}

impl Live {
    fn add(&mut self, i: &Instance) {
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
    fn of(&self, owner: &str, blueprint: &str) -> (u32, u32) {
        (
            self.by_owner.get(owner).copied().unwrap_or(0),
            self.by_blueprint
                .get(&(owner.to_string(), blueprint.to_string()))
                .copied()
                .unwrap_or(0),
        )
    }
}

/// Keeps the scheduler's books in step with one instance's transition.
fn settle(sched: &mut Scheduler, live: &mut Live, i: &Instance, was: InstanceState) {
    if !was.is_terminal() && i.state.is_terminal() {
        live.remove(i);
    }
    let left_host = was.holds_host() && !i.state.holds_host();
    let left_queue = was == InstanceState::Queued && i.state != InstanceState::Queued;
    if left_host || (left_queue && !i.state.holds_host()) {
        sched.release(&i.id);
    }
}

/// All instances of this controller.
#[derive(Debug)]
pub struct Instances {
    store: Store,
    config: InstancesConfig,
    inner: Mutex<Inner>,
    /// Blueprint revisions never change once saved, so they are read once.
    specs: Mutex<HashMap<(String, u32), BlueprintSpec>>,
    /// The pre-pull plan last computed, and the registry logins agents pull with.
    images: Mutex<ImagePlan>,
}

#[derive(Debug, Default)]
struct ImagePlan {
    per_host: BTreeMap<HostId, Vec<ImageSpec>>,
    credentials: Vec<RegistryCredential>,
}

impl ImagePlan {
    fn for_host(&self, host: &HostId) -> DesiredImages {
        DesiredImages {
            prepull: self.per_host.get(host).cloned().unwrap_or_default(),
            credentials: self.credentials.clone(),
        }
    }
}

/// The base path of an instance behind the controller's proxy.
pub fn base_url(id: &InstanceId) -> String {
    format!("/i/{id}/")
}

impl Instances {
    pub fn load(store: Store, config: InstancesConfig) -> Result<Self, StoreError> {
        let all: BTreeMap<InstanceId, Instance> = store
            .all::<Instance>(Tree::Instances)?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        Ok(Instances {
            store,
            config,
            specs: Mutex::new(HashMap::new()),
            images: Mutex::new(ImagePlan::default()),
            inner: Mutex::new(Inner {
                by_host: {
                    let mut m: HashMap<HostId, std::collections::BTreeSet<InstanceId>> =
                        HashMap::new();
                    for i in all.values().filter(|i| !i.state.is_terminal()) {
                        if let Some(h) = &i.host {
                            m.entry(h.clone()).or_default().insert(i.id.clone());
                        }
                    }
                    m
                },
                live: {
                    let mut live = Live::default();
                    for i in all.values().filter(|i: &&Instance| !i.state.is_terminal()) {
                        live.add(i);
                    }
                    live
                },
                all,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, i: &Instance) -> Result<(), StoreError> {
        self.store.put(Tree::Instances, i.id.as_str(), i)
    }

    /// An instance the principal may see: their own, or any for an admin.
    pub fn visible(&self, p: &Principal, id: &InstanceId) -> Option<Instance> {
        self.lock()
            .all
            .get(id)
            .filter(|i| p.is_admin() || i.owner == p.name())
            .cloned()
    }

    pub fn get(&self, id: &InstanceId) -> Option<Instance> {
        self.lock().all.get(id).cloned()
    }

    /// The principal's instances, or everyone's for an admin asking for `all`.
    pub fn list(&self, p: &Principal, all: bool) -> Vec<Instance> {
        let mut v: Vec<Instance> = self
            .lock()
            .all
            .values()
            .filter(|i| (all && p.is_admin()) || i.owner == p.name())
            .cloned()
            .collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.created_ms));
        v
    }

    /// Creates an instance of `blueprint` for `p` and tries to place it.
    pub async fn launch(
        &self,
        app: &App,
        p: &Principal,
        blueprint: &str,
        now_ms: u64,
    ) -> Result<Instance, LaunchError> {
        let bp = app
            .blueprints
            .get(blueprint)?
            .filter(|b| b.spec.enabled)
            .ok_or_else(|| LaunchError::NoBlueprint(blueprint.to_string()))?;
        let secrets = match bp.spec.app {
            AppKind::Jupyter => AppSecrets {
                jupyter_token: Some(auth::random_secret(24)),
                rstudio_password: None,
            },
            AppKind::Rstudio => AppSecrets {
                jupyter_token: None,
                rstudio_password: Some(auth::random_secret(12)),
            },
            AppKind::Http => AppSecrets::default(),
        };
        let inst = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let (mine, of_bp) = inner.live.of(p.name(), &bp.spec.name);
            if of_bp >= bp.spec.max_instances_per_user {
                return Err(LaunchError::Limit(format!(
                    "you already have {of_bp} instance(s) of {} and its limit is {}; stop one first",
                    bp.spec.name, bp.spec.max_instances_per_user
                )));
            }
            if mine >= self.config.max_per_user {
                return Err(LaunchError::Limit(format!(
                    "you already have {mine} instances, the most one user may run; stop one first"
                )));
            }
            let inst = Instance::new(
                InstanceId::generate(),
                p.name().to_string(),
                bp.spec.name.clone(),
                bp.revision,
                bp.spec.max_lifetime_secs * 1000,
                secrets,
                now_ms,
            );
            let mut inst = inst;
            let mut placed_on = None;
            if inner.primed {
                if let Outcome::Placed(h) = inner.sched.submit(request_of(&inst, &bp.spec)) {
                    if inst.apply(Event::Scheduled(h.clone()), now_ms) {
                        inner
                            .by_host
                            .entry(h.clone())
                            .or_default()
                            .insert(inst.id.clone());
                        dirty(&mut inner.hosts, &h, &inst.id);
                        placed_on = Some(h);
                    }
                }
            }
            self.save(&inst)?;
            inner.live.add(&inst);
            inner.all.insert(inst.id.clone(), inst.clone());
            (inst, placed_on)
        };
        let (inst, placed_on) = inst;
        self.store.flush().await?;
        match &placed_on {
            Some(h) => {
                tracing::info!(instance = %inst.id, user = %inst.owner, blueprint = %inst.blueprint, host = %h, "instance scheduled");
                self.sync_host(app, h, false);
            }
            None => {
                tracing::info!(instance = %inst.id, user = %inst.owner, blueprint = %inst.blueprint, "instance queued");
                // Right after a start the scheduler's books are not built yet.
                self.schedule(app, now_ms).await;
                return Ok(self.get(&inst.id).unwrap_or(inst));
            }
        }
        Ok(inst)
    }

    /// Refreshes the scheduler's view of the hosts, rebuilds its books after a
    /// start, and places what the queue can place now.
    pub async fn schedule(&self, app: &App, now_ms: u64) {
        let snapshots: Vec<HostSnapshot> = app.registry.list().iter().map(snapshot).collect();
        let mut touched = vec![];
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            let known: Vec<HostId> = inner.sched.host_ids().cloned().collect();
            for h in known {
                if !snapshots.iter().any(|s| s.id == h) {
                    inner.sched.remove_host(&h);
                }
            }
            for snap in snapshots {
                inner.sched.upsert_host(snap);
            }
            let mut placements = vec![];
            if !inner.primed {
                inner.primed = true;
                let mut order: Vec<&Instance> = inner.all.values().collect();
                order.sort_by_key(|i| (i.created_ms, i.id.clone()));
                for i in order {
                    let Some(spec) = self.spec_of(app, i) else {
                        continue;
                    };
                    let req = request_of(i, &spec);
                    if i.state.holds_host() {
                        if let Some(h) = &i.host {
                            inner.sched.restore(i.id.clone(), h, req.resources);
                        }
                    } else if i.state == InstanceState::Queued {
                        if let Outcome::Placed(h) = inner.sched.submit(req) {
                            placements.push((i.id.clone(), h));
                        }
                    }
                }
            }
            placements.extend(inner.sched.drain());
            for (id, h) in placements {
                if let Some(i) = inner.all.get_mut(&id) {
                    if i.apply(Event::Scheduled(h.clone()), now_ms) {
                        inner
                            .by_host
                            .entry(h.clone())
                            .or_default()
                            .insert(id.clone());
                        dirty(&mut inner.hosts, &h, &id);
                        tracing::info!(instance = %id, host = %h, "instance scheduled");
                        if let Err(e) = self.save(i) {
                            tracing::error!(error = %e, "could not store the placement");
                        }
                        touched.push(h);
                    } else {
                        // It left the queue some other way meanwhile.
                        inner.sched.release(&id);
                    }
                }
            }
        }
        if !touched.is_empty() {
            let _ = self.store.flush().await;
            touched.sort();
            touched.dedup();
            for h in touched {
                self.sync_host(app, &h, false);
            }
        }
    }

    /// Sets each configured pool's placement rules.
    pub fn configure_pools(&self, pools: &[crate::config::PoolConfig]) {
        let mut inner = self.lock();
        for p in pools {
            inner.sched.set_pool_policy(&p.name, p.placement());
        }
    }

    /// How many instances are in each state.
    pub fn count_by_state(&self) -> BTreeMap<InstanceState, usize> {
        let mut m = BTreeMap::new();
        for i in self.lock().all.values() {
            *m.entry(i.state).or_default() += 1;
        }
        m
    }

    /// An instance's place in the launch queue (1 = next), if it waits.
    pub fn queue_position(&self, id: &InstanceId) -> Option<usize> {
        self.lock().sched.position(id)
    }

    /// Reserved resources and instance count per host.
    pub fn reservations(&self) -> HashMap<HostId, (Resources, u32)> {
        let inner = self.lock();
        inner
            .sched
            .host_ids()
            .filter_map(|h| inner.sched.reserved(h).map(|r| (h.clone(), r)))
            .collect()
    }

    /// What the queue waits for, per pool, for the autoscaler.
    pub fn shortfall(&self) -> BTreeMap<String, crate::scheduler::Shortfall> {
        self.lock().sched.shortfall()
    }

    fn spec_of(&self, app: &App, i: &Instance) -> Option<BlueprintSpec> {
        let key = (i.blueprint.clone(), i.revision);
        if let Some(s) = self
            .specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(s.clone());
        }
        match app.blueprints.revision(&i.blueprint, i.revision) {
            Ok(Some(r)) => {
                self.specs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, r.spec.clone());
                Some(r.spec)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read blueprint revision");
                None
            }
        }
    }

    fn desired_of(&self, app: &App, i: &Instance) -> Option<DesiredInstance> {
        let spec = self.spec_of(app, i)?;
        let base = base_url(&i.id);
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("CAIRN_INSTANCE".into(), i.id.to_string()));
        env.push(("CAIRN_BASE_URL".into(), base.clone()));
        if let Some(t) = &i.secrets.jupyter_token {
            env.push(("JUPYTER_TOKEN".into(), t.clone()));
            // Jupyter has no environment variable for its base URL; the Jupyter
            // Docker Stacks images pass NOTEBOOK_ARGS to the server, and Cairn's own
            // images read CAIRN_BASE_URL.
            env.push((
                "NOTEBOOK_ARGS".into(),
                format!("--ServerApp.base_url={base}"),
            ));
        }
        if let Some(p) = &i.secrets.rstudio_password {
            env.push(("PASSWORD".into(), p.clone()));
        }
        let probe = match spec.app {
            AppKind::Jupyter => Probe::Http { path: base },
            AppKind::Http => Probe::Http { path: "/".into() },
            AppKind::Rstudio => Probe::Tcp,
        };
        Some(DesiredInstance {
            id: i.id.clone(),
            owner: i.owner.clone(),
            blueprint: i.blueprint.clone(),
            revision: i.revision,
            image: spec.run_image().to_string(),
            image_source: spec.image_source(),
            command: spec.command,
            env,
            memory_bytes: spec.memory_mib * MIB,
            nano_cpus: (spec.cpus * 1e9) as u64,
            app_port: spec.app_port,
            probe,
            start_timeout_ms: self.config.start_timeout_ms,
            expect_existing: i.container_seen,
        })
    }

    /// Sends `host` what changed in its desired instances: everything when `full` (a
    /// new connection, a resync), else only the instances marked dirty since the
    /// last update, so a launch costs one instance's work, not the whole host's.
    pub fn sync_host(&self, app: &App, host: &HostId, full: bool) {
        let msg = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let sync = inner.hosts.entry(host.clone()).or_default();
            let full = full || sync.version == 0;
            let dirty = std::mem::take(&mut sync.dirty);
            let placed = inner.by_host.entry(host.clone()).or_default();
            let mut upsert = vec![];
            let mut remove = vec![];
            if full {
                // Ended instances leave the index here.
                placed.retain(|id| {
                    inner
                        .all
                        .get(id)
                        .is_some_and(|i| !i.state.is_terminal() && i.host.as_ref() == Some(host))
                });
                let want: BTreeMap<InstanceId, DesiredInstance> = placed
                    .iter()
                    .filter_map(|id| inner.all.get(id))
                    .filter(|i| i.state.desired_on_host())
                    .filter_map(|i| self.desired_of(app, i).map(|d| (i.id.clone(), d)))
                    .collect();
                upsert = want.values().cloned().collect();
                sync.sent = want;
            } else {
                for id in dirty {
                    let desired = inner
                        .all
                        .get(&id)
                        .filter(|i| i.host.as_ref() == Some(host) && i.state.desired_on_host())
                        .and_then(|i| self.desired_of(app, i));
                    match desired {
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
                            if inner.all.get(&id).is_none_or(|i| i.state.is_terminal()) {
                                placed.remove(&id);
                            }
                        }
                    }
                }
                if upsert.is_empty() && remove.is_empty() {
                    return;
                }
            }
            sync.version += 1;
            let images = full.then(|| {
                self.images
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .for_host(host)
            });
            if images.is_some() {
                sync.images_sent = images.clone();
            }
            ControllerMsg::Desired(DesiredUpdate {
                version: sync.version,
                full,
                upsert,
                remove,
                images,
            })
        };
        if !app.registry.send(host, msg) {
            // Not connected: the next connection starts with the full set.
            self.lock().hosts.remove(host);
        }
    }

    /// A host (re)connected: it gets its full set.
    pub fn host_connected(&self, app: &App, host: &HostId) {
        self.sync_host(app, host, true);
    }

    /// Recomputes the pre-pull plan from the enabled blueprints and the hosts, and
    /// sends each connected host whose image set changed its new set (a desired-state
    /// update with no instance changes). Level-triggered: called every tick, so a new
    /// blueprint, a refreshed digest or a new host reaches agents within one.
    pub fn sync_images(&self, app: &App, hosts: &[crate::hosts::HostView]) {
        let wanted: Vec<WantedImage> = match app.blueprints.list() {
            Ok(list) => list
                .into_iter()
                .filter(|b| b.spec.enabled)
                .map(|b| WantedImage {
                    image: ImageSpec {
                        reference: b.spec.run_image().to_string(),
                        source: b.spec.image_source(),
                    },
                    prepull: b.spec.prepull,
                    placement: b.spec.placement.clone(),
                    blueprint: b.spec.name,
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read blueprints for the pre-pull plan");
                return;
            }
        };
        let views: Vec<HostImages> = hosts
            .iter()
            .filter(|h| h.pool.standing != crate::hosts::pool::Standing::Removed)
            .map(|h| HostImages {
                id: h.id.clone(),
                labels: h.labels.clone(),
                eligible: h.connected && h.state == HostState::Active && h.pool.open(),
                present: present_images(h),
            })
            .collect();
        let plan = ImagePlan {
            per_host: crate::images::plan::plan(&wanted, &views),
            credentials: crate::images::registry::credentials(&app.config.images),
        };
        let mut sends = vec![];
        {
            let mut inner = self.lock();
            for (host, sync) in inner.hosts.iter_mut().filter(|(_, s)| s.version > 0) {
                let want = plan.for_host(host);
                if sync.images_sent.as_ref() == Some(&want) {
                    continue;
                }
                tracing::info!(%host, images = want.prepull.len(), "sending the host's pre-pull set");
                sync.version += 1;
                sync.images_sent = Some(want.clone());
                sends.push((
                    host.clone(),
                    ControllerMsg::Desired(DesiredUpdate {
                        version: sync.version,
                        full: false,
                        upsert: vec![],
                        remove: vec![],
                        images: Some(want),
                    }),
                ));
            }
        }
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) = plan;
        for (host, msg) in sends {
            if !app.registry.send(&host, msg) {
                self.lock().hosts.remove(&host);
            }
        }
    }

    /// Applies what an agent reported. Reports about instances not placed on that host
    /// are ignored (the agent removes containers nobody wants).
    pub async fn on_reports(
        &self,
        app: &App,
        host: &HostId,
        reports: Vec<InstanceReport>,
        now_ms: u64,
    ) {
        let mut changed = false;
        let mut freed = false;
        let mut launches = vec![];
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for r in reports {
                let Some(i) = inner.all.get_mut(&r.id) else {
                    continue;
                };
                if i.host.as_ref() != Some(host) {
                    continue;
                }
                let was = i.state;
                if i.apply(Event::Report(r.phase), now_ms) {
                    settle(&mut inner.sched, &mut inner.live, i, was);
                    dirty(&mut inner.hosts, host, &i.id);
                    let launching = matches!(
                        was,
                        InstanceState::Scheduled
                            | InstanceState::Preparing
                            | InstanceState::Starting
                    );
                    if launching && i.state == InstanceState::Running {
                        launches.push(PoolEvent::LaunchSucceeded);
                    } else if launching && i.state == InstanceState::Failed {
                        launches.push(PoolEvent::LaunchFailed {
                            reason: i.state_reason.clone().unwrap_or_default(),
                        });
                    }
                    tracing::info!(instance = %i.id, from = ?was, to = ?i.state, reason = ?i.state_reason, "instance state changed");
                    if let Err(e) = self.save(i) {
                        tracing::error!(error = %e, "could not store instance state");
                    }
                    changed = true;
                    freed |= was.holds_host() && !i.state.holds_host();
                }
            }
        }
        if changed {
            let _ = self.store.flush().await;
            self.sync_host(app, host, false);
        }
        for ev in launches {
            let failed = matches!(ev, PoolEvent::LaunchFailed { .. });
            match app.registry.pool_event(host, ev, false, now_ms).await {
                // A quarantine changes where the queue can go.
                Ok(actions) if failed && !actions.is_empty() => freed = true,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not record a launch result"),
            }
        }
        if freed {
            self.schedule(app, now_ms).await;
        }
    }

    /// Applies `event` to one instance the principal may act on.
    async fn act(
        &self,
        app: &App,
        id: &InstanceId,
        event: Event,
        now_ms: u64,
    ) -> Result<Option<Instance>, StoreError> {
        let (inst, host) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let Some(i) = inner.all.get_mut(id) else {
                return Ok(None);
            };
            let was = i.state;
            if i.apply(event, now_ms) {
                settle(&mut inner.sched, &mut inner.live, i, was);
                if let Some(h) = &i.host {
                    dirty(&mut inner.hosts, h, &i.id);
                }
                self.save(i)?;
            }
            (i.clone(), i.host.clone())
        };
        self.store.flush().await?;
        if let Some(h) = host {
            self.sync_host(app, &h, false);
        }
        Ok(Some(inst))
    }

    /// Stops an instance (idempotent).
    pub async fn stop(
        &self,
        app: &App,
        id: &InstanceId,
        reason: String,
        now_ms: u64,
    ) -> Result<Option<Instance>, StoreError> {
        let r = self
            .act(app, id, Event::StopRequested { reason }, now_ms)
            .await?;
        if r.as_ref().is_some_and(|i| i.state.is_terminal()) {
            self.schedule(app, now_ms).await;
        }
        Ok(r)
    }

    /// Moves an instance's expiry.
    pub async fn extend(
        &self,
        id: &InstanceId,
        by_ms: u64,
    ) -> Result<Option<Instance>, StoreError> {
        let inst = {
            let mut inner = self.lock();
            let Some(i) = inner.all.get_mut(id) else {
                return Ok(None);
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

    /// Time-driven work: lifetimes, start time-outs, lost hosts, host standings
    /// (quarantines ending, drains finishing or reaching their deadline), waiting
    /// launches.
    pub async fn tick(&self, app: &App, now_ms: u64) {
        let counts: HashMap<HostId, u32> = {
            let inner = self.lock();
            let mut m = HashMap::new();
            for i in inner.all.values().filter(|i| i.state.holds_host()) {
                if let Some(h) = &i.host {
                    *m.entry(h.clone()).or_insert(0) += 1;
                }
            }
            m
        };
        match app.registry.pool_tick(now_ms, &counts).await {
            Ok(actions) => {
                for (host, a) in actions {
                    if a == PoolAction::StopRemaining {
                        self.stop_all_on(app, &host, now_ms).await;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "host standing update failed"),
        }
        let views = app.registry.list();
        self.sync_images(app, &views);
        let lost: Vec<HostId> = views
            .into_iter()
            .filter(|h| h.state == HostState::Lost)
            .map(|h| h.id)
            .collect();
        let watchdog = self.config.start_timeout_ms + 60_000;
        let mut hosts = vec![];
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for i in inner.all.values_mut().filter(|i| !i.state.is_terminal()) {
                let event = if i.host.as_ref().is_some_and(|h| lost.contains(h)) {
                    Some(Event::HostLost)
                } else if now_ms >= i.expires_ms && i.state != InstanceState::Stopping {
                    Some(Event::StopRequested {
                        reason: "its lifetime ran out".into(),
                    })
                } else if matches!(
                    i.state,
                    InstanceState::Scheduled | InstanceState::Preparing | InstanceState::Starting
                ) && i
                    .transitions
                    .last()
                    .is_some_and(|t| now_ms.saturating_sub(t.at_ms) > watchdog)
                {
                    Some(Event::StartTimeout)
                } else {
                    None
                };
                if let Some(ev) = event {
                    let was = i.state;
                    if i.apply(ev, now_ms) {
                        settle(&mut inner.sched, &mut inner.live, i, was);
                        if let Some(h) = &i.host {
                            dirty(&mut inner.hosts, h, &i.id);
                        }
                        tracing::info!(instance = %i.id, state = ?i.state, reason = ?i.state_reason, "instance state changed");
                        if let Err(e) = self.save(i) {
                            tracing::error!(error = %e, "could not store instance state");
                        }
                        if let Some(h) = &i.host {
                            hosts.push(h.clone());
                        }
                    }
                }
            }
        }
        if !hosts.is_empty() {
            let _ = self.store.flush().await;
            hosts.sort();
            hosts.dedup();
            for h in hosts {
                self.sync_host(app, &h, false);
            }
        }
        self.schedule(app, now_ms).await;
    }

    /// Stops every instance still on a host whose drain deadline passed.
    async fn stop_all_on(&self, app: &App, host: &HostId, now_ms: u64) {
        let ids: Vec<InstanceId> = self
            .lock()
            .all
            .values()
            .filter(|i| i.host.as_ref() == Some(host) && !i.state.is_terminal())
            .filter(|i| i.state != InstanceState::Stopping)
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            tracing::info!(instance = %id, %host, "stopping: the host's drain deadline passed");
            let reason = "its host was drained and the deadline passed".to_string();
            if let Err(e) = self.stop(app, &id, reason, now_ms).await {
                tracing::error!(error = %e, "could not stop an instance on a drained host");
            }
        }
    }

    /// The host and id to ask for an instance's logs.
    pub fn location(&self, id: &InstanceId) -> Option<HostId> {
        self.lock().all.get(id).and_then(|i| i.host.clone())
    }
}

/// The scheduler's request for an instance of `spec`.
fn request_of(i: &Instance, spec: &BlueprintSpec) -> Request {
    Request {
        instance: i.id.clone(),
        resources: Resources::new(spec.memory_mib * MIB, (spec.cpus * 1000.0).round() as u64),
        labels: spec.placement.clone(),
        image: spec.run_image().to_string(),
        strategy: spec.strategy,
        priority: 0,
    }
}

/// Every name a host's images answer to, as agents report them: tags, image ids
/// (uploaded images run by id) and digest references (registry images run by
/// digest), so the scheduler's image bonus and the pre-pull plan see what is really
/// there.
fn present_images(h: &crate::hosts::HostView) -> std::collections::BTreeSet<String> {
    match &h.runtime {
        Some(cairn_shared::resources::RuntimeFacts::Docker(d)) => d
            .images
            .iter()
            .flat_map(|i| {
                i.tags
                    .iter()
                    .chain(&i.repo_digests)
                    .cloned()
                    .chain([i.id.clone()])
            })
            .flat_map(|name| {
                // Docker reports Docker Hub digests without `docker.io/library/`;
                // blueprints run the canonical form.
                let canonical = Reference::parse(&name).ok().and_then(|r| {
                    r.digest()
                        .map(|d| r.canonical_digest_reference(d))
                        .filter(|c| *c != name)
                });
                [Some(name), canonical].into_iter().flatten()
            })
            .collect(),
        _ => Default::default(),
    }
}

/// The scheduler's view of a host from the registry.
fn snapshot(h: &crate::hosts::HostView) -> HostSnapshot {
    let images = present_images(h);
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
        isolated: h.isolation.is_enforced(),
        capacity: h
            .capacity
            .as_ref()
            .map(|c| Resources::new(c.memory_total_bytes, u64::from(c.cpus) * 1000))
            .unwrap_or_default(),
        labels: h.labels.clone(),
        images,
        recent_failures: h.pool.consecutive_failures,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_shared::resources::{DockerFacts, ImageInfo, RuntimeFacts};

    #[test]
    fn a_host_holds_an_image_by_tag_id_and_canonical_digest() {
        let digest = format!("sha256:{}", "1".repeat(64));
        let mut r = crate::hosts::HostRecord::new(HostId::generate(), "h".into(), "t".into(), 0, 0);
        r.runtime = Some(RuntimeFacts::Docker(DockerFacts {
            images: vec![ImageInfo {
                id: "sha256:abc".into(),
                tags: vec!["python:3.11".into()],
                // Docker's short form for a Docker Hub image pulled by digest.
                repo_digests: vec![format!("python@{digest}")],
                size_bytes: 1,
                created_unix: 0,
            }],
            ..Default::default()
        }));
        let present = present_images(&crate::hosts::HostView::from(&r));
        for name in [
            "python:3.11".to_string(),
            "sha256:abc".to_string(),
            format!("python@{digest}"),
            // What a blueprint resolved through Docker Hub runs.
            format!("docker.io/library/python@{digest}"),
        ] {
            assert!(present.contains(&name), "{name} in {present:?}");
        }
        // The scheduler sees the same set.
        let snap = snapshot(&crate::hosts::HostView::from(&r));
        assert!(snap
            .images
            .contains(&format!("docker.io/library/python@{digest}")));
    }
}
