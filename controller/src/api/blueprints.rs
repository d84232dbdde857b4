//! Blueprints over the API: list, read, create, edit (a new revision each time),
//! enable/disable, refresh (resolve the image's tag again), and the revision
//! history.
//!
//! Create, edit and refresh resolve the image before anything is saved; a tag
//! that cannot be resolved is a `400 invalid_blueprint` with a field error on
//! `image`, like any other invalid field.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::{Admin, ApiError, ApiResult, Caller};
use crate::app::App;
use crate::blueprints::catalog::Revision;
use crate::blueprints::{BlueprintInput, BlueprintRecord, CatalogError};
use crate::images::resolve::Resolver;

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid(fields) => {
                let summary = fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                ApiError {
                    fields,
                    ..ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_blueprint",
                        format!("invalid blueprint: {summary}"),
                    )
                }
            }
            CatalogError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            CatalogError::NotFound(_) => ApiError::not_found(e.to_string()),
            CatalogError::Store(s) => ApiError::internal(s),
        }
    }
}

fn body(b: Result<Json<BlueprintInput>, JsonRejection>) -> ApiResult<BlueprintInput> {
    b.map(|Json(i)| i)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn check_name(name: &str) -> ApiResult<()> {
    if crate::blueprints::spec::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no blueprint named {name:?}")))
    }
}

/// Users see the enabled blueprints; admins see all.
pub async fn list(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<BlueprintRecord>>> {
    let all = app.blueprints.list().map_err(ApiError::internal)?;
    Ok(Json(
        all.into_iter()
            .filter(|b| p.is_admin() || b.spec.enabled)
            .collect(),
    ))
}

pub async fn get(
    State(app): State<Arc<App>>,
    Caller(p): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    check_name(&name)?;
    app.blueprints
        .get(&name)
        .map_err(ApiError::internal)?
        .filter(|b| p.is_admin() || b.spec.enabled)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no blueprint named {name:?}")))
}

pub async fn create(
    State(app): State<Arc<App>>,
    _: Admin,
    b: Result<Json<BlueprintInput>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<BlueprintRecord>)> {
    let input = body(b)?;
    let r = app
        .blueprints
        .create(&input, &Resolver::of(&app), cairn_shared::time::now_ms())
        .await?;
    tracing::info!(blueprint = %r.spec.name, revision = r.revision, image = %r.spec.run_image(), "blueprint created");
    Ok((StatusCode::CREATED, Json(r)))
}

pub async fn update(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(name): Path<String>,
    b: Result<Json<BlueprintInput>, JsonRejection>,
) -> ApiResult<Json<BlueprintRecord>> {
    check_name(&name)?;
    let input = body(b)?;
    let r = app
        .blueprints
        .update(
            &name,
            &input,
            &Resolver::of(&app),
            cairn_shared::time::now_ms(),
        )
        .await?;
    tracing::info!(blueprint = %name, revision = r.revision, image = %r.spec.run_image(), "blueprint updated");
    Ok(Json(r))
}

async fn set_enabled(
    app: Arc<App>,
    name: String,
    enabled: bool,
) -> ApiResult<Json<BlueprintRecord>> {
    check_name(&name)?;
    let r = app
        .blueprints
        .set_enabled(&name, enabled, cairn_shared::time::now_ms())
        .await?;
    tracing::info!(blueprint = %name, enabled, revision = r.revision, "blueprint enabled flag set");
    Ok(Json(r))
}

pub async fn enable(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    set_enabled(app, name, true).await
}

pub async fn disable(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<BlueprintRecord>> {
    set_enabled(app, name, false).await
}

/// The answer to a refresh.
#[derive(Debug, Serialize)]
pub struct Refreshed {
    /// Whether the image now resolves to something else (and a new revision was
    /// saved).
    pub changed: bool,
    pub blueprint: BlueprintRecord,
}

/// `POST /blueprints/{name}/refresh`: resolves the image's tag again. A moved tag
/// makes a new revision; running instances keep the one they started with.
pub async fn refresh(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Refreshed>> {
    check_name(&name)?;
    let (blueprint, changed) = app
        .blueprints
        .refresh(&name, &Resolver::of(&app), cairn_shared::time::now_ms())
        .await?;
    tracing::info!(blueprint = %name, changed, revision = blueprint.revision, image = %blueprint.spec.run_image(), "blueprint image refreshed");
    Ok(Json(Refreshed { changed, blueprint }))
}

pub async fn revisions(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Revision>>> {
    check_name(&name)?;
    let revs = app
        .blueprints
        .revisions(&name)
        .map_err(ApiError::internal)?;
    if revs.is_empty() {
        return Err(ApiError::not_found(format!("no blueprint named {name:?}")));
    }
    Ok(Json(revs))
}
