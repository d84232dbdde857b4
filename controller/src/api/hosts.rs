//! Hosts over the API: list, read, and the pool requests drain, undrain, remove.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_shared::ids::HostId;

use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::hosts::pool::PoolEvent;
use crate::hosts::registry::RegistryError;
use crate::hosts::HostView;

pub async fn list(State(app): State<Arc<App>>, _: Admin) -> Json<Vec<HostView>> {
    Json(app.registry.list())
}

pub async fn get(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    let id = HostId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.registry
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no host {id}")))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Stop instances still running this long after the drain began.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

async fn pool_request(app: &App, id: &str, event: PoolEvent) -> ApiResult<Json<HostView>> {
    let id = HostId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match app
        .registry
        .pool_event(&id, event, true, cairn_shared::time::now_ms())
        .await
    {
        Ok(_) => {}
        Err(RegistryError::UnknownHost(_)) => {
            return Err(ApiError::not_found(format!("no host {id}")))
        }
        Err(RegistryError::Refused(r)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "host_state",
                r.to_string(),
            ))
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    // The queue may now go elsewhere, or to this host again.
    app.instances
        .schedule(app, cairn_shared::time::now_ms())
        .await;
    app.registry
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no host {id}")))
}

/// `POST /api/v1/hosts/{id}/drain`: no new instances; running ones finish (or are
/// stopped at the deadline); then the host is `drained`.
pub async fn drain(
    State(app): State<Arc<App>>,
    Admin(p): Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<HostView>> {
    // The body is optional: none means "no deadline".
    let req: Drain = if body.iter().all(u8::is_ascii_whitespace) {
        Drain::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid drain request: {e}")))?
    };
    if req.deadline_secs.is_some_and(|d| d > 30 * 24 * 3600) {
        return Err(ApiError::bad_request("deadline_secs is at most 30 days"));
    }
    let deadline_ms = req
        .deadline_secs
        .map(|s| cairn_shared::time::now_ms() + s * 1000);
    tracing::info!(host = %id, by = %p.name(), ?deadline_ms, "drain requested");
    pool_request(&app, &id, PoolEvent::Drain { deadline_ms }).await
}

/// `POST /api/v1/hosts/{id}/undrain`: open a draining or drained host again.
pub async fn undrain(
    State(app): State<Arc<App>>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    tracing::info!(host = %id, by = %p.name(), "undrain requested");
    pool_request(&app, &id, PoolEvent::Undrain).await
}

/// `DELETE /api/v1/hosts/{id}`: remove a drained host; its agent is refused from
/// then on.
pub async fn remove(
    State(app): State<Arc<App>>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    tracing::info!(host = %id, by = %p.name(), "removal requested");
    let view = pool_request(&app, &id, PoolEvent::Remove).await?;
    if let Ok(h) = HostId::parse(&id) {
        if let Some(conn) = app.registry.connection(&h) {
            conn.close(
                cairn_shared::protocol::CloseCode::UnknownHost.into(),
                b"this host was removed from the pool",
            );
        }
    }
    Ok(view)
}
