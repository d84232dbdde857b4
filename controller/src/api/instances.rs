//! Instances over the API: launch, list, read, stop, extend, logs.
//!
//! A user sees only their own instances; someone else's answers 404, exactly like one
//! that does not exist. App secrets (Jupyter token, RStudio password) are shown only to
//! the owner.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cairn_shared::framing;
use cairn_shared::ids::InstanceId;
use cairn_shared::workload::{ControllerRequest, ControllerResponse};
use serde::{Deserialize, Serialize};

use super::{Admin, ApiError, ApiResult, Caller};
use crate::app::App;
use crate::instances::manager::base_url;
use crate::instances::state::Transition;
use crate::instances::{Instance, InstanceState, LaunchError};
use crate::users::Principal;

#[derive(Debug, Serialize)]
pub struct AppView {
    pub kind: Option<crate::blueprints::AppKind>,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub id: InstanceId,
    pub owner: String,
    pub blueprint: String,
    pub revision: u32,
    pub state: InstanceState,
    pub state_reason: Option<String>,
    pub host: Option<String>,
    pub address: Option<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Seconds until the lifetime runs out (0 once past).
    pub time_left_secs: u64,
    pub transitions: Vec<Transition>,
    pub app: AppView,
    /// Place in the launch queue (1 = next) while it waits for capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
}

fn view(app: &App, i: Instance, viewer: &Principal) -> InstanceView {
    let owner = viewer.user.as_deref() == Some(i.owner.as_str())
        || (viewer.user.is_none() && i.owner == "admin");
    let kind = app
        .blueprints
        .revision(&i.blueprint, i.revision)
        .ok()
        .flatten()
        .map(|r| r.spec.app);
    let now = cairn_shared::time::now_ms();
    InstanceView {
        queue_position: app.instances.queue_position(&i.id),
        app: AppView {
            kind,
            url: base_url(&i.id),
            token: i.secrets.jupyter_token.clone().filter(|_| owner),
            password: i.secrets.rstudio_password.clone().filter(|_| owner),
        },
        time_left_secs: if i.state.is_terminal() {
            0
        } else {
            i.expires_ms.saturating_sub(now) / 1000
        },
        id: i.id,
        owner: i.owner,
        blueprint: i.blueprint,
        revision: i.revision,
        state: i.state,
        state_reason: i.state_reason,
        host: i.host.map(|h| h.to_string()),
        address: i.address,
        created_ms: i.created_ms,
        expires_ms: i.expires_ms,
        transitions: i.transitions,
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no instance {id}"))
}

/// Parses an id and finds an instance the caller may see.
fn find(app: &App, p: &Principal, id: &str) -> ApiResult<Instance> {
    let parsed = InstanceId::parse(id).map_err(|_| not_found(id))?;
    app.instances
        .visible(p, &parsed)
        .ok_or_else(|| not_found(id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    pub blueprint: String,
}

pub async fn launch(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    body: Result<Json<Launch>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match app
        .instances
        .launch(&app, &p, &req.blueprint, cairn_shared::time::now_ms())
        .await
    {
        Ok(i) => Ok((StatusCode::CREATED, Json(view(&app, i, &p)))),
        Err(LaunchError::NoBlueprint(n)) => {
            Err(ApiError::not_found(format!("no blueprint named {n:?}")))
        }
        Err(LaunchError::Limit(m)) => Err(ApiError::new(StatusCode::CONFLICT, "limit_reached", m)),
        Err(LaunchError::Store(e)) => Err(ApiError::internal(e)),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub all: bool,
}

pub async fn list(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    Query(q): Query<ListQuery>,
) -> Json<Vec<InstanceView>> {
    Json(
        app.instances
            .list(&p, q.all)
            .into_iter()
            .map(|i| view(&app, i, &p))
            .collect(),
    )
}

pub async fn get(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    let i = find(&app, &p, &id)?;
    Ok(Json(view(&app, i, &p)))
}

/// `DELETE`: stops and removes; repeating it is harmless.
pub async fn stop(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    let i = find(&app, &p, &id)?;
    let reason = format!("stopped by {}", p.name());
    let i = app
        .instances
        .stop(&app, &i.id, reason, cairn_shared::time::now_ms())
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(&id))?;
    Ok((StatusCode::ACCEPTED, Json(view(&app, i, &p))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    pub seconds: u64,
}

/// Admins give an instance more time.
pub async fn extend(
    State(app): State<Arc<App>>,
    Admin(p): Admin,
    Path(id): Path<String>,
    body: Result<Json<Extend>, JsonRejection>,
) -> ApiResult<Json<InstanceView>> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if req.seconds == 0 || req.seconds > 30 * 24 * 3600 {
        return Err(ApiError::bad_request(
            "seconds must be between 1 and 2592000",
        ));
    }
    let i = find(&app, &p, &id)?;
    let i = app
        .instances
        .extend(&i.id, req.seconds * 1000)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(&id))?;
    tracing::info!(instance = %i.id, by = %p.name(), seconds = req.seconds, "lifetime extended");
    Ok(Json(view(&app, i, &p)))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default = "default_tail")]
    pub tail: u32,
}

fn default_tail() -> u32 {
    200
}

/// The instance's recent output, fetched from its agent now.
pub async fn logs(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<impl IntoResponse> {
    let i = find(&app, &p, &id)?;
    let host = i.host.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_placed",
            "the instance has not been placed on a host yet",
        )
    })?;
    let conn = app.registry.connection(&host).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "host_unreachable",
            format!("host {host} is not connected"),
        )
    })?;
    let ask = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let req = ControllerRequest::Logs {
            instance: i.id.clone(),
            tail: q.tail.min(100_000),
        };
        framing::write(&mut send, &req, 64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        framing::read::<_, ControllerResponse>(&mut recv, framing::MAX_FRAME_LEN)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the agent closed the stream".to_string())
    };
    let resp = tokio::time::timeout(Duration::from_secs(15), ask)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "agent_timeout",
                "the agent did not answer within 15 s",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "agent_error", e))?;
    match resp {
        ControllerResponse::Logs { text } => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
        }
        ControllerResponse::Error { message } => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_error",
            message,
        )),
        ControllerResponse::TunnelOpen => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_error",
            "the agent answered a logs request with a tunnel",
        )),
    }
}
