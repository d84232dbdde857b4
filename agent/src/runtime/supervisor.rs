//! The supervisor: applies desired state, runs the planner every pass, carries out
//! its actions as tasks, probes apps until they answer, and queues reports for the
//! link.
//!
//! It runs whether or not the controller is reachable: a host keeps its instances
//! running through a controller restart, and on reconnection the link sends the
//! supervisor's full view ([`Workloads::snapshot`]) before any change.
//!
//! Before it creates a container it makes the instance's image present through its
//! [`ImageManager`], reporting the pull as `Preparing { detail: "pulling 35%" }`.
//! The desired image set in updates goes to the same manager, which pre-pulls it;
//! the supervisor itself knows nothing of registries or Docker.
//!
//! Container creates wait their turn in the host's [`HostQueue`] (a few at a time),
//! reporting `Preparing { detail: "waiting for the host (12 ahead)" }` meanwhile. A
//! create the engine did not answer in time is tried again, after a pause, once
//! what the lost attempt left is known: a running container is adopted, a
//! half-made one removed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::ids::InstanceId;
use cairn_shared::images::{ImageSpec, PullPhase, PullProgress};
use cairn_shared::resources::Isolation;
use cairn_shared::workload::{
    DesiredInstance, DesiredUpdate, InstancePhase, InstanceReport, Probe,
};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Action, Memory};
use super::queue::{self, HostQueue};
use super::{ContainerRuntime, DatasetBind, RuntimeError};
use crate::datasets::DatasetCache;
use crate::images::ImageManager;
use crate::state::ImagesSettings;
use crate::volumes::VolumeKeeper;

/// How often the supervisor looks at the runtime when nothing wakes it.
const PASS_INTERVAL: Duration = Duration::from_secs(2);
/// How often a launch waiting for its image may report the pull's progress.
const PULL_REPORT_INTERVAL: Duration = Duration::from_millis(300);
/// How often a launch waiting in the host's queue may report its place: a burst of
/// a hundred launches moving up must not flood the link (or the controller's
/// store, which keeps every change of detail).
const QUEUE_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at creating and starting a container when the engine does not answer,
/// and the pauses between them: together with the engine's call timeouts, a couple
/// of minutes before a launch fails for a slow engine.
const CREATE_ATTEMPTS: u32 = 3;
const CREATE_PAUSES: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(30)];

/// What the link needs from the supervisor, object-safe so the link does not care
/// which runtime is behind it.
pub trait Workloads: Send + Sync + 'static {
    /// Applies an update; false if a version was missed and a full set is needed.
    fn apply(&self, update: DesiredUpdate) -> bool;
    /// The last phase of every instance this host knows.
    fn snapshot(&self) -> Vec<InstanceReport>;
    /// Reports queued since the last call.
    fn drain(&self) -> Vec<InstanceReport>;
    /// Signalled when reports are queued.
    fn changed(&self) -> &Notify;
    /// Launches waiting for the host's container slots, for the heartbeat.
    fn launch_queue(&self) -> u32 {
        0
    }
    /// An instance's recent output.
    fn logs(&self, instance: InstanceId, tail: u32) -> BoxFuture<'_, Result<String, String>>;
    /// Where a running instance's app answers, as last reported; `None` unless it is
    /// running. The proxy tunnel connects only to such addresses.
    fn app_address(&self, instance: &InstanceId) -> Option<std::net::SocketAddr>;
    /// The host's image manager: the link lists its pulls in heartbeats and hands it
    /// the connection archives are fetched on.
    fn images(&self) -> Option<Arc<ImageManager>> {
        None
    }
    /// The host's dataset cache: the link lists its ready versions in heartbeats
    /// and hands it the connection chunks are fetched on.
    fn datasets(&self) -> Option<Arc<DatasetCache>> {
        None
    }
    /// Whether the runtime fences instances in, as its preparation found. No
    /// default: a wrapper that forgot to pass it on would report a fenced host as
    /// unknown.
    fn isolation(&self) -> Isolation;
}

#[derive(Default)]
struct State {
    desired: BTreeMap<InstanceId, DesiredInstance>,
    version: Option<u64>,
    memory: Memory,
    queue: Vec<InstanceReport>,
    isolation: Isolation,
}

/// Drives one host's instances through a [`ContainerRuntime`].
pub struct Supervisor<R> {
    runtime: Arc<R>,
    images: Arc<ImageManager>,
    datasets: std::sync::OnceLock<Arc<DatasetCache>>,
    volumes: std::sync::OnceLock<Arc<VolumeKeeper>>,
    /// Container creates, a few at a time, first come first served.
    queue: Arc<HostQueue>,
    state: Mutex<State>,
    changed: Notify,
    wake: Notify,
}

impl<R> std::fmt::Debug for Supervisor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl<R: ContainerRuntime> Supervisor<R> {
    /// A supervisor whose images come through the runtime's own backend, with default
    /// pull settings and partial archives in a temporary directory of this process.
    /// Agents with a state directory use [`Supervisor::with_images`].
    pub fn new(runtime: R) -> Arc<Self> {
        let partial = std::env::temp_dir()
            .join(format!("cairn-agent-{}", std::process::id()))
            .join("images")
            .join("partial");
        let images =
            ImageManager::new(runtime.image_backend(), &ImagesSettings::default(), partial);
        Self::with_images(runtime, images)
    }

    /// A supervisor that gets images through `images`.
    pub fn with_images(runtime: R, images: Arc<ImageManager>) -> Arc<Self> {
        Arc::new(Supervisor {
            runtime: Arc::new(runtime),
            images,
            datasets: std::sync::OnceLock::new(),
            volumes: std::sync::OnceLock::new(),
            queue: HostQueue::new(queue::DEFAULT_CONTAINER_SLOTS),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            wake: Notify::new(),
        })
    }

    /// Materialises launches' datasets through `cache` (set once; without one, an
    /// instance that mounts datasets fails with a clear reason).
    pub fn set_datasets(&self, cache: Arc<DatasetCache>) {
        let _ = self.datasets.set(cache);
    }

