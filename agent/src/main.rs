//! `cairn-agent`: enrol a host (`join`) and keep it linked to the controller (`run`).

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_agent::enrol::{self, JoinOptions};
use cairn_agent::link::LinkError;
use cairn_agent::state::{AgentState, StateDir};
use cairn_shared::identity::Fingerprint;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "cairn-agent",
    version,
    about = "Cairn agent: links a Docker host to a Cairn controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol this host with a controller using a join token.
    Join {
        /// The controller's link address, HOST:PORT (UDP).
        #[arg(long)]
        controller: String,
        /// The join token from `cairn-controller token create`.
        #[arg(long, env = "CAIRN_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The controller CA's SHA-256 fingerprint, as printed with the token.
        #[arg(long)]
        ca_sha256: String,
        #[arg(
            long,
            env = "CAIRN_AGENT_STATE_DIR",
            default_value = "/var/lib/cairn-agent"
        )]
        state_dir: PathBuf,
        /// A label for this host, KEY=VALUE (repeatable), e.g. --label gpu=true.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The name this host reports (defaults to the system host name).
        #[arg(long)]
        hostname: Option<String>,
        /// Enrol again even if the state directory already holds an enrolment.
        #[arg(long)]
        force: bool,
    },
    /// Connect to the controller and report this host until stopped.
    Run {
        #[arg(
            long,
            env = "CAIRN_AGENT_STATE_DIR",
            default_value = "/var/lib/cairn-agent"
        )]
        state_dir: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics (off by default). There is
        /// no authentication: use a loopback address or one on a private network
        /// only the monitoring system reaches, e.g. 127.0.0.1:9464.
        #[arg(long, env = "CAIRN_AGENT_METRICS_LISTEN", value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Container creates run at once on this host (default 4, or
        /// `container_slots` in agent.toml); further launches wait their turn and
        /// show their place in line. A slow Docker Engine answers a few at a time
        /// faster than a hundred at once.
        #[arg(long, env = "CAIRN_AGENT_CONTAINER_SLOTS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        container_slots: Option<u16>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    cairn_shared::validate::parse_label(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_shared::process::init_logging();
    // One thread is plenty for a heartbeat every few seconds and keeps the idle
    // footprint small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Join {
                controller,
                token,
                ca_sha256,
                state_dir,
                labels,
                hostname,
                force,
            } => {
                let ca_sha256 = match Fingerprint::parse(&ca_sha256) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                };
                let opts = JoinOptions {
                    controller,
                    token,
                    ca_sha256,
                    state_dir: state_dir.clone(),
                    labels: labels.into_iter().collect(),
                    hostname: hostname.unwrap_or_else(enrol::system_hostname),
                    force,
                };
                match enrol::join(&opts).await {
                    Ok(state) => {
                        println!(
                            "enrolled as host {}; state in {}",
                            state.config.host_id,
                            state_dir.display()
                        );
                        println!(
                            "start the agent with: cairn-agent run --state-dir {}",
                            state_dir.display()
                        );
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        e.exit_code()
                    }
                }
            }
            Command::Run {
                state_dir,
                metrics_listen,
                container_slots,
            } => run(state_dir, metrics_listen, container_slots).await,
        }
    });
    ExitCode::from(code as u8)
}

async fn run(
    state_dir: PathBuf,
    metrics_listen: Option<std::net::SocketAddr>,
    container_slots: Option<u16>,
) -> i32 {
    let dir = StateDir::new(state_dir);
    let mut state = match AgentState::load(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 3;
        }
    };
    if let Some(n) = container_slots {
        state.config.container_slots = Some(usize::from(n));
    }
    let shutdown = CancellationToken::new();
    if let Some(addr) = metrics_listen {
        // Installed before anything records, so no early event is lost.
        cairn_agent::metrics::install();
        match cairn_agent::metrics::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving metrics at /metrics");
                tokio::spawn(cairn_agent::metrics::serve(listener, shutdown.clone()));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match cairn_agent::run::run(dir, state, shutdown).await {
        Ok(()) => 0,
        Err(e @ LinkError::Rejected { .. }) => {
            eprintln!("error: {e}");
            3
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM, so the agent says goodbye to the controller.
async fn stop_on_signal(token: CancellationToken) {
    cairn_shared::process::shutdown_signal().await;
    tracing::info!("stopping");
    token.cancel();
}
