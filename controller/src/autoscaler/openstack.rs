//! The OpenStack provider: creates a pool's hosts as Nova servers that enrol
//! themselves through cloud-init, follows them to `active`, and deletes them.
//!
//! * create: a one-use join token with a TTL of the join deadline, user-data from
//!   [`super::user_data`], then `POST /servers`;
//! * every pass: each server not yet `active` is looked up in Nova and its token's
//!   use checked; [`super::servers::step`] decides; a failed one is deleted with its
//!   console log's last lines in the error, its token revoked, the pool backed off;
//! * destroy: the drained host's server is deleted.
//!
//! The `openstack` crate does the authentication (`clouds.yaml`, `OS_*`), lookups,
//! reads, console logs and deletes. Its server builder cannot send security groups,
//! `"networks": "auto" | "none"` or a microversion, so the create call goes through
//! the same crate's auth session (`osauth`) as a plain request.
//!
//! The join token and the user-data are secrets: neither is logged nor shown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::future::BoxFuture;
use sha2::Digest as _;

use cairn_api::autoscaler::{ProviderHealth, ServerInFlight};
use cairn_shared::ids::HostId;

use super::cloud_config::{CloudHosts, Mode, OpenStackPool};
use super::servers::{self, Backoff, Observed, Phase, ServerRecord, Step};
use super::user_data::{self, HostBoot, Package};
use super::Provider;
use crate::app::App;
use crate::store::{Store, Tree};

/// Longest a single cloud call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a failed server's console log kept in the error.
const CONSOLE_LINES: u64 = 15;
/// The URL path bootstrapping hosts fetch the agent's package from.
pub const PACKAGE_PATH: &str = "/packages/cairn-agent.deb";

/// The agent's package as served to bootstrapping hosts.
#[derive(Debug, Clone)]
pub struct AgentPackage {
    pub path: std::path::PathBuf,
    pub sha256: String,
    pub len: u64,
}

impl AgentPackage {
    /// Reads and hashes the package once, at start.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "the agent package {} for bootstrapping hosts: {e} (install the cairn-agent .deb there, or set cloud_hosts.agent_package)",
                path.display()
            )
        })?;
        Ok(AgentPackage {
            path: path.to_path_buf(),
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            len: bytes.len() as u64,
        })
    }
}

/// One authenticated connection to a cloud: the SDK and its session.
struct Connection {
    cloud: openstack::Cloud,
    session: osauth::Session,
}

/// Ids the pool's names resolved to (looked up once).
#[derive(Debug, Clone)]
struct Resolved {
    flavor: String,
    image: String,
    network: serde_json::Value,
}

/// The provider for every pool with `provider = "openstack"`.
pub struct OpenStackProvider {
    pools: HashMap<String, OpenStackPool>,
    hosts: CloudHosts,
    package: Option<AgentPackage>,
    ca_pem: String,
    store: Store,
    /// One connection per `clouds.yaml` entry (`None`: the environment).
    connections: tokio::sync::Mutex<HashMap<Option<String>, std::sync::Arc<Connection>>>,
    resolved: Mutex<HashMap<String, Resolved>>,
    servers: Mutex<BTreeMap<String, ServerRecord>>,
    backoff: Mutex<HashMap<String, Backoff>>,
}

impl std::fmt::Debug for OpenStackProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStackProvider")
            .field("pools", &self.pools.keys())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a cloud call under [`CALL_TIMEOUT`], its error in words.
async fn call<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

fn not_found(e: &openstack::Error) -> bool {
    e.kind() == openstack::ErrorKind::ResourceNotFound
}

impl OpenStackProvider {
    /// The provider for `pools` (name → settings); loads the servers in flight a
    /// previous run left in the store.
    pub fn new(
        pools: HashMap<String, OpenStackPool>,
        hosts: CloudHosts,
        package: Option<AgentPackage>,
        ca_pem: String,
        store: Store,
    ) -> Result<Self, String> {
        let servers = store
            .all::<ServerRecord>(Tree::CloudServers)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Ok(OpenStackProvider {
            pools,
            hosts,
            package,
            ca_pem,
            store,
            connections: Default::default(),
            resolved: Default::default(),
            servers: Mutex::new(servers),
            backoff: Default::default(),
        })
    }

