//! Every call development mode makes into `cairn-controller`, in one place.
//!
//! Initialising the data directory and starting the controller use its public
//! start-up API. The rest — a join token for the local agent, the development
//! account, the example blueprint — are service operations called as the local
//! operator, the same ones the API and the web UI call.

use std::path::Path;
use std::time::Duration;

use cairn_controller::app::{self, Running};
use cairn_controller::cli::CliError;
use cairn_controller::config::{ControllerConfig, DataDir, HostsConfig, PoolConfig};
use cairn_controller::pki::{self, InitOptions};
use cairn_controller::service::join_tokens::CreateToken;
use cairn_controller::service::{Caller, Kind, Service};
use cairn_shared::identity::Fingerprint;

/// Initialises `data` for loopback use unless it already is; true if it was new.
pub fn init_if_new(data: &DataDir, api_port: u16, link_port: u16) -> Result<bool, CliError> {
    if data.config().exists() {
        return Ok(false);
    }
    let opts = InitOptions {
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        api_listen: ([127, 0, 0, 1], api_port).into(),
        // Plain HTTP on loopback, so a browser opens it without a warning.
        web: pki::WebTls::Http,
        link_listen: ([127, 0, 0, 1], link_port).into(),
        hosts: HostsConfig::default(),
        agent_cert_ttl: Duration::from_secs(30 * 24 * 3600),
        force: false,
        store: Default::default(),
    };
    pki::init(data, &opts)?;
    // The local agent may run without root, and so without the packet filter that
    // keeps instances off the host; on a loopback-only development controller that
    // must not leave the example queued forever.
    let other = |e: String| CliError::Other(e);
    let mut config = ControllerConfig::load(&data.config()).map_err(other)?;
    let pool: PoolConfig = toml::from_str("name = \"default\"\nallow_unisolated = true\n")
        .map_err(|e| other(format!("the development pool: {e}")))?;
    config.pools.push(pool);
    std::fs::write(data.config(), config.to_toml())
        .map_err(|e| other(format!("writing {}: {e}", data.config().display())))?;
    Ok(true)
}

/// Starts the controller on `data`.
pub async fn start(data: DataDir) -> Result<Running, CliError> {
    Ok(app::start(data).await?)
}

// ---- Service operations, as the local operator. --------------------------------

/// A single-use join token, valid for a minute, and the CA fingerprint to join with.
pub async fn join_token(service: &Service) -> Result<(String, Fingerprint), String> {
    let req = CreateToken {
        ttl_secs: 60,
        uses: 1,
        description: "dev mode local agent".into(),
    };
    let created = service
        .create_join_token(&Caller::operator(), &req)
        .await
        .map_err(|e| e.to_string())?;
    let ca = Fingerprint::parse(&created.ca_sha256).map_err(|e| e.to_string())?;
    Ok((created.token, ca))
}

/// Creates admin account `user` with a random password written to `login_file`,
/// unless the account exists.
pub async fn ensure_admin(service: &Service, user: &str, login_file: &Path) -> Result<(), String> {
    let password = cairn_controller::auth::random_secret(12);
    match service
        .create_user(
            &Caller::operator(),
            user,
            &password,
            cairn_controller::users::Role::Admin,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind == Kind::Conflict => return Ok(()),
        Err(e) => return Err(e.to_string()),
    }
    cairn_shared::fsutil::write_secret(
        login_file,
        format!("user: {user}\npassword: {password}\n").as_bytes(),
    )
    .map_err(|e| format!("writing {}: {e}", login_file.display()))
}

/// Creates the `hello` blueprint on `image` unless it exists.
pub async fn ensure_hello_blueprint(
    service: &Service,
    image: &str,
    app_port: u16,
) -> Result<(), String> {
    let input = cairn_controller::blueprints::BlueprintInput {
        name: Some("hello".into()),
        description: Some("A tiny web page served from your own container (works offline).".into()),
        image: Some(image.into()),
        app: Some("http".into()),
        app_port: Some(i64::from(app_port)),
        memory_mib: Some(64),
        cpus: Some(0.5),
        max_lifetime_secs: Some(3600),
        // Built on this machine, in no registry: run it as it is.
        pull: Some("never".into()),
        ..Default::default()
    };
    match service.create_blueprint(&Caller::operator(), &input).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == Kind::Conflict => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
