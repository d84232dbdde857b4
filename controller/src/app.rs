//! The running controller: its state ([`App`]) and the tasks that serve it
//! ([`Running`]), with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::identity;
use cairn_shared::protocol::CloseCode;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ControllerConfig, DataDir};
use crate::hosts::{Registry, Thresholds};
use crate::pki::{Pki, PkiError};
use crate::store::{Store, StoreError};
use crate::tokens::TokenStore;

/// Everything the controller's tasks share: the composition root. Doors never
/// reach in here; they call [`crate::service::Service`], which does.
#[derive(Debug)]
pub struct App {
    pub(crate) config: ControllerConfig,
    pub(crate) data_dir: DataDir,
    pub(crate) pki: Pki,
    pub(crate) store: Store,
    pub(crate) registry: Arc<Registry>,
    pub(crate) tokens: TokenStore,
    pub(crate) blueprints: Arc<crate::blueprints::Catalog>,
    pub(crate) accounts: crate::users::Accounts,
    pub(crate) api_tokens: crate::users::ApiTokens,
    pub(crate) instances: crate::instances::Instances,
    pub(crate) autoscaler: crate::autoscaler::Autoscaler,
    /// Uploaded image archives (`cairn images push`), served to agents over the link.
    pub(crate) archives: crate::images::archives::Archives,
    /// Every chunk and manifest pushed (datasets), content-addressed.
    pub(crate) chunks: Arc<dyn crate::chunks::ChunkStore>,
    /// Datasets and their immutable versions (manifests in `chunks`).
    pub(crate) datasets: Arc<crate::datasets::Datasets>,
    /// Users' volumes and their snapshots (manifests in `chunks`).
    pub(crate) volumes: Arc<crate::volumes::Volumes>,
    /// Groups: people, join codes, quotas.
    pub(crate) groups: crate::groups::Groups,
    /// Who did what, for admins.
    pub(crate) audit: crate::audit::Audit,
    /// Each instance's last request or WebSocket message through the proxy.
    pub(crate) activity: crate::proxy::activity::Activity,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] identity::IdentityError),
}

/// A started controller.
#[derive(Debug)]
pub struct Running {
    pub app: Arc<App>,
    /// The operations, for in-process callers (development mode, tests).
    pub service: Arc<crate::service::Service>,
    pub api_addr: SocketAddr,
    pub link_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    endpoint: quinn::Endpoint,
}

impl App {
    /// The CA certificate (DER) that agents and HTTPS clients trust.
    pub fn ca_cert_der(&self) -> &[u8] {
        self.pki.ca.cert_der()
    }

    /// Loads the config, the CA and the store, and builds every subsystem, without
    /// binding anything.
    pub fn open(data_dir: DataDir) -> Result<App, StartError> {
        let config = ControllerConfig::load(&data_dir.config()).map_err(StartError::Config)?;
        let pki = Pki::load(&data_dir, &config)?;
        let store = Store::open_configured(&config.store, &data_dir.state())?;
        let registry = Arc::new(Registry::load(
            store.clone(),
            Thresholds::from_config(&config.hosts),
        )?);
        let tokens = TokenStore::new(store.clone());
        let blueprints = Arc::new(crate::blueprints::Catalog::new(store.clone()));
        let accounts = crate::users::Accounts::new(store.clone());
        let api_tokens = crate::users::ApiTokens::new(store.clone());
        let instances = crate::instances::Instances::load(
            store.clone(),
            config.instances.clone(),
            registry.clone(),
            blueprints.clone(),
            crate::images::registry::credentials(&config.images),
        )?;
        instances.configure_pools(&config.pools);
        let autoscaler = crate::autoscaler::providers(&config, &data_dir, store.clone())
            .map_err(StartError::Config)?;
        let chunks: Arc<dyn crate::chunks::ChunkStore> = Arc::new(
            crate::chunks::local::LocalChunks::open(&data_dir.chunks()).map_err(|e| {
                StartError::Config(format!("chunk store {}: {e}", data_dir.chunks().display()))
            })?,
        );
        let archives =
            crate::images::archives::Archives::open(&config.images, store.clone(), chunks.clone())
                .map_err(|e| StartError::Config(e.to_string()))?;
        let datasets = Arc::new(crate::datasets::Datasets::new(
            store.clone(),
            chunks.clone(),
        ));
        // Launches, blueprint saves and the pre-fetch plan find dataset versions in
        // this catalogue.
        instances.set_dataset_lookup(datasets.clone());
        let volumes = Arc::new(crate::volumes::Volumes::new(
            store.clone(),
            chunks.clone(),
            config.volumes,
        ));
        let groups = crate::groups::Groups::open(store.clone(), cairn_shared::time::now_ms())?;
        let audit = crate::audit::Audit::new(store.clone());
        Ok(App {
            config,
            data_dir,
            pki,
            store,
            registry,
            tokens,
            blueprints,
            accounts,
            api_tokens,
            instances,
            autoscaler,
            archives,
            chunks,
            datasets,
            volumes,
            groups,
            audit,
            activity: Default::default(),
        })
    }
}