    fn settings(&self, pool: &str) -> Result<&OpenStackPool, String> {
        self.pools
            .get(pool)
            .ok_or_else(|| format!("pool {pool} has no [pools.openstack] settings"))
    }

    /// The connection for `cloud`, authenticating on first use (and again after an
    /// error dropped it).
    async fn connect(&self, cloud: &Option<String>) -> Result<std::sync::Arc<Connection>, String> {
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(cloud) {
            return Ok(c.clone());
        }
        let started = Instant::now();
        let r = match cloud {
            Some(name) => {
                let cloud = call(
                    "authenticating (clouds.yaml)",
                    openstack::Cloud::from_config(name),
                )
                .await?;
                let session = call(
                    "authenticating (clouds.yaml)",
                    osauth::Session::from_config(name),
                )
                .await?;
                Connection { cloud, session }
            }
            None => {
                let cloud = call(
                    "authenticating (OS_* variables)",
                    openstack::Cloud::from_env(),
                )
                .await?;
                let session = call(
                    "authenticating (OS_* variables)",
                    osauth::Session::from_env(),
                )
                .await?;
                Connection { cloud, session }
            }
        };
        tracing::info!(cloud = ?cloud, ms = started.elapsed().as_millis() as u64, "openstack: authenticated");
        let c = std::sync::Arc::new(r);
        conns.insert(cloud.clone(), c.clone());
        Ok(c)
    }

    /// Forgets a connection after an auth-looking failure, so the next call logs in
    /// again (a rotated password, an expired application credential).
    async fn drop_connection(&self, cloud: &Option<String>) {
        self.connections.lock().await.remove(cloud);
    }

    async fn resolve(
        &self,
        pool: &str,
        s: &OpenStackPool,
        c: &Connection,
    ) -> Result<Resolved, String> {
        if let Some(r) = lock(&self.resolved).get(pool) {
            return Ok(r.clone());
        }
        let flavor = call(
            &format!("flavor {:?}", s.flavor),
            c.cloud.get_flavor(&s.flavor),
        )
        .await?;
        let image = call(&format!("image {:?}", s.image), c.cloud.get_image(&s.image)).await?;
        let network = match s.network.as_str() {
            "auto" | "none" => serde_json::Value::String(s.network.clone()),
            name => {
                let n = call(&format!("network {name:?}"), c.cloud.get_network(name)).await?;
                serde_json::json!([{ "uuid": n.id() }])
            }
        };
        let r = Resolved {
            flavor: flavor.id().clone(),
            image: image.id().clone(),
            network,
        };
        lock(&self.resolved).insert(pool.to_string(), r.clone());
        Ok(r)
    }

