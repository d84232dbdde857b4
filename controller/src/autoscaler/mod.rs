//! The autoscaler: keeps each pool's hosts matched to demand, behind a [`Provider`].
//!
//! * [`policy`] — the decisions, a pure function of the pool and `now`.
//! * [`pending`] — hosts asked for that have not joined yet (pure).
//! * [`Provider`] — how hosts come and go: [`StaticProvider`] (hosts join by token;
//!   the autoscaler only drains and reopens them) now, OpenStack later.
//!
//! Every decision is logged with its reason and kept for admins
//! (`GET /api/v1/autoscaler`).

pub mod pending;
pub mod policy;

use std::collections::{HashMap, VecDeque};
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
    fn create(&self, pool: &str, count: u32) -> BoxFuture<'_, Result<(), String>>;
    /// Gives a removed host back.
    fn destroy(&self, host: &HostId) -> BoxFuture<'_, Result<(), String>>;
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
    fn create(&self, _: &str, _: u32) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async {
            Err("a static pool cannot create hosts; join more with `cairn-controller token create` and `cairn-agent join`".into())
        })
    }
    fn destroy(&self, _: &HostId) -> BoxFuture<'_, Result<(), String>> {
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
    provider: Box<dyn Provider>,
    policies: HashMap<String, Policy>,
    idle_since: Mutex<HashMap<HostId, u64>>,
    /// Hosts asked of the provider per pool that have not joined yet.
    pending: Mutex<HashMap<String, pending::Pending>>,
    log: Mutex<VecDeque<LoggedDecision>>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl Autoscaler {
    pub fn new(provider: Box<dyn Provider>, policies: HashMap<String, Policy>) -> Self {
        Autoscaler {
            provider,
            policies,
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

    /// One pass over every pool with a policy.
    pub async fn pass(&self, app: &App, now_ms: u64) {
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
            let coming = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(pool.clone())
                .or_default()
                .coming(size, now_ms);
            for d in policy::decide(policy, &infos, &waiting, coming, now_ms) {
                self.carry_out(app, pool, size, d, now_ms).await;
            }
        }
    }

    async fn carry_out(&self, app: &App, pool: &str, size: u32, d: Decision, now_ms: u64) {
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
                let r = self.provider.create(pool, count).await;
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
                let r = self.provider.create(pool, count).await;
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
                    r = self.provider.destroy(&host).await;
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