/// Opens the store, binds both listeners and starts serving.
pub async fn start(data_dir: DataDir) -> Result<Running, StartError> {
    // Before anything can record, so no early event is lost to the no-op recorder.
    crate::metrics::install();
    let config = ControllerConfig::load(&data_dir.config()).map_err(StartError::Config)?;
    let pki = Pki::load(&data_dir, &config)?;
    let server_config = identity::server_config(pki.ca.cert_der(), &pki.server)?;
    // The CA's key never changes for a controller's life: reset tokens derived
    // from it survive restarts (see `endpoint_with_reset_key`).
    let reset_secret = std::fs::read(data_dir.ca_key())
        .map_err(|e| StartError::Config(format!("{}: {e}", data_dir.ca_key().display())))?;
    let endpoint = identity::endpoint_with_reset_key(
        config.link.listen,
        Some(server_config),
        Some(&reset_secret),
    )
    .map_err(|source| StartError::Bind {
        what: "link (UDP)",
        addr: config.link.listen,
        source,
    })?;
    let link_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
        what: "link (UDP)",
        addr: config.link.listen,
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "API (TCP)",
            addr: config.api.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "API (TCP)",
        addr: config.api.listen,
        source,
    })?;

    drop(pki);
    let app = Arc::new(App::open(data_dir)?);
    let service = crate::service::Service::new(app.clone());
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    tasks.spawn(crate::link::serve(
        app.clone(),
        endpoint.clone(),
        shutdown.clone(),
    ));
    {
        let router = routes(app.clone(), service.clone());
        let tls = crate::https::configured(&app.config.api, app.data_dir.root())
            .map_err(|e| StartError::Config(e.to_string()))?;
        let limits = crate::http_server::Limits::from(&app.config.api);
        tasks.spawn(crate::http_server::serve(
            listener,
            tls,
            router,
            limits,
            shutdown.clone(),
        ));
    }
    tasks.spawn(liveness_loop(app.clone(), shutdown.clone()));
    tasks.spawn(crate::autoscaler::run(
        app.clone(),
        Duration::from_secs(10),
        shutdown.clone(),
    ));
    tasks.spawn(chunk_gc_loop(app.clone(), shutdown.clone()));
    tasks.spawn(retention_loop(app.clone(), shutdown.clone()));
    tasks.spawn(crate::groups::reconcile::run(app.clone(), shutdown.clone()));
    tasks.spawn(crate::users::reconcile::run(app.clone(), shutdown.clone()));
    tasks.spawn(server_cert_loop(
        app.clone(),
        endpoint.clone(),
        shutdown.clone(),
    ));
    tracing::info!(api = %api_addr, link = %link_addr, ca = %app.pki.ca.fingerprint(), hosts = app.registry.list().len(), "controller started");
    Ok(Running {
        app,
        service,
        api_addr,
        link_addr,
        shutdown,
        tasks,
        endpoint,
    })
}

/// Everything the HTTP listener serves: the API under `/api/v1`, the proxy under
/// `/i/`, and the web UI everywhere else.
fn routes(app: Arc<App>, service: Arc<crate::service::Service>) -> axum::Router {
    axum::Router::new()
        .merge(crate::api::router(service.clone()))
        .merge(crate::proxy::router(crate::proxy::Proxy::new(
            app,
            service.clone(),
        )))
        .merge(crate::web::router(service))
        .fallback(crate::api::fallback)
}