    /// Creates one server for `pool`.
    async fn create_one(&self, app: &App, pool: &str, now_ms: u64) -> Result<String, String> {
        let s = self.settings(pool)?;
        let conn = self.connect(&s.cloud).await?;
        let ids = self.resolve(pool, s, &conn).await?;
        let name = format!("{}{pool}-{}", s.name_prefix, &crate::auth::random_secret(3));
        let ttl_ms = s.join_deadline_secs * 1000;
        let created = app
            .tokens
            .create(
                ttl_ms,
                1,
                format!("openstack server {name} (pool {pool})"),
                now_ms,
            )
            .await
            .map_err(|e| format!("creating a join token: {e}"))?;
        let package = self.package.as_ref().and_then(|p| {
            let base = self.hosts.public_url.as_deref()?;
            Some(Package {
                url: format!("{}{PACKAGE_PATH}", base.trim_end_matches('/')),
                sha256: p.sha256.clone(),
            })
        });
        let labels = vec![("pool".to_string(), pool.to_string())];
        let fingerprint = app.pki.ca.fingerprint().to_string();
        let ud = user_data::render(&HostBoot {
            controller: &self.hosts.controller_link,
            ca_sha256: &fingerprint,
            ca_pem: &self.ca_pem,
            token: &created.token,
            hostname: &name,
            labels: &labels,
            package: if s.mode == Mode::Bootstrap {
                package.as_ref()
            } else {
                None
            },
        });
        let revoke = |why: String| async {
            let _ = app.tokens.revoke(&created.record.id).await;
            why
        };
        let ud = match ud {
            Ok(u) => u,
            Err(e) => return Err(revoke(e.to_string()).await),
        };
        let mut metadata = s.metadata.clone();
        metadata.insert("cairn-pool".into(), pool.into());
        let mut server = serde_json::json!({
            "name": name,
            "imageRef": ids.image,
            "flavorRef": ids.flavor,
            "networks": ids.network,
            "user_data": base64::engine::general_purpose::STANDARD.encode(ud.as_bytes()),
            "metadata": metadata,
        });
        if let Some(k) = &s.key_name {
            server["key_name"] = k.clone().into();
        }
        if let Some(z) = &s.availability_zone {
            server["availability_zone"] = z.clone().into();
        }
        if !s.security_groups.is_empty() {
            server["security_groups"] = s
                .security_groups
                .iter()
                .map(|g| serde_json::json!({ "name": g }))
                .collect();
        }
        let started = Instant::now();
        #[derive(serde::Deserialize)]
        struct Created {
            server: CreatedServer,
        }
        #[derive(serde::Deserialize)]
        struct CreatedServer {
            id: String,
        }
        // 2.37: `networks` may say "auto" or "none".
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            conn.session
                .post(osauth::services::COMPUTE, &["servers"])
                .api_version((2, 37))
                .json(&serde_json::json!({ "server": server }))
                .fetch::<Created>(),
        )
        .await;
        let ms = started.elapsed().as_millis() as u64;
        let id = match answer {
            Ok(Ok(c)) => c.server.id,
            Ok(Err(e)) => {
                tracing::warn!(%pool, server = %name, ms, error = %e, "openstack: create server failed");
                if e.kind() == openstack::ErrorKind::AuthenticationFailed {
                    // A rotated password or an expired credential: log in again next time.
                    self.drop_connection(&s.cloud).await;
                }
                return Err(revoke(format!("POST /servers: {e}")).await);
            }
            Err(_) => {
                let e = format!(
                    "POST /servers: no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                );
                tracing::warn!(%pool, server = %name, ms, error = %e, "openstack: create server failed");
                return Err(revoke(e).await);
            }
        };
        tracing::info!(%pool, server = %name, server_id = %id, ms, user_data_bytes = ud.len(), "openstack: created server");
        let rec = ServerRecord {
            id: id.clone(),
            name,
            pool: pool.to_string(),
            token_id: created.record.id.clone(),
            created_ms: now_ms,
            active_ms: None,
            joined_ms: None,
            deadline_ms: now_ms + ttl_ms,
            phase: Phase::Spawning,
            host: None,
            status: "BUILD".into(),
        };
        self.save(&rec).await?;
        lock(&self.servers).insert(id.clone(), rec);
        Ok(id)
    }

    async fn save(&self, rec: &ServerRecord) -> Result<(), String> {
        self.store
            .put(Tree::CloudServers, &rec.id, rec)
            .map_err(|e| e.to_string())?;
        self.store.flush().await.map_err(|e| e.to_string())
    }

    async fn forget(&self, id: &str) {
        lock(&self.servers).remove(id);
        if let Err(e) = self.store.remove(Tree::CloudServers, id) {
            tracing::error!(server_id = %id, error = %e, "openstack: cannot drop a server record");
        }
        let _ = self.store.flush().await;
    }

