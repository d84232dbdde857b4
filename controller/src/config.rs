//! The controller's configuration file and data directory layout.
//!
//! `cairn-controller init` writes `config.toml` into the data directory; everything
//! else the controller keeps (keys, certificates, the sled store) lives beside it at
//! the paths [`DataDir`] names. The rest of the controller reads settings through
//! [`ControllerConfig`], so tests build one in memory instead of writing files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where each file of a controller lives.
#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir(root.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("controller.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("controller.key")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
    }
    /// The local chunk store (datasets' bytes).
    pub fn chunks(&self) -> PathBuf {
        self.0.join("chunks")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state")
    }
    /// Every file `init` creates; `init` refuses to overwrite any of them without `--force`.
    pub fn init_files(&self) -> Vec<PathBuf> {
        vec![
            self.config(),
            self.ca_cert(),
            self.ca_key(),
            self.server_cert(),
            self.server_key(),
            self.admin_token(),
        ]
    }
}

/// Settings of one controller, as read from `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    pub api: ApiConfig,
    pub link: LinkConfig,
    pub hosts: HostsConfig,
    pub certificates: CertificatesConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub instances: InstancesConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub images: ImagesConfig,
    /// The chunk store (datasets' bytes) and its collector.
    #[serde(default)]
    pub chunks: ChunksConfig,
    /// Users' persistent volumes: quota, safety halts, retention.
    #[serde(default)]
    pub volumes: VolumesConfig,
    /// Groups (courses): who may create them, and what a new group's managers
    /// may put in blueprints until an admin says otherwise.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// Self sign-up and the end of accounts: approval, expiry, deletion.
    #[serde(default)]
    pub registration: RegistrationConfig,
    /// Host pools with their placement and scaling rules. Hosts belong to the pool
    /// their `pool` label names (`default` without one).
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// What hosts a cloud creates are told (pools with `provider = "openstack"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_hosts: Option<crate::autoscaler::cloud_config::CloudHosts>,
    /// Where the controller's state lives: sled in the data directory, or etcd.
    #[serde(default, skip_serializing_if = "StoreConfig::is_default")]
    pub store: StoreConfig,
}

/// `[store]`: the engine of the controller's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub engine: StoreEngineKind,
    /// `[store.etcd]`, for `engine = "etcd"`.
    #[serde(default)]
    pub etcd: EtcdConfig,
}

impl StoreConfig {
    fn is_default(&self) -> bool {
        *self == StoreConfig::default()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngineKind {
    /// sled in `DATA_DIR/state` (one machine).
    #[default]
    Sled,
    /// An etcd cluster.
    Etcd,
}

/// `[store.etcd]`: how to reach the etcd cluster and where the keys live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://etcd-1:2379`.
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Every key is `PREFIX TREE/KEY`; one cluster can hold several sites.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// The CA that signed the etcd servers' certificates (TLS when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, for clusters that require them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Connect and request timeout.
    #[serde(default = "default_etcd_timeout")]
    pub timeout_secs: u64,
    /// The cluster's `--max-txn-ops` (etcd's default is 128): a commit with more
    /// writes than this is sent in several etcd transactions.
    #[serde(default = "default_etcd_txn_ops")]
    pub max_txn_ops: usize,
}

fn default_etcd_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}
fn default_etcd_prefix() -> String {
    "/cairn/".into()
}
fn default_etcd_timeout() -> u64 {
    10
}
fn default_etcd_txn_ops() -> usize {
    128
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: default_etcd_endpoints(),
            prefix: default_etcd_prefix(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout_secs: default_etcd_timeout(),
            max_txn_ops: default_etcd_txn_ops(),
        }
    }
}

