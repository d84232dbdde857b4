//! The REST API (axum): routing, bearer-token authentication and JSON errors.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a fitting HTTP
//! status: `code` is for programs, `message` for people.

mod autoscaler;
mod blueprints;
mod hosts;
mod images;
mod instances;
mod session;
mod tokens;
mod users;

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

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::app::App;
use crate::auth;
use crate::users::{Principal, Role};

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

/// Builds the API's router (`/healthz` and `/api/v1`).
///
/// Every `/api/v1` route except `login` passes [`authenticate`], which attaches the
/// caller's [`Principal`]; handlers take [`Caller`] or [`Admin`] to say who may call them.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/me", get(session::me))
        .route("/logout", post(session::logout))
        .route("/tokens", get(session::list_tokens))
        .route("/tokens/{id}", delete(session::revoke_token))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{name}/disable", post(users::disable))
        .route("/users/{name}/enable", post(users::enable))
        .route("/instances", get(instances::list).post(instances::launch))
        .route(
            "/instances/{id}",
            get(instances::get).delete(instances::stop),
        )
        .route("/instances/{id}/extend", post(instances::extend))
        .route("/instances/{id}/logs", get(instances::logs))
        .route("/hosts", get(hosts::list))
        .route("/hosts/{id}", get(hosts::get).delete(hosts::remove))
        .route("/hosts/{id}/drain", post(hosts::drain))
        .route("/hosts/{id}/undrain", post(hosts::undrain))
        .route("/autoscaler", get(autoscaler::autoscaler))
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
        .route("/blueprints/{name}/refresh", post(blueprints::refresh))
        .route("/images", get(images::list))
        .route("/images/uploads", post(images::create_upload))
        .route(
            "/images/uploads/{id}",
            get(images::upload_status)
                .patch(images::append)
                .delete(images::cancel_upload)
                // Archive bytes are streamed to disk, never buffered; the upload's
                // declared size bounds them.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/images/uploads/{id}/commit", post(images::commit))
        .route("/images/{archive}", get(images::get).delete(images::remove))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .route("/login", post(session::login));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

/// Everything the HTTP listener serves: the API under `/api/v1`, the proxy under
/// `/i/`, and the web UI everywhere else.
pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .merge(router(app.clone()))
        .merge(crate::proxy::router(crate::proxy::Proxy::new(app.clone())))
        .merge(crate::web::router(app))
        .fallback(fallback)
}

async fn fallback(req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        ApiError::not_found("no such endpoint").into_response()
    } else {
        crate::web::error_page(
            StatusCode::NOT_FOUND,
            None,
            "Not found",
            "There is no page at this address.",
        )
    }
}

/// The authenticated caller of a request, whoever it is.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// The authenticated caller, who must be an admin (403 otherwise).
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(unauthenticated)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let p = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(unauthenticated)?;
        if p.is_admin() {
            Ok(Admin(p))
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs an admin account",
            ))
        }
    }
}

fn unauthenticated() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "missing bearer token (Authorization: Bearer <token>)",
    )
}

/// Resolves the request's token to a [`Principal`] and attaches it.
///
/// A session cookie is accepted only with the `X-Requested-With` header on requests
/// that change something: a cross-site form cannot set that header, so the cookie
/// alone cannot be used to act as the user (CSRF).
async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let Some(cred) = auth::credential(req.headers()) else {
        return unauthenticated().into_response();
    };
    if matches!(cred, auth::Credential::Cookie(_))
        && !req.method().is_safe()
        && !req.headers().contains_key("x-requested-with")
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a request authenticated by the session cookie must carry X-Requested-With",
        )
        .into_response();
    }
    let principal = match principal_of(&app, cred.token()) {
        Ok(p) => p,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    match principal {
        Some(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "invalid, expired or revoked token, or disabled account",
        )
        .into_response(),
    }
}

/// The principal a token stands for: the bootstrap admin token from `init`, or a
/// login token of an enabled account. `None` for anything else.
pub fn principal_of(app: &App, token: &str) -> Result<Option<Principal>, crate::store::StoreError> {
    if auth::matches_digest(token, &app.config.auth.admin_token_sha256) {
        return Ok(Some(Principal {
            user: None,
            role: Role::Admin,
            token_id: None,
        }));
    }
    let Some(rec) = app.api_tokens.check(token, cairn_shared::time::now_ms())? else {
        return Ok(None);
    };
    let Some(user) = app.accounts.get(&rec.user)? else {
        return Ok(None);
    };
    if user.disabled {
        return Ok(None);
    }
    Ok(Some(Principal {
        user: Some(user.name),
        role: user.role,
        token_id: Some(rec.id),
    }))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    hosts: std::collections::HashMap<crate::hosts::HostState, usize>,
    instances: std::collections::BTreeMap<crate::instances::InstanceState, usize>,
}

async fn healthz(State(app): State<Arc<App>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        hosts: app.registry.count_by_state(),
        instances: app.instances.count_by_state(),
    })
}