    /// Deletes a server (gone already counts as done); returns its console log's
    /// last lines when Nova gives them, for the failure's message.
    /// The server `id`, `None` if Nova no longer has it.
    async fn lookup(
        &self,
        pool: &str,
        id: &str,
    ) -> Result<Option<openstack::compute::Server>, String> {
        let s = self.settings(pool)?;
        let conn = self.connect(&s.cloud).await?;
        match tokio::time::timeout(CALL_TIMEOUT, conn.cloud.get_server(id)).await {
            Ok(Ok(server)) => Ok(Some(server)),
            Ok(Err(e)) if not_found(&e) => Ok(None),
            Ok(Err(e)) => Err(format!("GET /servers/{id}: {e}")),
            Err(_) => Err(format!(
                "GET /servers/{id}: no answer within {} s",
                CALL_TIMEOUT.as_secs()
            )),
        }
    }

    /// Deletes a server (gone already counts as done); returns its console log's
    /// last lines when asked and Nova gives them, for the failure's message.
    async fn delete_server(
        &self,
        pool: &str,
        id: &str,
        want_console: bool,
    ) -> Result<Option<String>, String> {
        let started = Instant::now();
        let Some(server) = self.lookup(pool, id).await? else {
            return Ok(None);
        };
        let console = if want_console {
            match call(
                "console log",
                server.get_console_output(Some(CONSOLE_LINES)),
            )
            .await
            {
                Ok(text) => Some(text),
                Err(e) => {
                    tracing::info!(server_id = %id, error = %e, "openstack: no console log");
                    None
                }
            }
        } else {
            None
        };
        let r = match tokio::time::timeout(CALL_TIMEOUT, server.delete()).await {
            Ok(Ok(_)) => Ok(console),
            Ok(Err(e)) if not_found(&e) => Ok(console),
            Ok(Err(e)) => Err(format!("DELETE /servers/{id}: {e}")),
            Err(_) => Err(format!("DELETE /servers/{id}: no answer")),
        };
        tracing::info!(%pool, server_id = %id, ms = started.elapsed().as_millis() as u64, outcome = ?r.as_ref().map(|_| "deleted"), "openstack: delete server");
        r
    }

    /// What Nova says of a server: its status, `None` if gone.
    async fn status(&self, rec: &ServerRecord) -> Result<Option<String>, String> {
        Ok(self
            .lookup(&rec.pool, &rec.id)
            .await?
            .map(|server| String::from(server.status())))
    }

    /// Follows each server not yet active; returns failures as (pool, message).
    async fn follow(&self, app: &App, now_ms: u64) -> Vec<(String, String)> {
        let pending: Vec<ServerRecord> = lock(&self.servers)
            .values()
            .filter(|r| r.phase != Phase::Active)
            .cloned()
            .collect();
        if pending.is_empty() {
            return vec![];
        }
        let used: HashMap<String, Option<HostId>> = app
            .tokens
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.id, t.used_by.first().cloned()))
            .collect();
        let mut failures = vec![];
        for rec in pending {
            let status = match self.status(&rec).await {
                Ok(s) => s,
                Err(e) => {
                    // The cloud did not answer: no verdict this pass, unless the
                    // deadline passed, which the step below handles next time.
                    tracing::warn!(server_id = %rec.id, error = %e, "openstack: cannot read a server");
                    continue;
                }
            };
            let joined = used.get(&rec.token_id).cloned().flatten();
            match servers::step(&rec, &Observed { status, joined }, now_ms) {
                Step::Keep => {}
                Step::Update(next) => {
                    if next.phase == Phase::Active && rec.phase != Phase::Active {
                        lock(&self.backoff)
                            .entry(rec.pool.clone())
                            .or_default()
                            .succeeded();
                        tracing::info!(pool = %rec.pool, server = %rec.name, host = ?next.host, secs = (now_ms - rec.created_ms) / 1000, "openstack: server's host joined");
                    }
                    if let Err(e) = self.save(&next).await {
                        tracing::error!(server_id = %rec.id, error = %e, "openstack: cannot store a server record");
                    }
                    lock(&self.servers).insert(next.id.clone(), next);
                }
                Step::Forget => self.forget(&rec.id).await,
                Step::Fail { reason } => {
                    let console = self.delete_server(&rec.pool, &rec.id, true).await;
                    let _ = app.tokens.revoke(&rec.token_id).await;
                    let deleted = console.is_ok();
                    let msg = match console {
                        Ok(Some(text)) => {
                            let lines: Vec<&str> = text.lines().collect();
                            let tail = &lines[lines.len().saturating_sub(CONSOLE_LINES as usize)..];
                            format!("{reason}; deleted; console log ends: {}", tail.join(" | "))
                        }
                        Ok(None) => format!("{reason}; deleted"),
                        Err(e) => format!("{reason}; deleting it failed too: {e}"),
                    };
                    tracing::warn!(pool = %rec.pool, server = %rec.name, error = %msg, "openstack: server failed");
                    lock(&self.backoff)
                        .entry(rec.pool.clone())
                        .or_default()
                        .failed(msg.clone(), now_ms);
                    // A server whose delete failed stays on record, to be tried again.
                    if deleted {
                        self.forget(&rec.id).await;
                    }
                    failures.push((rec.pool.clone(), msg));
                }
            }
        }
        failures
    }
}