impl EtcdConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() || self.endpoints.len() > 16 {
            return Err("[store.etcd] endpoints: give 1 to 16 URLs".into());
        }
        for e in &self.endpoints {
            let tls = self.ca_file.is_some() || self.cert_file.is_some();
            let scheme_ok = if tls {
                e.starts_with("https://")
            } else {
                e.starts_with("http://")
            };
            if !scheme_ok || e.len() > 256 {
                return Err(format!(
                    "[store.etcd] endpoint {e:?}: expected an {} URL",
                    if tls { "https://" } else { "http://" }
                ));
            }
        }
        let p = &self.prefix;
        if !p.starts_with('/') || !p.ends_with('/') || p.len() > 128 || p.contains("//") {
            return Err(format!(
                "[store.etcd] prefix {p:?}: must start and end with '/', e.g. \"/cairn/\""
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("[store.etcd] cert_file and key_file go together".into());
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err("[store.etcd] timeout_secs: 1 to 3600".into());
        }
        if !(1..=100_000).contains(&self.max_txn_ops) {
            return Err("[store.etcd] max_txn_ops: 1 to 100000".into());
        }
        Ok(())
    }
}

/// One pool's placement and autoscaling rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// `static`: hosts join by token; the autoscaler only drains and reopens them.
    /// `openstack`: the autoscaler creates and deletes servers (`[pools.openstack]`).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The servers an `openstack` pool creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack: Option<crate::autoscaler::cloud_config::OpenStackPool>,
    #[serde(default)]
    pub min_hosts: u32,
    #[serde(default = "default_max_hosts")]
    pub max_hosts: u32,
    /// Free room kept for this many instances of the typical size.
    #[serde(default = "default_headroom")]
    pub headroom_instances: u32,
    #[serde(default = "default_typical_mib")]
    pub typical_memory_mib: u64,
    #[serde(default = "default_one")]
    pub typical_cpus: f64,
    /// The size of a host the provider creates.
    #[serde(default = "default_host_mib")]
    pub host_memory_mib: u64,
    #[serde(default = "default_host_cpus")]
    pub host_cpus: f64,
    /// An empty host idle this long is drained (if the headroom allows).
    #[serde(default = "default_idle_cooldown")]
    pub idle_cooldown_secs: u64,
    /// Hosts older than this are drained and replaced.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    #[serde(default = "default_one")]
    pub memory_overcommit: f64,
    #[serde(default = "default_one")]
    pub cpu_overcommit: f64,
    #[serde(default)]
    pub strategy: crate::scheduler::Strategy,
    /// Most instances per host; 0 = no limit.
    #[serde(default)]
    pub max_instances_per_host: u32,
    /// Place instances on hosts whose agent could not install its packet filter
    /// rules (instances there can reach the host's services). For laptops and labs.
    #[serde(default)]
    pub allow_unisolated: bool,
}

fn default_provider() -> String {
    "static".into()
}
fn default_max_hosts() -> u32 {
    1000
}
fn default_headroom() -> u32 {
    1
}
fn default_typical_mib() -> u64 {
    1024
}
fn default_one() -> f64 {
    1.0
}
fn default_host_mib() -> u64 {
    8192
}
fn default_host_cpus() -> f64 {
    4.0
}
fn default_idle_cooldown() -> u64 {
    1800
}

impl PoolConfig {
    pub fn placement(&self) -> crate::scheduler::PoolPolicy {
        crate::scheduler::PoolPolicy {
            memory_overcommit: self.memory_overcommit,
            cpu_overcommit: self.cpu_overcommit,
            strategy: self.strategy,
            max_instances_per_host: self.max_instances_per_host,
            allow_unisolated: self.allow_unisolated,
        }
    }

    pub fn scaling(&self, elastic: bool) -> crate::autoscaler::Policy {
        use crate::scheduler::Resources;
        let res = |mib: u64, cpus: f64| Resources::new(mib << 20, (cpus * 1000.0).round() as u64);
        crate::autoscaler::Policy {
            min_hosts: self.min_hosts,
            max_hosts: self.max_hosts,
            headroom_instances: self.headroom_instances,
            typical: res(self.typical_memory_mib, self.typical_cpus),
            host_size: res(self.host_memory_mib, self.host_cpus),
            idle_cooldown_ms: self.idle_cooldown_secs * 1000,
            max_age_ms: self.max_age_secs.map(|s| s * 1000),
            elastic,
            overcommit: (self.memory_overcommit, self.cpu_overcommit),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// A WebSocket through the proxy (a kernel, a terminal) closes after this long with
    /// no byte in either direction. Hours: a student reading is not gone.
    #[serde(default = "default_ws_idle")]
    pub websocket_idle_secs: u64,
}

fn default_ws_idle() -> u64 {
    6 * 3600
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            websocket_idle_secs: default_ws_idle(),
        }
    }
}

