//! The single door: `/i/{instance}/…` on the controller, carried over the agent's QUIC
//! link to the instance's app. Hosts open no port for users.
//!
//! * [`tunnel`] — byte tunnels over the link, and the connector hyper's pooled client
//!   uses, so keep-alive connections to an app are reused.
//! * [`forward`] — what changes in requests and responses on the way (pure).
//! * [`activity`] — what counts as use of an instance (requests, WebSocket
//!   messages other than pings), for idle culling.
//! * [`idle`] — splicing upgraded connections (WebSockets) with a long idle limit.
//!
//! Only the owner, or an admin, gets through; everyone else gets the same 404 as for
//! an instance that does not exist. Bodies stream in both directions: nothing is
//! buffered beyond the link's flow-control windows, so a 2 GiB upload costs no more
//! memory than a small one.

pub mod activity;
pub mod forward;
pub mod idle;
pub mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::any;
use axum::Router;
use cairn_shared::ids::InstanceId;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::app::App;
use crate::auth::{self, Credential};
use crate::blueprints::spec::AppKind;
use crate::instances::{Instance, InstanceState};
use crate::web::pages;

/// The proxy's shared state.
pub struct Proxy {
    app: Arc<App>,
    service: Arc<crate::service::Service>,
    client: Client<tunnel::Connector, Body>,
    /// App kind per blueprint revision; revisions never change, so this never goes stale.
    kinds: Mutex<HashMap<(String, u32), AppKind>>,
    websocket_idle: Duration,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(app: Arc<App>, service: Arc<crate::service::Service>) -> Arc<Self> {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(tunnel::Connector(app.clone()));
        let websocket_idle = Duration::from_secs(app.config.proxy.websocket_idle_secs);
        Arc::new(Proxy {
            app,
            service,
            client,
            kinds: Mutex::new(HashMap::new()),
            websocket_idle,
        })
    }

    fn app_kind(&self, i: &Instance) -> Option<AppKind> {
        let key = (i.blueprint.clone(), i.revision);
        if let Some(k) = self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(*k);
        }
        let kind = match self.app.blueprints.revision(&i.blueprint, i.revision) {
            Ok(Some(r)) => r.spec.app,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read blueprint revision");
                return None;
            }
        };
        self.kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, kind);
        Some(kind)
    }
}

/// The routes under `/i/`.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/i/{id}", any(handle))
        .route("/i/{id}/", any(handle))
        .route("/i/{id}/{*rest}", any(handle))
        .with_state(proxy)
}

/// The scheme browsers use to reach this controller.
fn scheme(app: &App) -> &'static str {
    if app.config.api.serves_https() || app.config.api.behind_tls_proxy {
        "https"
    } else {
        "http"
    }
}

async fn handle(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let app = &proxy.app;
    let path = req.uri().path();
    let after = path.strip_prefix("/i/").unwrap_or_default();
    let (id_str, has_slash) = match after.split_once('/') {
        Some((id, _)) => (id, true),
        None => (after, false),
    };
    let Ok(id) = InstanceId::parse(id_str) else {
        return pages::proxy_not_found(false).into_response();
    };
    let cred = auth::credential(req.headers());
    let Some(caller) = cred.and_then(|c| proxy.service.authenticate(c.token()).ok()) else {
        return pages::proxy_not_found(true).into_response();
    };
    let Some(inst) = proxy.service.proxied_instance(&caller, &id) else {
        return pages::proxy_not_found(false).into_response();
    };
    if !has_slash {
        // Relative links of the app resolve against the directory, so it needs one.
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        return Redirect::permanent(&format!("/i/{id}/{q}")).into_response();
    }
    match inst.state {
        InstanceState::Running => {}
        s if s.is_terminal() => return pages::instance_gone(&inst).into_response(),
        _ => return pages::instance_waiting(&inst).into_response(),
    }
    app.activity.touch(&inst.id, cairn_shared::time::now_ms());
    let Some(kind) = proxy.app_kind(&inst) else {
        return pages::proxy_error(&inst, "its blueprint revision is missing").into_response();
    };
    let prefix = format!("/i/{id}");
    let cx = forward::Context {
        app: kind,
        prefix: &prefix,
        client_ip: Some(peer.ip()),
        scheme: scheme(app),
        bearer_was_cairns: matches!(cred, Some(Credential::Bearer(_))),
        jupyter_token: inst.secrets.jupyter_token.as_deref(),
    };
    crate::metrics::proxy_request();
    forward(&proxy, &inst, req, &cx)
        .await
        .unwrap_or_else(|resp| resp)
}

/// Sends the request to the app and streams its answer back; splices upgrades.
async fn forward(
    proxy: &Arc<Proxy>,
    inst: &Instance,
    req: Request,
    cx: &forward::Context<'_>,
) -> Result<Response, Response> {
    let (mut parts, body) = req.into_parts();
    let upgrade = forward::is_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let target = format!(
        "http://{}{}",
        inst.id,
        forward::upstream_path(cx.app, cx.prefix, pq)
    );
    parts.uri = target
        .parse::<Uri>()
        .map_err(|e| pages::proxy_error(inst, &format!("bad request path: {e}")).into_response())?;
    parts.version = Version::HTTP_11;
    forward::request_headers(&mut parts.headers, cx);
    let upstream = Request::from_parts(parts, body);

    let mut resp = proxy.client.request(upstream).await.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        tracing::info!(instance = %inst.id, %reason, "proxy request failed");
        pages::proxy_error(inst, &reason).into_response()
    })?;

    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let Some(client_upgrade) = client_upgrade else {
            return Err(
                pages::proxy_error(inst, "the app switched protocols unasked").into_response(),
            );
        };
        let app_upgrade = hyper::upgrade::on(&mut resp);
        let idle = proxy.websocket_idle;
        let id = inst.id.clone();
        let on_message: idle::OnMessage = {
            let app = proxy.app.clone();
            let id = inst.id.clone();
            Arc::new(move || app.activity.touch(&id, cairn_shared::time::now_ms()))
        };
        tokio::spawn(async move {
            let (client, app) = tokio::join!(client_upgrade, app_upgrade);
            match (client, app) {
                (Ok(c), Ok(a)) => {
                    let end = idle::splice_watched(
                        TokioIo::new(c),
                        TokioIo::new(a),
                        idle,
                        Some(on_message),
                    )
                    .await;
                    tracing::debug!(instance = %id, ?end, "websocket closed");
                }
                (c, a) => tracing::info!(
                    instance = %id,
                    client_ok = c.is_ok(),
                    app_ok = a.is_ok(),
                    "websocket upgrade failed"
                ),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    forward::response_headers(&mut parts.headers, cx, upgraded);
    // Caches between the browser and Cairn must not keep one user's pages for another.
    parts
        .headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("private"));
    Ok(Response::from_parts(parts, Body::new(body)))
}