impl Provider for OpenStackProvider {
    fn name(&self) -> &'static str {
        "openstack"
    }

    fn elastic(&self) -> bool {
        true
    }

    fn create<'a>(
        &'a self,
        app: &'a App,
        pool: &'a str,
        count: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if let Some(why) = lock(&self.backoff).get(pool).and_then(|b| b.holds(now_ms)) {
                return Err(why);
            }
            let mut made = 0;
            for _ in 0..count {
                match self.create_one(app, pool, now_ms).await {
                    Ok(_) => made += 1,
                    Err(e) => {
                        lock(&self.backoff)
                            .entry(pool.to_string())
                            .or_default()
                            .failed(e.clone(), now_ms);
                        return Err(format!("{made} of {count} created; then: {e}"));
                    }
                }
            }
            Ok(())
        })
    }

    fn destroy<'a>(&'a self, _app: &'a App, host: &'a HostId) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let rec = lock(&self.servers)
                .values()
                .find(|r| r.host.as_ref() == Some(host))
                .cloned()
                .ok_or_else(|| format!("host {host} has no server this controller created"))?;
            self.delete_server(&rec.pool, &rec.id, false).await?;
            self.forget(&rec.id).await;
            Ok(())
        })
    }

    fn reconcile<'a>(&'a self, app: &'a App, now_ms: u64) -> BoxFuture<'a, Vec<(String, String)>> {
        Box::pin(self.follow(app, now_ms))
    }

    fn coming(&self, pool: &str) -> Option<u32> {
        Some(
            lock(&self.servers)
                .values()
                .filter(|r| r.pool == pool && r.phase != Phase::Active)
                .count() as u32,
        )
    }

    fn servers(&self) -> Vec<ServerInFlight> {
        lock(&self.servers)
            .values()
            .map(|r| ServerInFlight {
                pool: r.pool.clone(),
                id: r.id.clone(),
                name: r.name.clone(),
                phase: r.phase,
                status: r.status.clone(),
                created_ms: r.created_ms,
                active_ms: r.active_ms,
                joined_ms: r.joined_ms,
                deadline_ms: r.deadline_ms,
                host: r.host.clone(),
            })
            .collect()
    }

    fn health(&self) -> BTreeMap<String, ProviderHealth> {
        let backoff = lock(&self.backoff);
        self.pools
            .keys()
            .map(|pool| {
                let b = backoff.get(pool).cloned().unwrap_or_default();
                (
                    pool.clone(),
                    ProviderHealth {
                        provider: "openstack".into(),
                        failures_in_a_row: b.failures,
                        failures: b.total_failures,
                        last_error: b.last_error,
                        backoff_until_ms: b.until_ms,
                    },
                )
            })
            .collect()
    }
}