/// Image distribution: registries the controller resolves tags with (and whose
/// logins it hands to agents), and uploaded image archives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Logins and transport per registry host.
    #[serde(default)]
    pub registries: Vec<RegistryConfig>,
    /// How long resolving a tag may take before the save fails.
    #[serde(default = "default_resolve_timeout")]
    pub resolve_timeout_secs: u64,
    /// Largest image archive `cairn images push` may upload.
    #[serde(default = "default_max_archive")]
    pub max_archive_bytes: u64,
}

fn default_resolve_timeout() -> u64 {
    20
}
fn default_max_archive() -> u64 {
    20 * 1024 * 1024 * 1024
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            registries: vec![],
            resolve_timeout_secs: default_resolve_timeout(),
            max_archive_bytes: default_max_archive(),
        }
    }
}

/// The chunk store: where pushed datasets' bytes live, and how its collector runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChunksConfig {
    /// An unreferenced chunk younger than this is kept: a push may have uploaded it
    /// and not yet committed the manifest that references it.
    #[serde(default = "default_gc_grace")]
    pub gc_grace_secs: u64,
    /// How often the collector runs (it also runs after a dataset is removed).
    #[serde(default = "default_gc_interval")]
    pub gc_interval_secs: u64,
}

fn default_gc_grace() -> u64 {
    24 * 3600
}
fn default_gc_interval() -> u64 {
    3600
}

impl Default for ChunksConfig {
    fn default() -> Self {
        ChunksConfig {
            gc_grace_secs: default_gc_grace(),
            gc_interval_secs: default_gc_interval(),
        }
    }
}

