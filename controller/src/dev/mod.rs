//! Development mode: one command that gives a working Cairn on this machine.
//!
//! It checks the Docker Engine first (and stops with one actionable line if it is not
//! there), initialises a data directory on first use, starts the controller on
//! loopback, enrols a local agent with a single-use token, and runs both in this
//! process until Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_agent::enrol::{self, JoinOptions};
use cairn_agent::facts::{self, HostFactsSource};
use cairn_agent::link::{self, LinkOptions, WorkloadsHandle};
use cairn_agent::runtime::docker::DockerRuntime;
use cairn_agent::runtime::Supervisor;
use cairn_agent::state::{AgentState, StateDir};

mod examples;

use crate::app;
use crate::cli::CliError;
use crate::config::{DataDir, HostsConfig};
use crate::pki::{self, InitOptions};

pub async fn run(data_dir: PathBuf, api_port: u16, link_port: u16) -> Result<(), CliError> {
    let engine = facts::ping_docker().await.map_err(CliError::Unavailable)?;
    let data = DataDir::new(&data_dir);
    if !data.config().exists() {
        let opts = InitOptions {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            api_listen: ([127, 0, 0, 1], api_port).into(),
            // Plain HTTP on loopback, so a browser opens it without a warning.
            web: pki::WebTls::Http,
            link_listen: ([127, 0, 0, 1], link_port).into(),
            hosts: HostsConfig::default(),
            agent_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            force: false,
        };
        pki::init(&data, &opts)?;
        println!("initialised {}", data_dir.display());
    }
    let running = app::start(data.clone()).await?;
    let api_addr = running.api_addr;
    let app = running.app.clone();

    let agent_dir = StateDir::new(data_dir.join("agent"));
    let state = if agent_dir.is_enrolled() {
        AgentState::load(&agent_dir).map_err(|e| CliError::Other(e.to_string()))?
    } else {
        let token = app
            .tokens
            .create(
                60_000,
                1,
                "dev mode local agent".into(),
                cairn_shared::time::now_ms(),
            )
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        let opts = JoinOptions {
            controller: running.link_addr.to_string(),
            token: token.token,
            ca_sha256: app.pki.ca.fingerprint(),
            state_dir: agent_dir.root().to_path_buf(),
            labels: [("dev".to_string(), "true".to_string())].into(),
            hostname: sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()),
            force: false,
        };
        enrol::join(&opts)
            .await
            .map_err(|e| CliError::Other(format!("enrolling the local agent: {e}")))?
    };
    let host = state.config.host_id.clone();
    let seeded = seed(&app, &data_dir).await;
    let facts = Arc::new(
        HostFactsSource::new(state.config.labels.clone(), agent_dir.root().to_path_buf()).await,
    );
    let shutdown = running.shutdown_token();
    let agent_stop = tokio_util::sync::CancellationToken::new();
    let supervisor = Supervisor::new(
        DockerRuntime::new(&state.config.host_id)
            .with_oci_runtime(state.config.oci_runtime.clone()),
    );
    tokio::spawn(supervisor.clone().run(agent_stop.clone()));
    let agent = tokio::spawn(link::run(
        state,
        facts,
        None,
        LinkOptions {
            state_dir: Some(agent_dir),
            workloads: Some(WorkloadsHandle(supervisor)),
            ..LinkOptions::default()
        },
        agent_stop.clone(),
    ));

    println!();
    println!("Cairn is running (development mode) — Docker Engine {engine}, local host {host}");
    println!("  web UI:       http://{api_addr}/");
    println!("  API:          http://{api_addr}/api/v1/hosts");
    println!("  admin token:  {}", data.admin_token().display());
    println!("  try:          curl -H \"Authorization: Bearer $(cat {})\" http://{api_addr}/api/v1/hosts", data.admin_token().display());
    match &seeded {
        Ok(s) => {
            println!(
                "  log in:       as {} in the web UI, or: cairn login --url http://{api_addr} --user {}   (password in {})",
                s.user,
                s.user,
                s.login_file.display()
            );
            if s.hello {
                println!("  launch:       cairn launch hello --wait");
            }
            for note in &s.notes {
                println!("  note:         {note}");
            }
        }
        Err(e) => println!("  note:         could not seed the example content: {e}"),
    }
    println!("  stop:         Ctrl-C");
    println!();

    tokio::select! {
        _ = wait_for_signal() => {}
        _ = shutdown.cancelled() => {}
    }
    // The agent says goodbye first, so the controller records a clean disconnect.
    agent_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    running.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    cairn_shared::process::shutdown_signal().await
}

/// What [`seed`] set up.
struct Seeded {
    user: String,
    login_file: PathBuf,
    hello: bool,
    notes: Vec<String>,
}

/// Creates the development admin account and the example blueprint on first run.
async fn seed(app: &crate::app::App, data_dir: &std::path::Path) -> Result<Seeded, String> {
    let user = "dev".to_string();
    let login_file = data_dir.join("dev-login.txt");
    let now = cairn_shared::time::now_ms();
    if app
        .accounts
        .get(&user)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        let password = crate::auth::random_secret(12);
        app.accounts
            .create(&user, &password, crate::users::Role::Admin, now)
            .await
            .map_err(|e| e.to_string())?;
        cairn_shared::fsutil::write_secret(
            &login_file,
            format!("user: {user}\npassword: {password}\n").as_bytes(),
        )
        .map_err(|e| format!("writing {}: {e}", login_file.display()))?;
    }
    let mut notes = vec![];
    let docker = async {
        let d = bollard::Docker::connect_with_defaults().map_err(|e| e.to_string())?;
        d.negotiate_version().await.map_err(|e| e.to_string())
    };
    let image = match docker.await {
        Ok(d) => examples::ensure_hello_image(&d).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &image {
        notes.push(e.clone());
    }
    let hello = image.is_ok();
    if hello
        && app
            .blueprints
            .get("hello")
            .map_err(|e| e.to_string())?
            .is_none()
    {
        let input = crate::blueprints::BlueprintInput {
            name: Some("hello".into()),
            description: Some(
                "A tiny web page served from your own container (works offline).".into(),
            ),
            image: Some(examples::HELLO_IMAGE.into()),
            app: Some("http".into()),
            app_port: Some(8080),
            memory_mib: Some(64),
            cpus: Some(0.5),
            max_lifetime_secs: Some(3600),
            // Built on this machine, in no registry: run it as it is.
            pull: Some("never".into()),
            ..Default::default()
        };
        app.blueprints
            .create(&input, &crate::images::resolve::Resolver::of(app), now)
            .await
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(Seeded {
        user,
        login_file,
        hello,
        notes,
    })
}