/// Advances host liveness on a short period and writes heartbeat-only changes in
/// batches.
async fn liveness_loop(app: Arc<App>, shutdown: CancellationToken) {
    let period =
        Duration::from_millis((app.config.hosts.heartbeat_interval_ms / 4).clamp(100, 1000));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = cairn_shared::time::now_ms();
        let started = std::time::Instant::now();
        if let Err(e) = app.registry.tick(now).await {
            tracing::error!(error = %e, "liveness update failed");
        }
        app.instances.tick(now).await;
        crate::metrics::tick(started.elapsed());
        if last_flush.elapsed() >= Duration::from_secs(10) {
            last_flush = tokio::time::Instant::now();
            if let Err(e) = app.registry.flush_dirty() {
                tracing::error!(error = %e, "writing heartbeat data failed");
            }
        }
    }
}

/// Deletes what is past keeping ([`crate::retention`]): soon after start, then every
/// [`crate::retention::PERIOD`].
async fn retention_loop(app: Arc<App>, shutdown: CancellationToken) {
    let app = &*app;
    crate::periodic::every(
        crate::retention::PERIOD,
        Duration::from_secs(30),
        shutdown,
        |now| async move {
            crate::retention::sweep(app, now).await;
        },
    )
    .await;
}

/// Collects unreferenced chunks every `chunks.gc_interval_secs` (and sooner when a
/// dataset removal asks, through the service).
async fn chunk_gc_loop(app: Arc<App>, shutdown: CancellationToken) {
    let period = Duration::from_secs(app.config.chunks.gc_interval_secs);
    let app = &*app;
    crate::periodic::every(period, period, shutdown, |_| collect_chunks(app)).await;
}

/// One collection of the chunk store, logged; a failure is retried next time. The
/// one place the live set is gathered: image archives' and volume snapshots'
/// manifests and chunks (with their commits held off until the sweep ends), then
/// datasets'.
pub(crate) async fn collect_chunks(app: &App) {
    let grace_ms = app.config.chunks.gc_grace_secs.saturating_mul(1000);
    collect_chunks_at(app, cairn_shared::time::now_ms(), grace_ms).await;
}

/// [`collect_chunks`] at a given time and grace period; what it swept, `None` if it
/// failed (logged).
pub(crate) async fn collect_chunks_at(
    app: &App,
    now_ms: u64,
    grace_ms: u64,
) -> Option<crate::chunks::gc::Swept> {
    let _no_image_commits = app.archives.pause_commits().await;
    let _no_volume_commits = app.volumes.pause_commits().await;
    let mut live = match app.archives.live_chunks().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "chunk store collection skipped: cannot mark the image archives' chunks; will retry");
            return None;
        }
    };
    match app.volumes.live_chunks().await {
        Ok(l) => live.extend(l),
        Err(e) => {
            tracing::error!(error = %e, "chunk store collection skipped: cannot mark the volumes' chunks; will retry");
            return None;
        }
    }
    match app
        .datasets
        .collect_garbage_with(live, now_ms, grace_ms)
        .await
    {
        Ok(swept) => Some(swept),
        Err(e) => {
            tracing::error!(error = %e, "chunk store collection failed; will retry");
            None
        }
    }
}

/// Renews the server certificate of a long-running controller before it expires and
/// swaps it into the endpoint; existing connections keep their session.
async fn server_cert_loop(app: Arc<App>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    let mut current = app.pki.server.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        match app.pki.renew_if_due(&current, &app.data_dir, &app.config) {
            Ok(None) => {}
            Ok(Some(renewed)) => match identity::server_config(app.pki.ca.cert_der(), &renewed) {
                Ok(cfg) => {
                    endpoint.set_server_config(Some(cfg));
                    current = renewed;
                }
                Err(e) => tracing::error!(error = %e, "renewed server certificate is unusable"),
            },
            Err(e) => {
                tracing::error!(error = %e, "server certificate renewal failed; will retry in an hour")
            }
        }
    }
}

impl Running {
    /// A token that stops the controller when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until `shutdown_token()` is cancelled, then drains.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        self.drain().await;
    }

    /// Stops accepting work, tells agents, finishes in-flight API requests, and makes
    /// the store durable.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.drain().await;
    }

    async fn drain(&mut self) {
        tracing::info!("controller shutting down");
        self.app
            .registry
            .close_all(CloseCode::Normal, "controller shutting down");
        if tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("some tasks did not finish within 10 s; aborting them");
            self.tasks.abort_all();
        }
        if let Err(e) = self.app.registry.flush_dirty() {
            tracing::error!(error = %e, "final write of host data failed");
        }
        if let Err(e) = self.app.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        self.endpoint
            .close(CloseCode::Normal.into(), b"controller shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