/// Groups (`[groups]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// Whether any user may create a group (becoming its owner), as a teacher
    /// starts a course; admins always may.
    #[serde(default = "yes")]
    pub users_create: bool,
    /// A new group's blueprint limits: images its managers may use (exact, or a
    /// prefix ending in `*`; empty: none until an admin allows some)…
    #[serde(default)]
    pub images: Vec<String>,
    /// …the most memory per instance, MiB…
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
    /// …and the longest lifetime, seconds.
    #[serde(default)]
    pub max_lifetime_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Registration (`[registration]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Whether people may sign up themselves. Their accounts wait for an admin,
    /// or for a manager of the group whose join code they gave.
    #[serde(default)]
    pub open: bool,
    /// E-mail domains whose registrants need no approval (`uni.example`, which
    /// also covers `dept.uni.example`).
    #[serde(default)]
    pub auto_approve_domains: Vec<String>,
    /// How long after a deletion request the account and its files go; the
    /// request can be withdrawn until then.
    #[serde(default = "default_deletion_grace_secs")]
    pub deletion_grace_secs: u64,
}

fn default_deletion_grace_secs() -> u64 {
    14 * 24 * 3600
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            open: false,
            auto_approve_domains: vec![],
            deletion_grace_secs: default_deletion_grace_secs(),
        }
    }
}

impl RegistrationConfig {
    fn validate(&self) -> Result<(), String> {
        for d in &self.auto_approve_domains {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(format!(
                    "registration.auto_approve_domains: {d:?} is not a domain name"
                ));
            }
        }
        Ok(())
    }
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            users_create: true,
            images: vec![],
            max_memory_mib: None,
            max_lifetime_secs: None,
        }
    }
}

/// Users' persistent volumes (`[volumes]`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumesConfig {
    /// Bytes one user's volumes may hold (the heads' files), in MiB.
    #[serde(default = "default_volume_quota_mib")]
    pub quota_mib: u64,
    /// A snapshot deleting more than this share of the head's files (percent) is
    /// halted until confirmed; 100 halts only one that empties the volume.
    #[serde(default = "default_max_delete_percent")]
    pub max_delete_percent: u8,
    /// Snapshots kept per volume: the last `keep_last`…
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// …plus the newest of each day for this many days.
    #[serde(default = "default_keep_daily_days")]
    pub keep_daily_days: u64,
}

fn default_volume_quota_mib() -> u64 {
    10 * 1024
}
fn default_max_delete_percent() -> u8 {
    50
}
fn default_keep_last() -> usize {
    10
}
fn default_keep_daily_days() -> u64 {
    7
}

impl Default for VolumesConfig {
    fn default() -> Self {
        VolumesConfig {
            quota_mib: default_volume_quota_mib(),
            max_delete_percent: default_max_delete_percent(),
            keep_last: default_keep_last(),
            keep_daily_days: default_keep_daily_days(),
        }
    }
}

/// One registry. The password is given to agents for pulls; the API never shows it
/// and `Debug` hides it, so it cannot reach a log.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Host and optional port as written in image references: `registry.example.org`,
    /// `127.0.0.1:5000`.
    pub host: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Read the password from this file instead (keeps it out of config.toml).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Plain HTTP instead of HTTPS. Loopback registries are always allowed plain HTTP,
    /// as Docker does.
    #[serde(default)]
    pub insecure: bool,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstancesConfig {
    /// How long an app may take to answer after its container starts.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_ms: u64,
    /// Most unfinished instances one user may have, over all blueprints.
    #[serde(default = "default_max_per_user")]
    pub max_per_user: u32,
    /// Ended instances are kept this long (history, usage reports), then deleted.
    #[serde(default = "default_keep_ended_days")]
    pub keep_ended_days: u32,
}

fn default_keep_ended_days() -> u32 {
    30
}

fn default_start_timeout() -> u64 {
    120_000
}
fn default_max_per_user() -> u32 {
    10
}

impl Default for InstancesConfig {
    fn default() -> Self {
        InstancesConfig {
            start_timeout_ms: default_start_timeout(),
            max_per_user: default_max_per_user(),
            keep_ended_days: default_keep_ended_days(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address of the REST API, the web UI and the proxy.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain and key (PEM; relative paths are in the
    /// data directory). Without it, plain HTTP: for development on 127.0.0.1, or behind
    /// a site's own TLS terminator (then set `behind_tls_proxy`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Browsers reach this plain-HTTP listener through an HTTPS terminator: cookies are
    /// marked `Secure` and apps are told `X-Forwarded-Proto: https`.
    #[serde(default)]
    pub behind_tls_proxy: bool,
    /// A new connection that has not sent its first complete request head (TLS
    /// handshake included) this long after it was accepted is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection waiting this long for its next request is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Most connections open at once (WebSockets through the proxy included); more
    /// wait in the listen backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_header_read_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    120
}
fn default_max_connections() -> u32 {
    4096
}

impl ApiConfig {
    /// Plain HTTP on `listen` with the default limits.
    pub fn plain(listen: SocketAddr) -> Self {
        ApiConfig {
            listen,
            tls: None,
            behind_tls_proxy: false,
            header_read_timeout_secs: default_header_read_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }

    pub fn serves_https(&self) -> bool {
        self.tls.is_some()
    }
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// UDP address agents dial (QUIC).
    pub listen: SocketAddr,
    /// Hard limit on one frame of the control stream, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: u32,
}

fn default_max_frame() -> u32 {
    cairn_shared::framing::MAX_FRAME_LEN
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostsConfig {
    /// How often agents send heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// After this many missed heartbeats an active host becomes unreachable.
    #[serde(default = "default_missed")]
    pub missed_heartbeats: u32,
    /// An unreachable host becomes lost after this long without a heartbeat.
    #[serde(default = "default_lost_ms")]
    pub lost_after_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    5_000
}
fn default_missed() -> u32 {
    3
}
fn default_lost_ms() -> u64 {
    5 * 60_000
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            heartbeat_interval_ms: default_heartbeat_ms(),
            missed_heartbeats: default_missed(),
            lost_after_ms: default_lost_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificatesConfig {
    /// DNS names and IP addresses in the controller's server certificate, besides the
    /// fixed internal name agents verify.
    pub server_names: Vec<String>,
    /// Lifetime of agents' client certificates. Agents renew at two thirds of it.
    #[serde(default = "default_agent_ttl")]
    pub agent_cert_ttl_secs: u64,
    /// Lifetime of the controller's server certificate; renewed at start when less
    /// than a third remains.
    #[serde(default = "default_server_ttl")]
    pub server_cert_ttl_secs: u64,
}

fn default_agent_ttl() -> u64 {
    30 * 24 * 3600
}
fn default_server_ttl() -> u64 {
    365 * 24 * 3600
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// SHA-256 (hex) of the admin API token; the token itself is in `admin.token`.
    pub admin_token_sha256: String,
    /// Login through an OpenID Connect provider (`[auth.oidc]`), beside local
    /// passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
    /// Login by a header a trusted front proxy sets (`[auth.front_proxy]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_proxy: Option<FrontProxyConfig>,
}

