//! The `cairn-controller` subcommands, and how their failures map to exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::{self, StartError};
use crate::config::{ControllerConfig, DataDir, HostsConfig};
use crate::pki::{self, InitOptions, PkiError};
use crate::service::join_tokens::{self, CreateToken};
use crate::service::views::CreatedTokenView;
use crate::store::{Store, StoreError};
use crate::tokens::TokenStore;

#[derive(Parser, Debug)]
#[command(
    name = "cairn-controller",
    version,
    about = "Cairn controller: API, scheduler and agent link"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct DataDirArg {
    /// The controller's data directory.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "/var/lib/cairn")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the CA, server certificate, admin token and config.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// A DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// TCP address of the REST API, the web UI and the proxy.
        #[arg(long, default_value = "127.0.0.1:7080")]
        api_listen: SocketAddr,
        /// How browsers reach the API: `https` with the certificate `init` makes (signed
        /// by the Cairn CA), `https:CERT.pem:KEY.pem` with your own, `behind-proxy` for
        /// plain HTTP behind your own TLS terminator, or `http` (loopback only).
        #[arg(long, default_value = "auto")]
        web_tls: String,
        /// UDP address agents dial.
        #[arg(long, default_value = "0.0.0.0:7443")]
        link_listen: SocketAddr,
        /// How often agents report.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
        /// Missed heartbeats before a host is unreachable.
        #[arg(long, default_value_t = 3)]
        missed_heartbeats: u32,
        /// Silence before an unreachable host is lost.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        lost_after: Duration,
        /// Lifetime of agents' client certificates (they renew at two thirds).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        agent_cert_ttl: Duration,
        /// Overwrite an existing data directory (every enrolled agent must re-enrol).
        #[arg(long)]
        force: bool,
        /// Where the state lives: `sled` (in the data directory) or `etcd`.
        #[arg(long, default_value = "sled")]
        store_engine: String,
        /// An etcd client URL (repeatable), with `--store-engine etcd`.
        #[arg(long = "etcd-endpoint")]
        etcd_endpoints: Vec<String>,
        /// The prefix of every key in etcd.
        #[arg(long, default_value = "/cairn/")]
        etcd_prefix: String,
    },
    /// Serve the API and the agent link.
    Run {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Manage join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Copy the state out of or into the configured engine (moving from sled to etcd).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Write every record to FILE (JSON lines); the controller must be stopped.
    Export {
        #[command(flatten)]
        dir: DataDirArg,
        /// Where to write (`-` for standard output).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Load an export into the configured engine, which must hold no records yet.
    Import {
        #[command(flatten)]
        dir: DataDirArg,
        /// The export to read (`-` for standard input).
        #[arg(long = "in", default_value = "-")]
        input: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a join token and print it with the CA fingerprint.
    Create {
        #[command(flatten)]
        dir: DataDirArg,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many hosts may enrol with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value = "")]
        description: String,
        /// Print only the token (for scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// List join tokens (without their secrets).
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Pki(PkiError::AlreadyInitialised { .. }) => 3,
            CliError::Start(StartError::Config(_)) | CliError::Pki(PkiError::Config(_)) => 78, // EX_CONFIG
            CliError::Start(StartError::Bind { .. }) | CliError::Unavailable(_) => 69, // EX_UNAVAILABLE
            _ => 1,
        }
    }
}

