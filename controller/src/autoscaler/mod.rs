//! The autoscaler: keeps each pool's hosts matched to demand, behind a [`Provider`].
//!
//! * [`policy`] — the decisions, a pure function of the pool and `now`.
//! * [`pending`] — hosts asked for that have not joined yet (pure).
//! * [`Provider`] — how hosts come and go: [`StaticProvider`] (hosts join by token;
//!   the autoscaler only drains and reopens them) or [`openstack`] (servers that
//!   enrol themselves through cloud-init, [`user_data`]), whose servers in flight
//!   [`servers`] follows.
//!
//! Every decision is logged with its reason and kept for admins
//! (`GET /api/v1/autoscaler`).

pub mod cloud_config;
pub mod openstack;
pub mod pending;
pub mod policy;
pub mod servers;
pub mod user_data;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::ids::HostId;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::hosts::pool::PoolEvent;
use crate::hosts::HostState;
use crate::scheduler::Resources;
pub use policy::{Decision, HostInfo, Policy};

/// How hosts are made and unmade.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether it can create hosts at all.
    fn elastic(&self) -> bool;
    /// Asks for `count` new hosts in `pool`; they join by themselves.
    fn create<'a>(
        &'a self,
        app: &'a App,
        pool: &'a str,
        count: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Gives a removed host back.
    fn destroy<'a>(&'a self, app: &'a App, host: &'a HostId) -> BoxFuture<'a, Result<(), String>>;
    /// Follows what it created, once per pass; returns failures as (pool, message).
    fn reconcile<'a>(
        &'a self,
        _app: &'a App,
        _now_ms: u64,
    ) -> BoxFuture<'a, Vec<(String, String)>> {
        Box::pin(async { vec![] })
    }
    /// Hosts it is creating for `pool` that have not joined, if it tracks them
    /// (otherwise the autoscaler counts its own asks).
    fn coming(&self, _pool: &str) -> Option<u32> {
        None
    }
    /// Servers in flight, for admins.
    fn servers(&self) -> Vec<cairn_api::autoscaler::ServerInFlight> {
        vec![]
    }
    /// Failures and back-off per pool.
    fn health(&self) -> BTreeMap<String, cairn_api::autoscaler::ProviderHealth> {
        BTreeMap::new()
    }
}

/// Hosts joined by hand with a join token: nothing to create or destroy.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticProvider;

impl Provider for StaticProvider {
    fn name(&self) -> &'static str {
        "static"
    }
    fn elastic(&self) -> bool {
        false
    }
    fn create<'a>(
        &'a self,
        _: &'a App,
        _: &'a str,
        _: u32,
        _: u64,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async {
            Err("a static pool cannot create hosts; join more with `cairn-controller token create` and `cairn-agent join`".into())
        })
    }
    fn destroy<'a>(&'a self, _: &'a App, _: &'a HostId) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async {
            Err("a static pool cannot destroy hosts; the machine is still running: stop its agent (`systemctl stop cairn-agent`) or power it off".into())
        })
    }
}

/// A decision as admins see it: the API model's type.
pub use cairn_api::autoscaler::Decision as LoggedDecision;
use cairn_api::autoscaler::ScaleAction;

/// Most decisions kept for display.
const LOG: usize = 200;

/// An unchanged decision is logged again after this long.
const REPEAT_QUIET_MS: u64 = 10 * 60 * 1000;

/// The autoscaler's state between passes.
pub struct Autoscaler {
    /// Each pool's provider.
    providers: HashMap<String, Arc<dyn Provider>>,
    /// Every distinct provider once, for reconciling and reporting.
    distinct: Vec<Arc<dyn Provider>>,
    policies: HashMap<String, Policy>,
    /// The agent's package bootstrapping hosts download, if a pool bootstraps.
    package: Option<openstack::AgentPackage>,
    idle_since: Mutex<HashMap<HostId, u64>>,
    /// Hosts asked of the provider per pool that have not joined yet.
    pending: Mutex<HashMap<String, pending::Pending>>,
    log: Mutex<VecDeque<LoggedDecision>>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("pools", &self.policies.keys())
            .finish_non_exhaustive()
    }
}