/// A front proxy that authenticates users itself (client certificates,
/// Kerberos, a campus SSO module) and names them in a header
/// (`[auth.front_proxy]`). The header is believed only on connections from
/// `trusted` addresses; from anywhere else it is ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrontProxyConfig {
    /// The proxies' addresses: `192.0.2.10` or `192.0.2.0/24`.
    pub trusted: Vec<String>,
    /// The header naming the user.
    #[serde(default = "default_proxy_header")]
    pub header: String,
    /// What the header holds: `user` (the account name, as `$remote_user`) or
    /// `x509_subject` (a client certificate's subject, as nginx's
    /// `$ssl_client_s_dn`: the account is its CN).
    #[serde(default)]
    pub format: ProxyIdentity,
    /// Make an account for a name the controller does not know yet (otherwise
    /// an admin creates accounts first).
    #[serde(default)]
    pub create_accounts: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyIdentity {
    #[default]
    User,
    X509Subject,
}

fn default_proxy_header() -> String {
    "X-Remote-User".into()
}

impl FrontProxyConfig {
    /// The trusted addresses as networks (a bare address is a network of one).
    pub fn trusted_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted
            .iter()
            .map(|t| {
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("auth.front_proxy.trusted: {t:?} is not an address or a network")
                    })
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.trusted.is_empty() {
            return Err("auth.front_proxy.trusted must name the proxies' addresses".into());
        }
        self.trusted_nets()?;
        if axum::http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return Err(format!(
                "auth.front_proxy.header {:?} is not a header name",
                self.header
            ));
        }
        Ok(())
    }
}

/// An OpenID Connect provider users log in with (`[auth.oidc]`): the
/// authorization code flow with PKCE; the ID token is checked against the
/// issuer's published keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer, exactly as its discovery document names it
    /// (`{issuer}/.well-known/openid-configuration` is read).
    pub issuer: String,
    pub client_id: String,
    /// The client's secret, if the provider gave one (a confidential client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// This controller's callback as the provider knows it:
    /// `https://cairn.example.org/login/oidc/callback`.
    pub redirect_url: String,
    /// What the login page's button says: "Log in with {label}".
    #[serde(default = "default_oidc_label")]
    pub label: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the Cairn account (lower-cased; it must be a valid
    /// user name).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim listing the user's groups at the provider.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Provider group → Cairn group: a user whose groups claim holds the key is
    /// made a member of the group (never demoted if they manage it) at each login.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
}

fn default_oidc_label() -> String {
    "single sign-on".into()
}
fn default_oidc_scopes() -> Vec<String> {
    ["email", "profile"].map(String::from).to_vec()
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}

impl OidcConfig {
    /// Checks what would only fail at a user's login otherwise.
    pub fn validate(&self) -> Result<(), String> {
        for (what, url) in [
            ("issuer", &self.issuer),
            ("redirect_url", &self.redirect_url),
        ] {
            let u = reqwest::Url::parse(url)
                .map_err(|e| format!("auth.oidc.{what} {url:?} is not a URL: {e}"))?;
            if !matches!(u.scheme(), "https" | "http") {
                return Err(format!("auth.oidc.{what} must be an http(s) URL"));
            }
        }
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            return Err("auth.oidc.client_id must be 1-256 bytes".into());
        }
        if self.label.is_empty() || self.label.len() > 64 {
            return Err("auth.oidc.label must be 1-64 bytes".into());
        }
        if self.scopes.len() > 16 || self.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err("auth.oidc.scopes: at most 16, each one word".into());
        }
        if self.groups.len() > 1000 {
            return Err("auth.oidc.groups maps at most 1000 groups".into());
        }
        Ok(())
    }
}