pub async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Init {
            dir,
            server_names,
            api_listen,
            web_tls,
            link_listen,
            heartbeat_interval,
            missed_heartbeats,
            lost_after,
            agent_cert_ttl,
            force,
            store_engine,
            etcd_endpoints,
            etcd_prefix,
        } => {
            let store = store_config(&store_engine, etcd_endpoints, etcd_prefix)?;
            let mut names = server_names;
            if names.is_empty() {
                names = default_server_names();
            }
            let web = pki::WebTls::parse(&web_tls, api_listen).map_err(CliError::Usage)?;
            let opts = InitOptions {
                server_names: names,
                api_listen,
                web,
                link_listen,
                hosts: HostsConfig {
                    heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
                    missed_heartbeats,
                    lost_after_ms: lost_after.as_millis() as u64,
                },
                agent_cert_ttl,
                force,
                store,
            };
            let out = pki::init(&DataDir::new(&dir.data_dir), &opts)?;
            println!("initialised {}", dir.data_dir.display());
            println!("CA fingerprint: {}", out.ca_fingerprint);
            println!(
                "admin token:    {} (also in {})",
                out.admin_token,
                DataDir::new(&dir.data_dir).admin_token().display()
            );
            println!(
                "start with:     cairn-controller run --data-dir {}",
                dir.data_dir.display()
            );
            Ok(())
        }
        Command::Run { dir } => {
            let running = app::start(DataDir::new(&dir.data_dir)).await?;
            // Ready for systemd (`Type=notify`) only now: the store is open and
            // both listeners are bound. Without NOTIFY_SOCKET this does nothing.
            let status = format!(
                "serving the API on {} and agents on {}",
                running.api_addr, running.link_addr
            );
            let _ = sd_notify::notify(
                false,
                &[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&status),
                ],
            );
            let token = running.shutdown_token();
            tokio::spawn(async move {
                cairn_shared::process::shutdown_signal().await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                token.cancel();
            });
            running.wait().await;
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    dir,
                    ttl,
                    uses,
                    description,
                    quiet,
                },
        } => {
            let req = CreateToken {
                ttl_secs: ttl.as_secs(),
                uses,
                description,
            };
            join_tokens::check(&req).map_err(|e| CliError::Usage(e.message))?;
            let data = DataDir::new(&dir.data_dir);
            let created = create_token(&data, req).await?;
            if quiet {
                println!("{}", created.token);
            } else {
                let cfg = ControllerConfig::load(&data.config()).map_err(CliError::Other)?;
                println!("token:      {}", created.token);
                println!("ca-sha256:  {}", created.ca_sha256);
                println!(
                    "expires:    in {} ({} use{})",
                    humantime::format_duration(ttl),
                    created.uses,
                    if created.uses == 1 { "" } else { "s" }
                );
                println!(
                    "join with:  cairn-agent join --controller {}:{} --token {} --ca-sha256 {}",
                    cfg.certificates
                        .server_names
                        .first()
                        .map(String::as_str)
                        .unwrap_or("CONTROLLER"),
                    cfg.link.listen.port(),
                    created.token,
                    created.ca_sha256
                );
            }
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Export { dir, out },
        } => {
            let store = open_store_offline(&DataDir::new(&dir.data_dir))?;
            let n = if out.as_os_str() == "-" {
                crate::store::dump::export(&store, &mut std::io::stdout().lock())
            } else {
                let file = std::fs::File::create(&out)
                    .map_err(|e| CliError::Other(format!("creating {}: {e}", out.display())))?;
                let mut w = std::io::BufWriter::new(file);
                crate::store::dump::export(&store, &mut w)
            }
            .map_err(|e| CliError::Other(e.to_string()))?;
            eprintln!(
                "exported {n} records from the {} store",
                store.engine_name()
            );
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Import { dir, input },
        } => {
            let store = open_store_offline(&DataDir::new(&dir.data_dir))?;
            let n = if input.as_os_str() == "-" {
                crate::store::dump::import(&store, std::io::stdin().lock())
            } else {
                let file = std::fs::File::open(&input)
                    .map_err(|e| CliError::Other(format!("opening {}: {e}", input.display())))?;
                crate::store::dump::import(&store, std::io::BufReader::new(file))
            }
            .map_err(|e| CliError::Other(e.to_string()))?;
            store
                .flush_blocking()
                .map_err(|e| CliError::Other(e.to_string()))?;
            eprintln!(
                "imported {n} records into the {} store",
                store.engine_name()
            );
            Ok(())
        }
        Command::Token {
            command: TokenCommand::List { dir },
        } => {
            let data = DataDir::new(&dir.data_dir);
            let store = open_store_or_api(&data)?;
            let Some(store) = store else {
                return Err(CliError::Unavailable(
                    "the controller is running; list tokens with GET /api/v1/join-tokens".into(),
                ));
            };
            let now = cairn_shared::time::now_ms();
            println!("{:<10} {:>6} {:>10}  DESCRIPTION", "ID", "USES", "EXPIRES");
            for t in TokenStore::new(store)
                .list()
                .map_err(|e| CliError::Other(e.to_string()))?
            {
                let exp = if t.expires_ms <= now {
                    "expired".to_string()
                } else {
                    format!("{}s", (t.expires_ms - now) / 1000)
                };
                println!(
                    "{:<10} {:>6} {:>10}  {}",
                    t.id,
                    format!("{}/{}", t.uses, t.max_uses),
                    exp,
                    t.description
                );
            }
            Ok(())
        }
    }
}

