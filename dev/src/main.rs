//! `cairn-dev`: a working Cairn on this machine in one command.
//!
//! It checks the Docker Engine first (and stops with one actionable line if it is not
//! there), initialises a data directory on first use, starts the controller on
//! loopback, enrols a local agent with a single-use token, runs that agent exactly as
//! `cairn-agent run` does ([`cairn_agent::run::run`]), seeds a development account and
//! an example blueprint whose image is made from this binary ([`example`]), and runs
//! until Ctrl-C.
//!
//! * [`controller`] — every call into `cairn-controller`.
//! * [`example`] — the example image, built without any registry or package.
//! * [`serve`] — the example app the image runs (the hidden `serve-example`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_agent::enrol::{self, JoinOptions};
use cairn_agent::state::{AgentState, StateDir};
use cairn_controller::cli::CliError;
use cairn_controller::config::DataDir;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod controller;
mod example;
mod serve;

/// How long dev mode waits for the Docker Engine when it checks it is there.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "cairn-dev",
    version,
    about = "Cairn development mode: initialise if needed and run a controller plus a local agent against this machine's Docker Engine"
)]
struct Cli {
    /// Data directory for development state.
    #[arg(long, env = "CAIRN_DEV_DIR", default_value = ".cairn-dev")]
    data_dir: PathBuf,
    /// API port on 127.0.0.1.
    #[arg(long, default_value_t = 7080)]
    api_port: u16,
    /// Link port (UDP) on 127.0.0.1.
    #[arg(long, default_value_t = 7443)]
    link_port: u16,
    #[command(subcommand)]
    command: Option<Inner>,
}

/// What the example image runs; not for people.
#[derive(Subcommand)]
enum Inner {
    /// Serve the example web page.
    #[command(hide = true)]
    ServeExample {
        #[arg(long, default_value_t = example::APP_PORT)]
        port: u16,
    },
}

/// A failed start: what to print and which exit code to use.
#[derive(Debug, thiserror::Error)]
enum DevError {
    #[error(transparent)]
    Controller(#[from] CliError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl DevError {
    fn exit_code(&self) -> u8 {
        match self {
            DevError::Controller(e) => e.exit_code(),
            DevError::Unavailable(_) => 69, // EX_UNAVAILABLE
            DevError::Other(_) => 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Inner::ServeExample { port }) = cli.command {
        return serve_example(port);
    }
    cairn_shared::process::init_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.data_dir, cli.api_port, cli.link_port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The example app, inside its container: one thread is plenty for one page.
fn serve_example(port: u16) -> ExitCode {
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| rt.block_on(serve::serve(port)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: serving the example page on port {port}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(data_dir: PathBuf, api_port: u16, link_port: u16) -> Result<(), DevError> {
    // Listen for Ctrl-C from the start: a signal during start-up (the example image's
    // first import takes seconds) stops cleanly once start-up is done, instead of
    // killing the process half-way.
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        cairn_shared::process::shutdown_signal().await;
        stop_on_signal.cancel();
    });
    let engine = cairn_agent::facts::ping_docker()
        .await
        .map_err(DevError::Unavailable)?;
    let data = DataDir::new(&data_dir);
    if controller::init_if_new(&data, api_port, link_port)? {
        println!("initialised {}", data_dir.display());
    }
    let running = controller::start(data.clone()).await?;
    let api_addr = running.api_addr;
    let app = running.service.clone();

    let agent_dir = StateDir::new(data_dir.join("agent"));
    let state = if agent_dir.is_enrolled() {
        AgentState::load(&agent_dir).map_err(|e| DevError::Other(e.to_string()))?
    } else {
        let (token, ca_sha256) = controller::join_token(&app)
            .await
            .map_err(DevError::Other)?;
        let opts = JoinOptions {
            controller: running.link_addr.to_string(),
            token,
            ca_sha256,
            state_dir: agent_dir.root().to_path_buf(),
            labels: [("dev".to_string(), "true".to_string())].into(),
            hostname: enrol::system_hostname(),
            force: false,
        };
        enrol::join(&opts)
            .await
            .map_err(|e| DevError::Other(format!("enrolling the local agent: {e}")))?
    };
    let host = state.config.host_id.clone();
    let shutdown = running.shutdown_token();
    let agent_stop = CancellationToken::new();
    let login_file = data_dir.join("dev-login.txt");
    let mut notes = vec![];
    if let Err(e) = controller::ensure_admin(&app, DEV_USER, &login_file).await {
        notes.push(format!("could not create the development account: {e}"));
    }
    let agent = tokio::spawn(cairn_agent::run::run(agent_dir, state, agent_stop.clone()));
    // After the agent starts: the first import of the example image takes seconds.
    let hello = match seed_example(&app).await {
        Ok(()) => true,
        Err(e) => {
            notes.push(e);
            false
        }
    };

    println!();
    println!("Cairn is running (development mode) — Docker Engine {engine}, local host {host}");
    println!("  web UI:       http://{api_addr}/");
    println!("  API:          http://{api_addr}/api/v1/hosts");
    println!("  admin token:  {}", data.admin_token().display());
    println!(
        "  try:          curl -H \"Authorization: Bearer $(cat {})\" http://{api_addr}/api/v1/hosts",
        data.admin_token().display()
    );
    println!(
        "  log in:       as {} in the web UI, or: cairn login --url http://{api_addr} --user {}   (password in {})",
        DEV_USER,
        DEV_USER,
        login_file.display()
    );
    if hello {
        println!("  launch:       cairn launch hello --wait");
    }
    for note in &notes {
        println!("  note:         {note}");
    }
    println!("  stop:         Ctrl-C");
    println!();

    tokio::select! {
        _ = stop.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
    // The agent says goodbye first, so the controller records a clean disconnect.
    agent_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    running.stop().await;
    Ok(())
}

/// The development admin account.
const DEV_USER: &str = "dev";

/// Makes the example image and, with it, the example blueprint, unless they exist;
/// else says what went wrong, for the operator.
async fn seed_example(app: &cairn_controller::service::Service) -> Result<(), String> {
    let docker = cairn_agent::docker::connect(DOCKER_TIMEOUT)
        .await
        .map_err(|e| format!("cannot build the example image: Docker Engine: {e}"))?;
    example::ensure_hello_image(&docker)
        .await
        .map_err(|e| format!("cannot build the example image: {e}"))?;
    controller::ensure_hello_blueprint(app, example::HELLO_IMAGE, example::APP_PORT)
        .await
        .map_err(|e| format!("could not create the example blueprint: {e}"))
}