    /// Restores and saves launches' volumes through `keeper` (set once; without
    /// one, an instance with a volume fails with a clear reason).
    pub fn set_volumes(&self, keeper: Arc<VolumeKeeper>) {
        let _ = self.volumes.set(keeper);
    }

    /// How many container creates run at once on this host (at least one).
    pub fn set_container_slots(&self, slots: usize) {
        self.queue.set_permits(slots);
    }

    /// The queue container creates wait in.
    pub fn container_queue(&self) -> &Arc<HostQueue> {
        &self.queue
    }

    /// The image manager launches pull through.
    pub fn image_manager(&self) -> &Arc<ImageManager> {
        &self.images
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, id: &InstanceId, phase: InstancePhase) {
        let mut st = self.lock();
        if st.memory.reported.get(id) == Some(&phase) {
            return;
        }
        tracing::info!(instance = %id, ?phase, "instance phase");
        st.memory.reported.insert(id.clone(), phase.clone());
        st.queue.push(InstanceReport {
            id: id.clone(),
            phase,
        });
        drop(st);
        self.changed.notify_one();
    }

    fn done(&self, id: &InstanceId) {
        self.lock().memory.busy.remove(id);
        self.wake.notify_one();
    }

    /// Runs passes until `shutdown`. Containers keep running when the agent stops.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.images.clone().run(shutdown.clone()));
        if let Some(cache) = self.datasets.get() {
            tokio::spawn(cache.clone().run(shutdown.clone()));
        }
        let mut prepared = false;
        loop {
            if !prepared {
                match self.runtime.prepare().await {
                    Ok(isolation) => {
                        prepared = true;
                        self.lock().isolation = isolation;
                        // The link sends a change of isolation at once.
                        self.changed.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "runtime not ready; retrying"),
                }
            }
            if prepared {
                self.pass().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
            }
        }
    }

    /// One reconcile pass.
    pub async fn pass(self: &Arc<Self>) {
        let observed = match self.runtime.list().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return;
            }
        };
        let (mut created, mut running, mut exited) = (0, 0, 0);
        for o in observed.values() {
            match o.state {
                super::ContainerState::Created => created += 1,
                super::ContainerState::Running => running += 1,
                super::ContainerState::Exited { .. } => exited += 1,
            }
        }
        crate::metrics::containers(created, running, exited);
        let actions = {
            let st = self.lock();
            let mut actions = plan::plan(&st.desired, &observed, &st.memory);
            if st.version.is_none() {
                // Until the controller has said what this host should run, every
                // container would look like an orphan: after a restart of the agent,
                // removing them would destroy the instances it is meant to adopt.
                actions.retain(|a| !matches!(a, Action::Remove { .. }));
            }
            actions
        };
        self.volume_work(&observed);
        for action in actions {
            match action {
                Action::Report(id, phase) => self.report(&id, phase),
                Action::Create(d) => {
                    self.lock().memory.busy.insert(d.id.clone());
                    let me = self.clone();
                    tokio::spawn(async move { me.create_and_probe(*d).await });
                }
                Action::Probe(id) => {
                    let d = self.lock().desired.get(&id).cloned();
                    let Some(d) = d else { continue };
                    self.lock().memory.busy.insert(id.clone());
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.probe(&d).await;
                        me.done(&d.id);
                    });
                }
                Action::Remove {
                    instance,
                    container_id,
                } => {
                    self.lock().memory.busy.insert(instance.clone());
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.save_before_removal(&instance, Some(&container_id)).await;
                        tracing::info!(%instance, container = %container_id, "removing container");
                        if let Err(e) = me.runtime.remove(&container_id).await {
                            tracing::warn!(%instance, error = %e, "could not remove container; will retry");
                        }
                        me.done(&instance);
                    });
                }
            }
        }
    }

    /// Volume chores of a pass: a final save for each copy whose instance is no
    /// longer wanted and has no container left (its launch failed after the
    /// restore, or the agent restarted mid-save), and a checkpoint for each
    /// running instance that is due one.
    fn volume_work(self: &Arc<Self>, observed: &BTreeMap<InstanceId, super::Observed>) {
        let Some(keeper) = self.volumes.get() else {
            return;
        };
        let (orphans, due): (Vec<InstanceId>, Vec<InstanceId>) = {
            let st = self.lock();
            if st.version.is_none() {
                // Until the controller says what is wanted, nothing is an orphan.
                return;
            }
            let here = keeper.instances();
            let orphans = here
                .iter()
                .filter(|id| {
                    !st.desired.contains_key(*id)
                        && !observed.contains_key(*id)
                        && !st.memory.busy.contains(*id)
                })
                .cloned()
                .collect();
            let due = here
                .into_iter()
                .filter(|id| {
                    st.desired.contains_key(id)
                        && matches!(
                            st.memory.reported.get(id),
                            Some(InstancePhase::Running { .. })
                        )
                        && !st.memory.busy.contains(id)
                })
                .collect();
            (orphans, due)
        };
        for id in orphans {
            self.lock().memory.busy.insert(id.clone());
            let me = self.clone();
            tokio::spawn(async move {
                me.save_before_removal(&id, None).await;
                me.done(&id);
            });
        }
        for id in due {
            if !keeper.checkpoint_due(&id) {
                continue;
            }
            let keeper = keeper.clone();
            tokio::spawn(async move {
                match keeper.save(&id, false).await {
                    Ok(s) => {
                        tracing::debug!(instance = %id, files_read = s.files_read, bytes = s.bytes_sent, "volume checkpoint")
                    }
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "volume checkpoint failed; trying again at the next one")
                    }
                }
            });
        }
    }

    /// Saves `instance`'s volume copy, if this host holds one, before its
    /// container (if any) is removed: the container is stopped first so nothing
    /// changes under the save, and a failed save is retried (reported as
    /// `save failed: …`) until the controller acknowledges one. The copy is kept
    /// meanwhile; the container is never removed before.
    async fn save_before_removal(&self, instance: &InstanceId, container: Option<&str>) {
        let Some(keeper) = self.volumes.get() else {
            return;
        };
        if !keeper.holds(instance) {
            return;
        }
        if let Some(c) = container {
            if let Err(e) = self.runtime.stop(c).await {
                tracing::warn!(%instance, error = %e, "could not stop the container before saving; saving anyway");
            }
        }
        self.report(
            instance,
            InstancePhase::Saving {
                detail: "saving files".into(),
            },
        );
        let mut delay = Duration::from_secs(2);
        for attempt in 1u32.. {
            tracing::info!(%instance, attempt, "saving the volume before removal");
            let link = keeper.link();
            match keeper.save(instance, true).await {
                Ok(saved) => {
                    tracing::info!(%instance, outcome = ?saved.outcome, elapsed_ms = saved.elapsed.as_millis() as u64, "volume saved at stop");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%instance, error = %e, "saving the volume failed; retrying");
                    self.report(
                        instance,
                        InstancePhase::Saving {
                            detail: crate::facts::clip(&format!("save failed: {e}; retrying"), 900),
                        },
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // A new connection since the attempt began is what a link
                        // failure waits for.
                        _ = crate::volumes::link_renewed(link) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Restores the instance's volume, reporting `Preparing { detail: "restoring
    /// files 60%" }`; the bind to add, `Ok(None)` without a volume, `Err(())` when
    /// no container must be created (failure reported).
    async fn prepare_volume(&self, d: &DesiredInstance) -> Result<Option<DatasetBind>, ()> {
        let Some(vm) = &d.volume else {
            return Ok(None);
        };
        if !self.runtime.mounts_datasets() {
            return Ok(None);
        }
        let Some(keeper) = self.volumes.get() else {
            self.report(
                &d.id,
                InstancePhase::Failed {
                    reason: "this agent keeps no volumes, so it cannot restore the user's files"
                        .into(),
                },
            );
            return Err(());
        };
        let owner = match vm.owner {
            Some(o) => o,
            None => self.runtime.image_user(&d.image).await.unwrap_or((0, 0)),
        };
        let (tx, rx) = tokio::sync::watch::channel(crate::chunks::fetch::FetchProgress::default());
        let restore = keeper.restore(&d.id, vm, owner, &tx);
        tokio::pin!(restore);
        let mut shown = String::new();
        let outcome = loop {
            let detail = format!("restoring files {}%", rx.borrow().percent());
            if detail != shown {
                self.report(
                    &d.id,
                    InstancePhase::Preparing {
                        detail: detail.clone(),
                    },
                );
                shown = detail;
            }
            // The pause is a branch of its own, never a wait inside one: the
            // restore must be polled all the while (its fetch stalls otherwise).
            tokio::select! {
                r = &mut restore => break r,
                _ = tokio::time::sleep(PULL_REPORT_INTERVAL) => {}
            }
        };
        match outcome {
            Ok(source) => Ok(Some(DatasetBind {
                source,
                target: vm.path.clone(),
                writable: true,
            })),
            Err(e) => {
                let reason = format!("restoring volume {}: {e}", vm.volume);
                tracing::warn!(instance = %d.id, %reason, "cannot restore the instance's volume");
                self.report(&d.id, InstancePhase::Failed { reason });
                Err(())
            }
        }
    }

    async fn create_and_probe(self: Arc<Self>, d: DesiredInstance) {
        let mut binds = if self.pull_image(&d).await {
            self.prepare_datasets(&d).await
        } else {
            None
        };
        if let Some(b) = binds.as_mut() {
            match self.prepare_volume(&d).await {
                Ok(Some(v)) => b.push(v),
                Ok(None) => {}
                Err(()) => binds = None,
            }
        }
        if let Some(binds) = binds {
            match self.create_container(&d, &binds).await {
                Err(RuntimeError(reason)) => self.report(&d.id, InstancePhase::Failed { reason }),
                // No longer desired while it waited.
                Ok(false) => {}
                Ok(true) => {
                    self.report(&d.id, InstancePhase::Starting);
                    // The probe's start timeout counts from here: the container
                    // has started, whatever the queue and the engine took before.
                    self.probe(&d).await;
                }
            }
        }
        self.done(&d.id);
    }

    /// Creates and starts the instance's container in its turn in the host's
    /// queue, trying again (up to [`CREATE_ATTEMPTS`]) when the engine does not
    /// answer in time. `Ok(true)` once the container has started, `Ok(false)` if
    /// the instance stopped being desired while it waited.
    async fn create_container(
        &self,
        d: &DesiredInstance,
        binds: &[DatasetBind],
    ) -> Result<bool, RuntimeError> {
        let mut attempt = 1;
        loop {
            let Some(permit) = self.queue_turn(d).await else {
                return Ok(false);
            };
            // The attempt that timed out may have made the container after all.
            if attempt > 1 && self.adopt_or_clear(d).await {
                return Ok(true);
            }
            let detail = match attempt {
                1 => "creating container".to_string(),
                n => format!("creating container (attempt {n} of {CREATE_ATTEMPTS})"),
            };
            self.report(&d.id, InstancePhase::Preparing { detail });
            let outcome = self.runtime.create(d, binds).await;
            // The engine is free for the next in line during the pause.
            drop(permit);
            match outcome {
                Ok(_) => return Ok(true),
                Err(e) if e.is_no_answer() && attempt < CREATE_ATTEMPTS => {
                    let pause = CREATE_PAUSES[(attempt - 1) as usize % CREATE_PAUSES.len()];
                    tracing::warn!(instance = %d.id, attempt, error = %e, pause_s = pause.as_secs(), "the engine did not answer; trying again");
                    self.report(
                        &d.id,
                        InstancePhase::Preparing {
                            detail: format!(
                                "the host is busy; trying again in {} s",
                                pause.as_secs()
                            ),
                        },
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a permit of the host's queue, reporting the instance's place in
    /// line (at most every [`QUEUE_REPORT_INTERVAL`], and only when it changed).
    /// `None` if the instance stops being desired meanwhile.
    async fn queue_turn(&self, d: &DesiredInstance) -> Option<queue::Permit> {
        let mut ticket = self.queue.join();
        if let Some(p) = ticket.try_take() {
            return Some(p);
        }
        let mut shown = None;
        loop {
            let ahead = ticket.ahead();
            if shown != Some(ahead) {
                self.report(
                    &d.id,
                    InstancePhase::Preparing {
                        detail: queue::waiting_detail(ahead),
                    },
                );
                shown = Some(ahead);
            }
            if !self.lock().desired.contains_key(&d.id) {
                return None;
            }
            // The turn and the reports take turns, as a pull's do: the turn is
            // taken the moment it comes; the place is shown once a second at most.
            tokio::select! {
                p = ticket.turn() => return Some(p),
                _ = tokio::time::sleep(QUEUE_REPORT_INTERVAL) => {}
            }
        }
    }

    /// What a create that timed out left: a running container (named and labelled
    /// for the instance, so it is this one's) is adopted — true; a container that
    /// never started is removed so the next attempt starts clean. If the removal
    /// fails too, the next create finds the name taken and reuses the container.
    async fn adopt_or_clear(&self, d: &DesiredInstance) -> bool {
        let observed = match self.runtime.list().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(instance = %d.id, error = %e, "cannot list containers before trying again");
                return false;
            }
        };
        match observed.get(&d.id) {
            Some(o) if o.state == super::ContainerState::Running => {
                tracing::info!(instance = %d.id, container = %o.container_id, "the container started after all; adopting it");
                true
            }
            Some(o) => {
                tracing::info!(instance = %d.id, container = %o.container_id, "removing the container a timed-out attempt left");
                if let Err(e) = self.runtime.remove(&o.container_id).await {
                    tracing::warn!(instance = %d.id, error = %e, "could not remove the half-made container; reusing it");
                }
                false
            }
            None => false,
        }
    }

    /// Makes the instance's image present, reporting the pull while it runs. False if
    /// no container must be created: the pull failed (reported), or the instance is
    /// no longer desired (the pull goes on for whoever wants the image next).
    async fn pull_image(&self, d: &DesiredInstance) -> bool {
        let spec = ImageSpec {
            reference: d.image.clone(),
            source: d.image_source.clone(),
        };
        let mut pull = self.images.ensure(spec, false).await;
        let mut shown = String::new();
        let outcome = loop {
            if let Some(p) = pull.progress() {
                let detail = pull_detail(Some(&p));
                if detail != shown {
                    self.report(
                        &d.id,
                        InstancePhase::Preparing {
                            detail: detail.clone(),
                        },
                    );
                    shown = detail;
                }
            }
            if !self.lock().desired.contains_key(&d.id) {
                return false;
            }
            // Waiting and reporting take turns, so a fast pull is not held up and a
            // slow one is reported at most every PULL_REPORT_INTERVAL.
            tokio::select! {
                r = pull.wait() => break r,
                _ = tokio::time::sleep(PULL_REPORT_INTERVAL) => {}
            }
        };
        match outcome {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(instance = %d.id, image = %d.image, error = %e, "cannot get the instance's image");
                self.report(
                    &d.id,
                    InstancePhase::Failed {
                        reason: e.to_string(),
                    },
                );
                false
            }
        }
    }

    /// Makes every dataset version the instance mounts ready on this host,
    /// reporting `Preparing { detail: "datasets 40%" }` (bytes fetched over bytes
    /// of all its versions). `None` if no container must be created: a version
    /// failed (reported, naming the dataset and why), or the instance is no longer
    /// desired (the fetch goes on for whoever wants the version next).
    async fn prepare_datasets(&self, d: &DesiredInstance) -> Option<Vec<DatasetBind>> {
        if d.datasets.is_empty() || !self.runtime.mounts_datasets() {
            return Some(vec![]);
        }
        let Some(cache) = self.datasets.get() else {
            self.report(
                &d.id,
                InstancePhase::Failed {
                    reason: "this agent keeps no dataset cache, so it cannot mount datasets".into(),
                },
            );
            return None;
        };
        let flights: Vec<_> = d
            .datasets
            .iter()
            .map(|m| (m, cache.ensure(&m.dataset, true)))
            .collect();
        let mut shown = String::new();
        let mut binds = vec![];
        for (mount, flight) in &flights {
            let outcome = loop {
                let (done, total) = flights.iter().fold((0u64, 0u64), |(d, t), (_, f)| {
                    let p = f.progress();
                    (d + p.done_bytes.min(p.total_bytes), t + p.total_bytes)
                });
                let percent = (done * 100).checked_div(total).unwrap_or(100);
                let detail = format!("datasets {percent}%");
                if detail != shown {
                    self.report(
                        &d.id,
                        InstancePhase::Preparing {
                            detail: detail.clone(),
                        },
                    );
                    shown = detail;
                }
                if !self.lock().desired.contains_key(&d.id) {
                    return None;
                }
                tokio::select! {
                    r = flight.wait() => break r,
                    _ = tokio::time::sleep(PULL_REPORT_INTERVAL) => {}
                }
            };
            match outcome {
                Ok(source) => binds.push(DatasetBind {
                    source,
                    target: mount.path.clone(),
                    writable: false,
                }),
                Err(e) => {
                    let reason = format!(
                        "dataset {}@{}: {e}",
                        mount.dataset.name, mount.dataset.version
                    );
                    tracing::warn!(instance = %d.id, %reason, "cannot prepare the instance's datasets");
                    self.report(&d.id, InstancePhase::Failed { reason });
                    return None;
                }
            }
        }
        Some(binds)
    }

    /// Tells the dataset cache which versions desired instances mount.
    fn note_datasets_in_use(&self) {
        if let Some(cache) = self.datasets.get() {
            let in_use = self
                .lock()
                .desired
                .values()
                .flat_map(|d| d.datasets.iter().map(|m| m.dataset.manifest))
                .collect();
            cache.set_in_use(in_use);
        }
    }

    /// Waits until the app answers (→ Running) or the start timeout passes (→ Failed).
    /// Gives up quietly if the instance stops being desired or its container exits.
    async fn probe(&self, d: &DesiredInstance) {
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_millis(d.start_timeout_ms);
        // Most apps answer within milliseconds of their container starting, so the
        // first retries come fast and then back off; launch latency is what users feel.
        let mut delay = Duration::from_millis(2);
        let mut ip = None;
        let mut last_exit_check = start;
        loop {
            if !self.lock().desired.contains_key(&d.id) {
                return;
            }
            if ip.is_none() {
                ip = self.runtime.address(&d.id).await.ok().flatten();
            }
            if let Some(ip) = ip {
                let addr = std::net::SocketAddr::new(ip, d.app_port);
                if self.runtime.probe(&d.id, addr, &d.probe).await {
                    self.report(
                        &d.id,
                        InstancePhase::Running {
                            address: addr.to_string(),
                        },
                    );
                    return;
                }
            }
            if last_exit_check.elapsed() >= Duration::from_millis(500) {
                last_exit_check = tokio::time::Instant::now();
                let state = self
                    .runtime
                    .list()
                    .await
                    .map(|o| o.get(&d.id).map(|x| x.state.clone()));
                if matches!(
                    state,
                    Ok(Some(super::ContainerState::Exited { .. })) | Ok(None)
                ) {
                    return; // the next pass reports the exit (or absence)
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.report(
                    &d.id,
                    InstancePhase::Failed {
                        reason: format!(
                            "the app did not answer on port {} within {} s",
                            d.app_port,
                            d.start_timeout_ms / 1000
                        ),
                    },
                );
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}

/// The `Preparing` detail for a launch waiting for its image: "pulling 35%" once
/// sizes are known, "pulling" before, "loading image" while an uploaded archive is
/// loaded, and "pulling (retrying: ERROR)" between attempts.
pub fn pull_detail(p: Option<&PullProgress>) -> String {
    let Some(p) = p else {
        return "pulling".into();
    };
    match &p.phase {
        PullPhase::Loading => "loading image".into(),
        PullPhase::Retrying { error, .. } => {
            format!("pulling (retrying: {})", crate::facts::clip(error, 300))
        }
        PullPhase::Pulling if p.bytes_total > 0 || p.layers_total > 0 => {
            format!("pulling {}%", p.percent())
        }
        PullPhase::Queued | PullPhase::Pulling | PullPhase::Failed { .. } => "pulling".into(),
    }
}

/// Whether the app at `addr` answers the probe.
pub async fn answers(addr: std::net::SocketAddr, probe: &Probe) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        match probe {
            Probe::Tcp => Some(true),
            Probe::Http { path } => {
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: cairn-agent\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.ok()?;
                Some(&buf == b"HTTP/")
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

impl<R: ContainerRuntime> Workloads for Supervisor<R> {
    fn apply(&self, mut update: DesiredUpdate) -> bool {
        let mut st = self.lock();
        if !update.full {
            match st.version {
                Some(v) if update.version == v + 1 => {}
                _ => return false,
            }
        }
        if update.full {
            st.desired.clear();
        }
        for id in &update.remove {
            st.desired.remove(id);
        }
        for d in std::mem::take(&mut update.upsert) {
            st.desired.insert(d.id.clone(), d);
        }
        st.version = Some(update.version);
        drop(st);
        if let Some(images) = update.images.take() {
            self.images.set_desired(images);
        }
        if let Some(cache) = self.datasets.get() {
            if let Some(datasets) = update.datasets.take() {
                cache.set_prefetch(datasets.prefetch);
            }
        }
        self.note_datasets_in_use();
        self.wake.notify_one();
        true
    }

    fn snapshot(&self) -> Vec<InstanceReport> {
        let mut st = self.lock();
        st.queue.clear();
        st.memory
            .reported
            .iter()
            .map(|(id, phase)| InstanceReport {
                id: id.clone(),
                phase: phase.clone(),
            })
            .collect()
    }

    fn drain(&self) -> Vec<InstanceReport> {
        std::mem::take(&mut self.lock().queue)
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }

    fn launch_queue(&self) -> u32 {
        u32::try_from(self.queue.waiting()).unwrap_or(u32::MAX)
    }

    fn logs(&self, instance: InstanceId, tail: u32) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.runtime.logs(&instance, tail).await.map_err(|e| e.0) })
    }

    fn app_address(&self, instance: &InstanceId) -> Option<std::net::SocketAddr> {
        match self.lock().memory.reported.get(instance) {
            Some(InstancePhase::Running { address }) => address.parse().ok(),
            _ => None,
        }
    }

    fn images(&self) -> Option<Arc<ImageManager>> {
        Some(self.images.clone())
    }

    fn datasets(&self) -> Option<Arc<DatasetCache>> {
        self.datasets.get().cloned()
    }

    fn isolation(&self) -> Isolation {
        self.lock().isolation.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::testing::FakeBackend;
    use crate::runtime::{ContainerState, Observed};
    use cairn_shared::images::ImageSource;
    use cairn_shared::workload::DatasetSpec;
    use std::collections::BTreeMap as Map;

    /// A runtime that only remembers containers.
    struct Fake {
        containers: Mutex<Map<InstanceId, Observed>>,
        removed: Mutex<Vec<String>>,
        images: Arc<FakeBackend>,
        binds: Mutex<Map<InstanceId, Vec<DatasetBind>>>,
        /// Outcomes of the next creates, first first: the error to answer with,
        /// and the container the failed attempt leaves behind, if any.
        script: Mutex<std::collections::VecDeque<(RuntimeError, Option<ContainerState>)>>,
        /// Creates asked for.
        creates: std::sync::atomic::AtomicUsize,
        /// Creates under way now, and the most at once.
        inside: std::sync::atomic::AtomicUsize,
        most_inside: std::sync::atomic::AtomicUsize,
        /// When set, each create takes one permit of it before it finishes.
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                containers: Default::default(),
                removed: Default::default(),
                images: Arc::new(FakeBackend::open()),
                binds: Default::default(),
                script: Default::default(),
                creates: Default::default(),
                inside: Default::default(),
                most_inside: Default::default(),
                gate: None,
            }
        }
    }

    impl ContainerRuntime for Fake {
        async fn prepare(&self) -> Result<Isolation, RuntimeError> {
            Ok(Isolation::Enforced)
        }
        fn image_backend(&self) -> Arc<dyn crate::images::ImageBackend> {
            self.images.clone()
        }
        async fn list(&self) -> Result<Map<InstanceId, Observed>, RuntimeError> {
            Ok(self.containers.lock().unwrap().clone())
        }
        async fn create(
            &self,
            d: &DesiredInstance,
            binds: &[DatasetBind],
        ) -> Result<String, RuntimeError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.creates.fetch_add(1, SeqCst);
            let now = self.inside.fetch_add(1, SeqCst) + 1;
            self.most_inside.fetch_max(now, SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.inside.fetch_sub(1, SeqCst);
            let next = self.script.lock().unwrap().pop_front();
            if let Some((error, left)) = next {
                if let Some(state) = left {
                    let o = Observed {
                        container_id: format!("c-{}", d.id),
                        state,
                    };
                    self.containers.lock().unwrap().insert(d.id.clone(), o);
                }
                return Err(error);
            }
            self.binds
                .lock()
                .unwrap()
                .insert(d.id.clone(), binds.to_vec());
            let o = Observed {
                container_id: format!("c-{}", d.id),
                state: ContainerState::Running,
            };
            self.containers.lock().unwrap().insert(d.id.clone(), o);
            Ok(format!("c-{}", d.id))
        }
        async fn address(&self, _: &InstanceId) -> Result<Option<std::net::IpAddr>, RuntimeError> {
            Ok(None)
        }
        async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
            self.removed.lock().unwrap().push(container_id.to_string());
            self.containers
                .lock()
                .unwrap()
                .retain(|_, o| o.container_id != container_id);
            Ok(())
        }
        async fn logs(&self, _: &InstanceId, _: u32) -> Result<String, RuntimeError> {
            Ok(String::new())
        }
    }

    #[tokio::test]
    async fn nothing_is_removed_before_the_controller_says_what_is_wanted() {
        let fake = Fake::default();
        let id = InstanceId::generate();
        fake.containers.lock().unwrap().insert(
            id.clone(),
            Observed {
                container_id: "adopt-me".into(),
                state: ContainerState::Exited {
                    exit_code: 0,
                    oom_killed: false,
                },
            },
        );
        let sup = Supervisor::new(fake);
        sup.pass().await;
        tokio::task::yield_now().await;
        assert!(sup.runtime.removed.lock().unwrap().is_empty());
        // A delta before any full set is refused: the agent asks for a resync.
        assert!(!sup.apply(DesiredUpdate {
            version: 5,
            full: false,
            upsert: vec![],
            remove: vec![],
            images: None,
            datasets: None,
        }));
        assert!(sup.apply(DesiredUpdate {
            version: 5,
            full: true,
            upsert: vec![],
            remove: vec![],
            images: None,
            datasets: None,
        }));
        sup.pass().await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *sup.runtime.removed.lock().unwrap(),
            vec!["adopt-me".to_string()]
        );
        // Versions must follow on.
        assert!(!sup.apply(DesiredUpdate {
            version: 7,
            full: false,
            upsert: vec![],
            remove: vec![],
            images: None,
            datasets: None,
        }));
        assert!(sup.apply(DesiredUpdate {
            version: 6,
            full: false,
            upsert: vec![],
            remove: vec![],
            images: None,
            datasets: None,
        }));
    }

    const IMAGE: &str = "127.0.0.1:5000/x@sha256:0123";

    fn instance(image: &str) -> DesiredInstance {
        DesiredInstance {
            id: InstanceId::generate(),
            owner: "alice".into(),
            blueprint: "bp".into(),
            revision: 1,
            image: image.into(),
            image_source: ImageSource::Registry,
            command: None,
            env: vec![],
            memory_bytes: 1 << 28,
            nano_cpus: 1_000_000_000,
            app_port: 8888,
            probe: Probe::Tcp,
            start_timeout_ms: 60_000,
            expect_existing: false,
            datasets: vec![],
            volume: None,
        }
    }

    fn launch(sup: &Supervisor<impl ContainerRuntime>, d: &DesiredInstance) {
        assert!(sup.apply(DesiredUpdate {
            version: 1,
            full: true,
            upsert: vec![d.clone()],
            remove: vec![],
            images: None,
            datasets: None,
        }));
    }

    fn phases(reports: Vec<InstanceReport>) -> Vec<InstancePhase> {
        reports.into_iter().map(|r| r.phase).collect()
    }

    fn preparing(detail: &str) -> InstancePhase {
        InstancePhase::Preparing {
            detail: detail.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_launch_pulls_its_image_first_and_reports_the_pull() {
        let fake = Fake {
            images: Arc::new(FakeBackend::gated()),
            ..Default::default()
        };
        let images = fake.images.clone();
        let sup = Supervisor::new(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Half the bytes are in; no container yet.
        assert_eq!(
            phases(sup.drain()),
            vec![preparing("pulling"), preparing("pulling 50%")]
        );
        assert!(sup.runtime.containers.lock().unwrap().is_empty());
        images.release(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = phases(sup.drain());
        assert_eq!(
            after[..2],
            [preparing("creating container"), InstancePhase::Starting]
        );
        assert!(sup.runtime.containers.lock().unwrap().contains_key(&d.id));
        assert_eq!(images.pulls_of(IMAGE), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pull_fails_the_instance_with_dockers_message() {
        let fake = Fake::default();
        fake.images
            .fail_pulls
            .store(100, std::sync::atomic::Ordering::SeqCst);
        let sup = Supervisor::new(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let reports = phases(sup.drain());
        assert!(
            reports.contains(&preparing("pulling (retrying: manifest unknown)")),
            "{reports:?}"
        );
        assert_eq!(
            reports.last(),
            Some(&InstancePhase::Failed {
                reason: format!("cannot pull {IMAGE}: manifest unknown (4 attempts)")
            })
        );
        assert!(sup.runtime.containers.lock().unwrap().is_empty());
        // The failure is final: later passes do not try again.
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(sup.runtime.images.pulls_of(IMAGE), 4);
    }

    #[tokio::test]
    async fn a_present_image_is_not_pulled_and_not_reported() {
        let fake = Fake::default();
        fake.images.present.lock().unwrap().insert(IMAGE.into());
        let sup = Supervisor::new(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let reports = phases(sup.drain());
        assert_eq!(
            reports[..2],
            [preparing("creating container"), InstancePhase::Starting]
        );
        assert!(sup.runtime.images.pulls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn desired_images_reach_the_image_manager_and_are_prepulled() {
        let fake = Fake::default();
        let sup = Supervisor::new(fake);
        let set = cairn_shared::images::DesiredImages {
            prepull: vec![ImageSpec {
                reference: IMAGE.into(),
                source: ImageSource::Registry,
            }],
            credentials: vec![],
        };
        assert!(sup.apply(DesiredUpdate {
            version: 1,
            full: true,
            upsert: vec![],
            remove: vec![],
            images: Some(set.clone()),
            datasets: Some(Default::default()),
        }));
        assert_eq!(sup.image_manager().desired(), set);
        // A delta without images leaves the set alone.
        assert!(sup.apply(DesiredUpdate {
            version: 2,
            full: false,
            upsert: vec![],
            remove: vec![],
            images: None,
            datasets: None,
        }));
        assert_eq!(sup.image_manager().desired(), set);
        let stop = CancellationToken::new();
        tokio::spawn(sup.clone().run(stop.clone()));
        for _ in 0..100 {
            if sup.runtime.images.holds(IMAGE) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        assert!(sup.runtime.images.holds(IMAGE));
    }

    #[tokio::test]
    async fn hollow_hosts_have_every_image() {
        let sup = Supervisor::new(crate::runtime::hollow::HollowRuntime::new(Duration::ZERO));
        let d = instance("nowhere.invalid/x@sha256:00");
        launch(&sup, &d);
        sup.pass().await;
        for _ in 0..100 {
            if sup.app_address(&d.id).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reports = phases(sup.drain());
        assert_eq!(reports.first(), Some(&preparing("creating container")));
        assert!(
            matches!(reports.last(), Some(InstancePhase::Running { .. })),
            "{reports:?}"
        );
    }

    fn with_datasets(
        tmp: &std::path::Path,
        src: &Arc<crate::chunks::fetch::testing::FakeSource>,
    ) -> Arc<Supervisor<Fake>> {
        let fake = Fake::default();
        fake.images.present.lock().unwrap().insert(IMAGE.into());
        let sup = Supervisor::new(fake);
        let cache = DatasetCache::with_source(
            tmp,
            &Default::default(),
            Arc::new(crate::chunks::fetch::testing::Shared(src.clone())),
        )
        .unwrap();
        sup.set_datasets(cache);
        sup
    }

    async fn settle(sup: &Arc<Supervisor<Fake>>, id: &InstanceId) -> Vec<InstancePhase> {
        let mut all = vec![];
        for _ in 0..500 {
            all.extend(phases(sup.drain()));
            if matches!(
                all.last(),
                Some(InstancePhase::Starting | InstancePhase::Failed { .. })
            ) || sup.runtime.containers.lock().unwrap().contains_key(id)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        all.extend(phases(sup.drain()));
        all
    }

    #[tokio::test]
    async fn a_launch_materialises_its_datasets_first_and_binds_them() {
        use crate::chunks::fetch::testing::{version, FakeSource};
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let spec = version(&src, "course", 4, 5000);
        let sup = with_datasets(tmp.path(), &src);
        let mut d = instance(IMAGE);
        d.datasets = vec![cairn_shared::workload::DatasetMount {
            dataset: spec.clone(),
            path: "/data/course".into(),
        }];
        launch(&sup, &d);
        sup.pass().await;
        let reports = settle(&sup, &d.id).await;
        assert_eq!(
            reports.first(),
            Some(&preparing("datasets 0%")),
            "{reports:?}"
        );
        assert!(
            reports.contains(&preparing("creating container")),
            "{reports:?}"
        );
        let binds = sup
            .runtime
            .binds
            .lock()
            .unwrap()
            .get(&d.id)
            .cloned()
            .unwrap();
        assert_eq!(
            binds,
            vec![DatasetBind {
                writable: false,
                source: tmp.path().join("trees").join(spec.manifest.to_hex()),
                target: "/data/course".into(),
            }]
        );
        assert_eq!(
            std::fs::read(binds[0].source.join("file2")).unwrap().len(),
            5000
        );
        assert_eq!(sup.datasets().unwrap().ready(), vec![spec.manifest]);
    }

    #[tokio::test]
    async fn a_dataset_that_cannot_be_fetched_fails_the_launch_with_the_reason() {
        use crate::chunks::fetch::testing::{version, FakeSource};
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::default());
        let spec = version(&src, "course", 2, 1000);
        let bad = *src
            .objects
            .lock()
            .unwrap()
            .keys()
            .find(|k| **k != spec.manifest)
            .unwrap();
        src.corrupt.lock().unwrap().insert(bad);
        let sup = with_datasets(tmp.path(), &src);
        let mut d = instance(IMAGE);
        d.datasets = vec![cairn_shared::workload::DatasetMount {
            dataset: DatasetSpec { version: 3, ..spec },
            path: "/data".into(),
        }];
        launch(&sup, &d);
        sup.pass().await;
        let reports = settle(&sup, &d.id).await;
        assert_eq!(
            reports.last(),
            Some(&InstancePhase::Failed {
                reason: format!("dataset course@3: chunk {bad} is corrupt on the controller")
            })
        );
        assert!(sup.runtime.containers.lock().unwrap().is_empty());
    }

    fn no_answer() -> RuntimeError {
        RuntimeError::no_answer("creating the container", Duration::from_secs(30))
    }

    /// A supervisor over `fake` with the test image present.
    fn ready(fake: Fake) -> Arc<Supervisor<Fake>> {
        fake.images.present.lock().unwrap().insert(IMAGE.into());
        Supervisor::new(fake)
    }

    fn creates(sup: &Supervisor<Fake>) -> usize {
        sup.runtime
            .creates
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_the_engine_did_not_answer_is_tried_again() {
        let fake = Fake::default();
        fake.script.lock().unwrap().push_back((no_answer(), None));
        let sup = ready(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(40)).await;
        let reports = phases(sup.drain());
        assert_eq!(
            reports[..4],
            [
                preparing("creating container"),
                preparing("the host is busy; trying again in 10 s"),
                preparing("creating container (attempt 2 of 3)"),
                InstancePhase::Starting
            ],
            "{reports:?}"
        );
        assert_eq!(creates(&sup), 2);
        assert!(sup.runtime.removed.lock().unwrap().is_empty());
        assert!(sup.runtime.containers.lock().unwrap().contains_key(&d.id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_made_container_is_removed_before_the_next_attempt() {
        let fake = Fake::default();
        fake.script
            .lock()
            .unwrap()
            .push_back((no_answer(), Some(ContainerState::Created)));
        let sup = ready(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(40)).await;
        let reports = phases(sup.drain());
        assert!(reports.contains(&InstancePhase::Starting), "{reports:?}");
        // Removed, then made again: one container, running.
        assert_eq!(
            *sup.runtime.removed.lock().unwrap(),
            vec![format!("c-{}", d.id)]
        );
        assert_eq!(creates(&sup), 2);
        assert_eq!(
            sup.runtime
                .containers
                .lock()
                .unwrap()
                .get(&d.id)
                .map(|o| o.state.clone()),
            Some(ContainerState::Running)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_started_despite_the_timeout_is_adopted() {
        let fake = Fake::default();
        fake.script
            .lock()
            .unwrap()
            .push_back((no_answer(), Some(ContainerState::Running)));
        let sup = ready(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(40)).await;
        let reports = phases(sup.drain());
        assert_eq!(
            reports[..3],
            [
                preparing("creating container"),
                preparing("the host is busy; trying again in 10 s"),
                InstancePhase::Starting
            ],
            "{reports:?}"
        );
        assert_eq!(creates(&sup), 1, "not created twice");
        assert!(sup.runtime.removed.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_that_never_answers_fails_the_launch_after_three_attempts() {
        let fake = Fake::default();
        for _ in 0..5 {
            fake.script.lock().unwrap().push_back((no_answer(), None));
        }
        let sup = ready(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let reports = phases(sup.drain());
        assert!(
            reports.contains(&preparing("the host is busy; trying again in 30 s")),
            "{reports:?}"
        );
        assert_eq!(
            reports.last(),
            Some(&InstancePhase::Failed {
                reason: no_answer().0
            })
        );
        assert_eq!(creates(&sup), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_tried_again() {
        let fake = Fake::default();
        let refused = RuntimeError("creating the container: No such image: x".into());
        assert!(!refused.is_no_answer());
        fake.script
            .lock()
            .unwrap()
            .push_back((refused.clone(), None));
        let sup = ready(fake);
        let d = instance(IMAGE);
        launch(&sup, &d);
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            phases(sup.drain()).last(),
            Some(&InstancePhase::Failed { reason: refused.0 })
        );
        assert_eq!(creates(&sup), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn launches_wait_their_turn_for_the_hosts_slots_and_say_where_they_stand() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fake = Fake {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let sup = ready(fake);
        sup.set_container_slots(2);
        let all: Vec<DesiredInstance> = (0..5).map(|_| instance(IMAGE)).collect();
        assert!(sup.apply(DesiredUpdate {
            version: 1,
            full: true,
            upsert: all.clone(),
            remove: vec![],
            images: None,
            datasets: None,
        }));
        sup.pass().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Two creates under way, three waiting, each told its place.
        let inside =
            |s: &Supervisor<Fake>| s.runtime.inside.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(inside(&sup), 2);
        assert_eq!(sup.launch_queue(), 3);
        let mut places: Vec<String> = sup
            .drain()
            .into_iter()
            .filter_map(|r| match r.phase {
                InstancePhase::Preparing { detail } if detail.starts_with("waiting") => {
                    Some(detail)
                }
                _ => None,
            })
            .collect();
        places.sort();
        assert_eq!(
            places,
            vec![
                "waiting for the host (0 ahead)",
                "waiting for the host (1 ahead)",
                "waiting for the host (2 ahead)"
            ]
        );
        // One create finishes: the line moves up, and the moves are reported.
        gate.add_permits(1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(inside(&sup), 2);
        assert_eq!(sup.launch_queue(), 2);
        let moved: Vec<String> = phases(sup.drain())
            .into_iter()
            .filter_map(|p| match p {
                InstancePhase::Preparing { detail } if detail.starts_with("waiting") => {
                    Some(detail)
                }
                _ => None,
            })
            .collect();
        assert!(
            moved.contains(&"waiting for the host (0 ahead)".to_string())
                && moved.contains(&"waiting for the host (1 ahead)".to_string()),
            "{moved:?}"
        );
        // The rest go through, never more than two at once.
        gate.add_permits(10);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(creates(&sup), 5);
        assert_eq!(sup.launch_queue(), 0);
        assert_eq!(
            sup.runtime
                .most_inside
                .load(std::sync::atomic::Ordering::SeqCst),
            2
        );
    }

    #[test]
    fn pull_details_say_how_far_the_pull_is() {
        let mut p = PullProgress {
            reference: IMAGE.into(),
            phase: PullPhase::Queued,
            attempt: 1,
            layers_done: 0,
            layers_total: 0,
            bytes_done: 0,
            bytes_total: 0,
            prepull: false,
        };
        assert_eq!(pull_detail(None), "pulling");
        assert_eq!(pull_detail(Some(&p)), "pulling");
        p.phase = PullPhase::Pulling;
        assert_eq!(pull_detail(Some(&p)), "pulling");
        p.bytes_total = 200;
        p.bytes_done = 70;
        assert_eq!(pull_detail(Some(&p)), "pulling 35%");
        p.phase = PullPhase::Loading;
        assert_eq!(pull_detail(Some(&p)), "loading image");
    }
}