impl Autoscaler {
    /// `pools` maps each pool to its provider and policy; `distinct` lists each
    /// provider once.
    pub fn new(
        pools: HashMap<String, (Arc<dyn Provider>, Policy)>,
        distinct: Vec<Arc<dyn Provider>>,
    ) -> Self {
        let mut providers = HashMap::new();
        let mut policies = HashMap::new();
        for (pool, (provider, policy)) in pools {
            providers.insert(pool.clone(), provider);
            policies.insert(pool, policy);
        }
        Autoscaler {
            providers,
            distinct,
            policies,
            package: None,
            idle_since: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
        }
    }

    /// The recent decisions, newest first.
    pub fn decisions(&self) -> Vec<LoggedDecision> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn record(&self, d: LoggedDecision) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        // A pool that stays short repeats the same decision every pass; it is
        // logged again only after a quiet while, so the log keeps other news.
        let repeat = log
            .iter()
            .rev()
            .find(|l| l.pool == d.pool)
            .is_some_and(|l| {
                (&l.action, &l.host, l.count, &l.reason, &l.outcome)
                    == (&d.action, &d.host, d.count, &d.reason, &d.outcome)
                    && d.at_ms.saturating_sub(l.at_ms) < REPEAT_QUIET_MS
            });
        if repeat {
            return;
        }
        tracing::info!(pool = %d.pool, action = %d.action, host = ?d.host, count = ?d.count, reason = %d.reason, outcome = %d.outcome, "autoscaler decision");
        log.push_back(d);
        while log.len() > LOG {
            log.pop_front();
        }
    }

    /// Servers in flight of every provider.
    pub fn servers(&self) -> Vec<cairn_api::autoscaler::ServerInFlight> {
        self.distinct.iter().flat_map(|p| p.servers()).collect()
    }

    /// Failures and back-off of every cloud pool.
    pub fn health(&self) -> BTreeMap<String, cairn_api::autoscaler::ProviderHealth> {
        self.distinct.iter().flat_map(|p| p.health()).collect()
    }

    /// The agent's package served to bootstrapping hosts, if a pool bootstraps.
    pub fn package(&self) -> Option<&openstack::AgentPackage> {
        self.package.as_ref()
    }

    /// One pass over every pool with a policy.
    pub async fn pass(&self, app: &App, now_ms: u64) {
        for provider in &self.distinct {
            for (pool, message) in provider.reconcile(app, now_ms).await {
                self.record(LoggedDecision {
                    at_ms: now_ms,
                    pool,
                    action: ScaleAction::Failed,
                    host: None,
                    count: None,
                    reason: "a created server did not become a host".into(),
                    outcome: message,
                });
            }
        }
        let hosts = app.registry.list();
        let reserved = app.instances.reservations();
        let shortfall = app.instances.shortfall();
        for (pool, policy) in &self.policies {
            let infos: Vec<HostInfo> = {
                let mut idle = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                hosts
                    .iter()
                    .filter(|h| {
                        h.labels
                            .get("pool")
                            .map(String::as_str)
                            .unwrap_or("default")
                            == pool
                    })
                    .map(|h| {
                        let (res, n) = reserved.get(&h.id).copied().unwrap_or_default();
                        let cap = h
                            .capacity
                            .as_ref()
                            .map(|c| Resources::new(c.memory_total_bytes, u64::from(c.cpus) * 1000))
                            .unwrap_or_default();
                        let since = if n == 0 {
                            Some(*idle.entry(h.id.clone()).or_insert(now_ms))
                        } else {
                            idle.remove(&h.id);
                            None
                        };
                        HostInfo {
                            id: h.id.clone(),
                            live: h.state == HostState::Active && h.connected,
                            standing: h.pool.standing.clone(),
                            instances: n,
                            free: policy.free(cap, res),
                            joined_ms: h.enrolled_ms,
                            idle_since_ms: since,
                        }
                    })
                    .collect()
            };
            let waiting = shortfall.get(pool).cloned().unwrap_or_default();
            let size = infos
                .iter()
                .filter(|h| h.standing != crate::hosts::pool::Standing::Removed)
                .count() as u32;
            let provider = self.providers.get(pool);
            let asked = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(pool.clone())
                .or_default()
                .coming(size, now_ms);
            let coming = provider.and_then(|p| p.coming(pool)).unwrap_or(asked);
            for d in policy::decide(policy, &infos, &waiting, coming, now_ms) {
                self.carry_out(app, pool, size, d, now_ms).await;
            }
        }
    }

    async fn carry_out(&self, app: &App, pool: &str, size: u32, d: Decision, now_ms: u64) {
        let Some(provider) = self.providers.get(pool) else {
            return;
        };
        let event = |host: &HostId, ev: PoolEvent| {
            let host = host.clone();
            async move {
                app.registry
                    .pool_event(&host, ev, false, now_ms)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        let (action, host, count, reason, result) = match d {
            Decision::Create { count, reason } => {
                let r = provider.create(app, pool, count, now_ms).await;
                if r.is_ok() {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(pool.to_string())
                        .or_default()
                        .asked(count, size, now_ms);
                }
                (ScaleAction::Create, None, Some(count), reason, r)
            }
            Decision::Short { count, reason } => {
                // The provider says in its own words why it cannot.
                let r = provider.create(app, pool, count, now_ms).await;
                (ScaleAction::Short, None, Some(count), reason, r)
            }
            Decision::Undrain { host, reason } => {
                let r = event(&host, PoolEvent::Undrain).await;
                (ScaleAction::Undrain, Some(host), None, reason, r)
            }
            Decision::Drain { host, reason } => {
                let r = event(&host, PoolEvent::Drain { deadline_ms: None }).await;
                (ScaleAction::Drain, Some(host), None, reason, r)
            }
            Decision::Remove { host, reason } => {
                let mut r = event(&host, PoolEvent::Remove).await;
                if r.is_ok() {
                    r = provider.destroy(app, &host).await;
                }
                (ScaleAction::Remove, Some(host), None, reason, r)
            }
        };
        self.record(LoggedDecision {
            at_ms: now_ms,
            pool: pool.to_string(),
            action,
            host,
            count,
            reason,
            outcome: match result {
                Ok(()) => "ok".into(),
                Err(e) => e,
            },
        });
    }
}

/// Runs passes every `period` until `shutdown`.
pub async fn run(app: Arc<App>, period: Duration, shutdown: CancellationToken) {
    let app = &*app;
    crate::periodic::every(period, Duration::ZERO, shutdown, |now| {
        app.autoscaler.pass(app, now)
    })
    .await;
}

/// The autoscaler for a configuration: each pool with its provider and policy.
/// Every `openstack` pool shares one provider (and its cloud connections).
pub fn providers(
    config: &crate::config::ControllerConfig,
    data_dir: &crate::config::DataDir,
    store: crate::store::Store,
) -> Result<Autoscaler, String> {
    let statics: Arc<dyn Provider> = Arc::new(StaticProvider);
    let cloud_pools: HashMap<String, cloud_config::OpenStackPool> = config
        .pools
        .iter()
        .filter(|p| p.provider == "openstack")
        .filter_map(|p| Some((p.name.clone(), p.openstack.clone()?)))
        .collect();
    let mut distinct = vec![statics.clone()];
    let mut package = None;
    let cloud: Option<Arc<dyn Provider>> = if cloud_pools.is_empty() {
        None
    } else {
        let hosts = config
            .cloud_hosts
            .clone()
            .ok_or("openstack pools need [cloud_hosts]")?;
        let ca_pem = std::fs::read_to_string(data_dir.ca_cert())
            .map_err(|e| format!("{}: {e}", data_dir.ca_cert().display()))?;
        if cloud_pools
            .values()
            .any(|p| p.mode == cloud_config::Mode::Bootstrap)
        {
            package = Some(openstack::AgentPackage::load(&hosts.agent_package)?);
        }
        let p: Arc<dyn Provider> = Arc::new(openstack::OpenStackProvider::new(
            cloud_pools,
            hosts,
            package.clone(),
            ca_pem,
            store,
        )?);
        distinct.push(p.clone());
        Some(p)
    };
    let mut pools = HashMap::new();
    for p in &config.pools {
        let provider = match (p.provider.as_str(), &cloud) {
            ("openstack", Some(c)) => c.clone(),
            ("static", _) => statics.clone(),
            (other, _) => return Err(format!("pool {}: unknown provider {other:?}", p.name)),
        };
        let policy = p.scaling(provider.elastic());
        pools.insert(p.name.clone(), (provider, policy));
    }
    let mut a = Autoscaler::new(pools, distinct);
    a.package = package;
    Ok(a)
}
