//! The REST API (axum): routing, bearer-token authentication and JSON errors.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a fitting HTTP
//! status: `code` is for programs, `message` for people.

mod blueprints;
mod hosts;
mod tokens;

pub use tokens::{check as check_token_request, CreateToken, CreatedTokenView};

/// A token request as the CLI builds it.
pub fn tokens_request(ttl_secs: u64, uses: u32, description: String) -> CreateToken {
    CreateToken {
        ttl_secs,
        uses,
        description,
    }
}

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::app::App;
use crate::auth;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Field-level problems of an invalid request body.
    pub fields: Vec<crate::blueprints::FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: vec![],
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error in API handler");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the controller's log",
        )
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    fields: &'a [crate::blueprints::FieldError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                fields: &self.fields,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"cairn\""),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Builds the router.
pub fn router(app: Arc<App>) -> Router {
    let admin = Router::new()
        .route("/hosts", get(hosts::list))
        .route("/hosts/{id}", get(hosts::get))
        .route("/join-tokens", get(tokens::list).post(tokens::create))
        .route("/join-tokens/{id}", delete(tokens::revoke))
        .route(
            "/blueprints",
            get(blueprints::list).post(blueprints::create),
        )
        .route(
            "/blueprints/{name}",
            get(blueprints::get).put(blueprints::update),
        )
        .route("/blueprints/{name}/revisions", get(blueprints::revisions))
        .route("/blueprints/{name}/enable", post(blueprints::enable))
        .route("/blueprints/{name}/disable", post(blueprints::disable))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_admin));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", admin)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    hosts: std::collections::HashMap<crate::hosts::HostState, usize>,
}

async fn healthz(State(app): State<Arc<App>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        hosts: app.registry.count_by_state(),
    })
}

/// Requires `Authorization: Bearer <admin token>`.
async fn require_admin(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing bearer token (Authorization: Bearer <token>)",
        )
        .into_response(),
        Some(t) if auth::matches_digest(t, &app.config.auth.admin_token_sha256) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "invalid or revoked token",
        )
        .into_response(),
    }
}
