//! The supervisor: applies desired state, runs the planner every pass, carries out
//! its actions as tasks, probes apps until they answer, and queues reports for the
//! link.
//!
//! It runs whether or not the controller is reachable: a host keeps its instances
//! running through a controller restart, and on reconnection the link sends the
//! supervisor's full view ([`Workloads::snapshot`]) before any change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{
    DesiredInstance, DesiredUpdate, InstancePhase, InstanceReport, Probe,
};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Action, Memory};
use super::{ContainerRuntime, RuntimeError};

/// How often the supervisor looks at the runtime when nothing wakes it.
const PASS_INTERVAL: Duration = Duration::from_secs(2);

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
    /// An instance's recent output.
    fn logs(&self, instance: InstanceId, tail: u32) -> BoxFuture<'_, Result<String, String>>;
    /// Where a running instance's app answers, as last reported; `None` unless it is
    /// running. The proxy tunnel connects only to such addresses.
    fn app_address(&self, instance: &InstanceId) -> Option<std::net::SocketAddr>;
}

#[derive(Default)]
struct State {
    desired: BTreeMap<InstanceId, DesiredInstance>,
    version: Option<u64>,
    memory: Memory,
    queue: Vec<InstanceReport>,
}

/// Drives one host's instances through a [`ContainerRuntime`].
pub struct Supervisor<R> {
    runtime: Arc<R>,
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
    pub fn new(runtime: R) -> Arc<Self> {
        Arc::new(Supervisor {
            runtime: Arc::new(runtime),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            wake: Notify::new(),
        })
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
        let mut prepared = false;
        loop {
            if !prepared {
                match self.runtime.prepare().await {
                    Ok(()) => prepared = true,
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
        for action in actions {
            match action {
                Action::Report(id, phase) => self.report(&id, phase),
                Action::Create(d) => {
                    self.lock().memory.busy.insert(d.id.clone());
                    let me = self.clone();
                    tokio::spawn(async move { me.create_and_probe(d).await });
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

    async fn create_and_probe(self: Arc<Self>, d: DesiredInstance) {
        self.report(
            &d.id,
            InstancePhase::Preparing {
                detail: "creating container".into(),
            },
        );
        match self.runtime.create(&d).await {
            Err(RuntimeError(reason)) => self.report(&d.id, InstancePhase::Failed { reason }),
            Ok(_) => {
                self.report(&d.id, InstancePhase::Starting);
                self.probe(&d).await;
            }
        }
        self.done(&d.id);
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
    fn apply(&self, update: DesiredUpdate) -> bool {
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
        for d in update.upsert {
            st.desired.insert(d.id.clone(), d);
        }
        st.version = Some(update.version);
        drop(st);
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

    fn logs(&self, instance: InstanceId, tail: u32) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.runtime.logs(&instance, tail).await.map_err(|e| e.0) })
    }

    fn app_address(&self, instance: &InstanceId) -> Option<std::net::SocketAddr> {
        match self.lock().memory.reported.get(instance) {
            Some(InstancePhase::Running { address }) => address.parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerState, Observed};
    use std::collections::BTreeMap as Map;

    /// A runtime that only remembers containers.
    #[derive(Default)]
    struct Fake {
        containers: Mutex<Map<InstanceId, Observed>>,
        removed: Mutex<Vec<String>>,
    }

    impl ContainerRuntime for Fake {
        async fn prepare(&self) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn list(&self) -> Result<Map<InstanceId, Observed>, RuntimeError> {
            Ok(self.containers.lock().unwrap().clone())
        }
        async fn create(&self, d: &DesiredInstance) -> Result<String, RuntimeError> {
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
        }));
        assert!(sup.apply(DesiredUpdate {
            version: 5,
            full: true,
            upsert: vec![],
            remove: vec![],
            images: None,
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
        }));
        assert!(sup.apply(DesiredUpdate {
            version: 6,
            full: false,
            upsert: vec![],
            remove: vec![],
            images: None,
        }));
    }
}