impl ControllerConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.hosts.heartbeat_interval_ms)
    }

    /// Checks values that would make the controller misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(o) = &self.auth.oidc {
            o.validate()?;
        }
        if let Some(p) = &self.auth.front_proxy {
            p.validate()?;
        }
        self.registration.validate()?;
        self.validate_pools()?;
        if self.store.engine == StoreEngineKind::Etcd {
            self.store.etcd.validate()?;
        }
        let h = &self.hosts;
        if h.heartbeat_interval_ms < 100 || h.heartbeat_interval_ms > 600_000 {
            return Err("hosts.heartbeat_interval_ms must be between 100 and 600000".into());
        }
        if h.missed_heartbeats == 0 {
            return Err("hosts.missed_heartbeats must be at least 1".into());
        }
        if h.lost_after_ms <= h.heartbeat_interval_ms * u64::from(h.missed_heartbeats) {
            return Err(
                "hosts.lost_after_ms must be longer than missed_heartbeats × heartbeat_interval_ms"
                    .into(),
            );
        }
        if self.link.max_frame_bytes < 64 * 1024 || self.link.max_frame_bytes > 64 * 1024 * 1024 {
            return Err("link.max_frame_bytes must be between 65536 and 67108864".into());
        }
        if self.certificates.agent_cert_ttl_secs < 30 {
            return Err("certificates.agent_cert_ttl_secs must be at least 30".into());
        }
        let a = &self.api;
        if !(1..=300).contains(&a.header_read_timeout_secs) {
            return Err("api.header_read_timeout_secs must be between 1 and 300".into());
        }
        if !(1..=3600).contains(&a.idle_timeout_secs) {
            return Err("api.idle_timeout_secs must be between 1 and 3600".into());
        }
        if !(1..=1_000_000).contains(&a.max_connections) {
            return Err("api.max_connections must be between 1 and 1000000".into());
        }
        if self.chunks.gc_grace_secs < 60 {
            // Shorter than a push takes: chunks of a push in flight would be swept.
            return Err("chunks.gc_grace_secs must be at least 60".into());
        }
        if !(60..=7 * 24 * 3600).contains(&self.chunks.gc_interval_secs) {
            return Err("chunks.gc_interval_secs must be between 60 and 604800".into());
        }
        if self.volumes.max_delete_percent == 0 || self.volumes.max_delete_percent > 100 {
            return Err("volumes.max_delete_percent must be between 1 and 100".into());
        }
        if !(1..=1000).contains(&self.volumes.keep_last) {
            return Err("volumes.keep_last must be between 1 and 1000".into());
        }
        if self.auth.admin_token_sha256.len() != 64 {
            return Err("auth.admin_token_sha256 must be 64 hex digits".into());
        }
        Ok(())
    }

    fn validate_pools(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for p in &self.pools {
            if !names.insert(&p.name) {
                return Err(format!("pool {} is configured twice", p.name));
            }
            match (p.provider.as_str(), &p.openstack) {
                ("static", None) => {}
                ("static", Some(_)) => {
                    return Err(format!(
                        "pool {}: [pools.openstack] needs provider = \"openstack\"",
                        p.name
                    ))
                }
                ("openstack", Some(o)) => {
                    o.validate(&p.name)?;
                    let hosts = self.cloud_hosts.as_ref().ok_or_else(|| {
                        format!(
                            "pool {}: an openstack pool needs [cloud_hosts] (controller_link, and public_url for bootstrap mode)",
                            p.name
                        )
                    })?;
                    if o.mode == crate::autoscaler::cloud_config::Mode::Bootstrap
                        && hosts.public_url.is_none()
                    {
                        return Err(format!(
                            "pool {}: bootstrap mode needs cloud_hosts.public_url to serve the agent's package",
                            p.name
                        ));
                    }
                }
                ("openstack", None) => {
                    return Err(format!(
                    "pool {}: provider \"openstack\" needs [pools.openstack] (flavor, image, ...)",
                    p.name
                ))
                }
                (other, _) => {
                    return Err(format!(
                        "pool {}: unknown provider {other:?} (static or openstack)",
                        p.name
                    ))
                }
            }
        }
        if let Some(h) = &self.cloud_hosts {
            h.validate()?;
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {}: {e} (run `cairn-controller init` first)",
                path.display()
            )
        })?;
        let cfg: ControllerConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        cfg.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControllerConfig {
        ControllerConfig {
            images: Default::default(),
            chunks: Default::default(),
            volumes: Default::default(),
            groups: Default::default(),
            registration: Default::default(),
            api: ApiConfig::plain("127.0.0.1:7080".parse().unwrap()),
            link: LinkConfig {
                listen: "127.0.0.1:7443".parse().unwrap(),
                max_frame_bytes: default_max_frame(),
            },
            hosts: HostsConfig::default(),
            certificates: CertificatesConfig {
                server_names: vec!["localhost".into()],
                agent_cert_ttl_secs: default_agent_ttl(),
                server_cert_ttl_secs: default_server_ttl(),
            },
            pools: vec![],
            cloud_hosts: None,
            store: Default::default(),
            proxy: ProxyConfig::default(),
            auth: AuthConfig {
                admin_token_sha256: "0".repeat(64),
                oidc: None,
                front_proxy: None,
            },
            instances: InstancesConfig::default(),
        }
    }

    #[test]
    fn openstack_pools_need_their_settings() {
        let pool = |toml: &str| -> PoolConfig {
            toml::from_str(&format!(
                "name = \"cloud\"\nprovider = \"openstack\"\n{toml}"
            ))
            .unwrap()
        };
        let mut c = sample();
        c.pools = vec![pool("")];
        assert!(c
            .validate()
            .unwrap_err()
            .contains("needs [pools.openstack]"));
        c.pools = vec![pool("[openstack]\nflavor = \"m1\"\nimage = \"debian\"\n")];
        assert!(c.validate().unwrap_err().contains("needs [cloud_hosts]"));
        c.cloud_hosts =
            Some(toml::from_str("controller_link = \"cairn.example.org:7443\"").unwrap());
        assert!(c
            .validate()
            .unwrap_err()
            .contains("bootstrap mode needs cloud_hosts.public_url"));
        c.cloud_hosts = Some(
            toml::from_str("controller_link = \"cairn.example.org:7443\"\npublic_url = \"https://cairn.example.org\"")
                .unwrap(),
        );
        c.validate().unwrap();
        let back: ControllerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        c.pools[0].provider = "ec2".into();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("unknown provider \"ec2\""));
        c.pools = vec![pool(
            "[openstack]\nflavor = \"m1\"\nimage = \"d\"\nname_prefix = \"Bad Prefix\"\n",
        )];
        assert!(c.validate().unwrap_err().contains("name_prefix"));
        c.cloud_hosts = Some(toml::from_str("controller_link = \"nohost\"").unwrap());
        c.pools = vec![];
        assert!(c.validate().unwrap_err().contains("must be HOST:PORT"));
    }

    #[test]
    fn round_trips_through_toml() {
        let c = sample();
        let back: ControllerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        back.validate().unwrap();
    }

    #[test]
    fn rejects_nonsense() {
        let mut c = sample();
        c.hosts.lost_after_ms = 1000;
        assert!(c.validate().unwrap_err().contains("lost_after_ms"));
        let text = c.to_toml().replace("[api]", "[api]\nlisten_typo = 1");
        assert!(toml::from_str::<ControllerConfig>(&text).is_err());
    }

    #[test]
    fn http_limits_default_and_are_bounded() {
        // A config written before the limits existed gets the defaults.
        let text = sample()
            .to_toml()
            .lines()
            .filter(|l| !l.contains("timeout_secs") && !l.contains("max_connections"))
            .collect::<Vec<_>>()
            .join("\n");
        let c: ControllerConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            (
                c.api.header_read_timeout_secs,
                c.api.idle_timeout_secs,
                c.api.max_connections
            ),
            (10, 120, 4096)
        );
        for (field, set) in [
            (
                "header_read_timeout_secs",
                (|c: &mut ControllerConfig| c.api.header_read_timeout_secs = 0)
                    as fn(&mut ControllerConfig),
            ),
            ("idle_timeout_secs", |c| c.api.idle_timeout_secs = 7200),
            ("max_connections", |c| c.api.max_connections = 0),
        ] {
            let mut c = sample();
            set(&mut c);
            assert!(c.validate().unwrap_err().contains(field), "{field}");
        }
    }
}
