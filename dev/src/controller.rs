//! Every call development mode makes into `cairn-controller`, in one place.
//!
//! Initialising the data directory and starting the controller use its public
//! start-up API. The rest — a join token for the local agent, the development
//! account, the example blueprint — reach into the running controller's subsystems
//! (`App::tokens`, `App::accounts`, `App::blueprints`, `App::pki`); they are the
//! calls to move onto the controller's service layer when it exists.

use std::path::Path;
use std::time::Duration;

use cairn_controller::app::{self, App, Running};
use cairn_controller::cli::CliError;
use cairn_controller::config::{DataDir, HostsConfig};
use cairn_controller::pki::{self, InitOptions};
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
    };
    pki::init(data, &opts)?;
    Ok(true)
}

/// Starts the controller on `data`.
pub async fn start(data: DataDir) -> Result<Running, CliError> {
    Ok(app::start(data).await?)
}

// ---- Controller internals: move these onto the service layer. ------------------

/// A single-use join token, valid for a minute, and the CA fingerprint to join with.
pub async fn join_token(app: &App) -> Result<(String, Fingerprint), String> {
    let token = app
        .tokens
        .create(
            60_000,
            1,
            "dev mode local agent".into(),
            cairn_shared::time::now_ms(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((token.token, app.pki.ca.fingerprint()))
}

/// Creates admin account `user` with a random password written to `login_file`,
/// unless the account exists.
pub async fn ensure_admin(app: &App, user: &str, login_file: &Path) -> Result<(), String> {
    if app.accounts.get(user).map_err(|e| e.to_string())?.is_some() {
        return Ok(());
    }
    let password = cairn_controller::auth::random_secret(12);
    app.accounts
        .create(
            user,
            &password,
            cairn_controller::users::Role::Admin,
            cairn_shared::time::now_ms(),
        )
        .await
        .map_err(|e| e.to_string())?;
    cairn_shared::fsutil::write_secret(
        login_file,
        format!("user: {user}\npassword: {password}\n").as_bytes(),
    )
    .map_err(|e| format!("writing {}: {e}", login_file.display()))
}

/// Creates the `hello` blueprint on `image` unless it exists.
pub async fn ensure_hello_blueprint(app: &App, image: &str, app_port: u16) -> Result<(), String> {
    if app
        .blueprints
        .get("hello")
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
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
    app.blueprints
        .create(
            &input,
            &cairn_controller::images::resolve::Resolver::of(app),
            cairn_shared::time::now_ms(),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(())
}