/// `[store]` from `init`'s flags.
fn store_config(
    engine: &str,
    endpoints: Vec<String>,
    prefix: String,
) -> Result<crate::config::StoreConfig, CliError> {
    use crate::config::{EtcdConfig, StoreConfig, StoreEngineKind};
    let mut etcd = EtcdConfig {
        prefix,
        ..Default::default()
    };
    if !endpoints.is_empty() {
        etcd.endpoints = endpoints;
    }
    let engine = match engine {
        "sled" => StoreEngineKind::Sled,
        "etcd" => {
            etcd.validate().map_err(CliError::Usage)?;
            StoreEngineKind::Etcd
        }
        other => {
            return Err(CliError::Usage(format!(
                "--store-engine {other:?}: expected sled or etcd"
            )))
        }
    };
    Ok(StoreConfig { engine, etcd })
}

/// Opens the configured store for `store export|import`, refusing while a controller
/// holds it.
fn open_store_offline(data: &DataDir) -> Result<Store, CliError> {
    open_store_or_api(data)?
        .ok_or_else(|| CliError::Unavailable("the controller is running; stop it first".into()))
}

/// The names a server certificate gets when none are given: this host's name and loopback.
pub fn default_server_names() -> Vec<String> {
    let mut v = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !v.iter().any(|x| x == h) && h.len() <= 253 {
            v.insert(0, h.to_string());
        }
    }
    v
}

/// Opens the store directly if no controller holds it; `None` if one is running.
fn open_store_or_api(data: &DataDir) -> Result<Option<Store>, CliError> {
    if !data.config().exists() {
        return Err(CliError::Other(format!(
            "{} is not initialised; run `cairn-controller init` first",
            data.root().display()
        )));
    }
    let cfg = ControllerConfig::load(&data.config()).map_err(CliError::Other)?;
    if cfg.store.engine == crate::config::StoreEngineKind::Etcd {
        // etcd has no lock to tell: a controller is running if its API answers.
        let mut addr = cfg.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok() {
            return Ok(None);
        }
    }
    match Store::open_configured(&cfg.store, &data.state()) {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::Locked { .. }) => Ok(None),
        Err(e) => Err(CliError::Other(e.to_string())),
    }
}

/// Creates a token in the store if the controller is stopped, or through its API if it
/// is running (sled allows one process at a time).
async fn create_token(data: &DataDir, req: CreateToken) -> Result<CreatedTokenView, CliError> {
    let cfg = ControllerConfig::load(&data.config()).map_err(CliError::Other)?;
    match open_store_or_api(data)? {
        Some(store) => {
            let pki = pki::Pki::load(data, &cfg)?;
            // The local operator, with the store to themselves: the same operation
            // (and bounds) as the API's, without a caller to check.
            let tokens = TokenStore::new(store.clone());
            let created = join_tokens::create(&tokens, &pki.ca.fingerprint(), &req)
                .await
                .map_err(|e| CliError::Other(e.message))?;
            store
                .flush()
                .await
                .map_err(|e| CliError::Other(e.to_string()))?;
            Ok(created)
        }
        None => {
            let admin = std::fs::read_to_string(data.admin_token()).map_err(|e| {
                CliError::Other(format!("cannot read {}: {e}", data.admin_token().display()))
            })?;
            let mut addr = cfg.api.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let resp = reqwest::Client::new()
                .post(format!("http://{addr}/api/v1/join-tokens"))
                .bearer_auth(admin.trim())
                .json(&serde_json::json!({"ttl_secs": req.ttl_secs, "uses": req.uses, "description": req.description}))
                .send()
                .await
                .map_err(|e| CliError::Unavailable(format!("the store is locked by a running controller, but its API at {addr} did not answer: {e}")))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(CliError::Other(format!(
                    "the controller refused: {status} {body}"
                )));
            }
            resp.json()
                .await
                .map_err(|e| CliError::Other(format!("unexpected answer from the controller: {e}")))
        }
    }
}
