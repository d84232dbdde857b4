//! The REST API (axum): routing, bearer-token authentication, and the mapping of
//! service errors to JSON errors. Handlers parse, call one [`Service`] operation
//! and render; they hold no rules of their own.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a fitting HTTP
//! status: `code` is for programs, `message` for people.

mod autoscaler;
mod blueprints;
mod datasets;
mod groups;
mod hosts;
mod images;
mod instances;
mod packages;
mod session;
mod tokens;
mod users;
mod volumes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_api::error::{ErrorBody, ErrorDetail};

use crate::auth;
use crate::service::{Caller, Kind, Service, ServiceError};

/// An API error: a service error with its HTTP status.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError(ServiceError::invalid(message))
    }
}

/// The HTTP status of each kind of failure.
pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::AgentError => StatusCode::BAD_GATEWAY,
        Kind::AgentTimeout => StatusCode::GATEWAY_TIMEOUT,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = status_of(e.kind);
        let body = ErrorBody {
            error: ErrorDetail {
                code: e.code.into(),
                message: e.message,
                fields: e.fields,
                retry_after_secs: e.retry_after_secs,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"cairn\""),
            );
        }
        if let Some(secs) = e.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, or the parser's complaint as a 400.
pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The OpenAPI document's frame: title, version, the bearer scheme, and the
/// schemas of the API model; the paths come from the routes themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cairn",
        description = "Personal Jupyter, RStudio and web-app environments on a pool of Docker hosts. Every /api/v1 route except login takes `Authorization: Bearer <token>`; errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's routes, each registered with its description (so a route cannot be
/// served without being in the document), and the document.
fn described(service: &Arc<Service>) -> (Router<Arc<Service>>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let mut doc = ApiDoc::openapi();
    doc.merge(cairn_api::openapi::ApiModel::openapi());
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(session::me))
        .routes(routes!(session::logout))
        .routes(routes!(session::list_tokens))
        .routes(routes!(session::revoke_token))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::disable))
        .routes(routes!(users::enable))
        .routes(routes!(users::unlock))
        .routes(routes!(users::pending))
        .routes(routes!(users::approve))
        .routes(routes!(users::reject))
        .routes(routes!(users::expiry))
        .routes(routes!(users::request_deletion, users::cancel_deletion))
        .routes(routes!(instances::list, instances::launch))
        .routes(routes!(instances::get, instances::stop))
        .routes(routes!(instances::extend))
        .routes(routes!(instances::logs))
        .routes(routes!(hosts::list))
        .routes(routes!(hosts::get, hosts::remove))
        .routes(routes!(hosts::drain))
        .routes(routes!(hosts::undrain))
        .routes(routes!(autoscaler::autoscaler))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(blueprints::list, blueprints::create))
        .routes(routes!(blueprints::get, blueprints::update))
        .routes(routes!(blueprints::revisions))
        .routes(routes!(blueprints::enable))
        .routes(routes!(blueprints::disable))
        .routes(routes!(blueprints::refresh))
        .merge(
            // The commit's body is the archive's manifest, bounded by its handler;
            // the archive itself comes as chunks.
            OpenApiRouter::new()
                .routes(routes!(images::list, images::commit))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .merge(
            // 16384 hex ids as JSON: about 1.1 MB.
            OpenApiRouter::new()
                .routes(routes!(datasets::missing))
                .layer(axum::extract::DefaultBodyLimit::max(2 * 1024 * 1024)),
        )
        .routes(routes!(datasets::list))
        .routes(routes!(datasets::get, datasets::remove))
        .routes(routes!(datasets::remove_version))
        .routes(routes!(datasets::manifest))
        .merge(
            // Packs and manifests are bounded by their handlers (32 MiB, the
            // manifest limit), which read them with a stall timeout.
            OpenApiRouter::new()
                .routes(routes!(datasets::pack))
                .routes(routes!(datasets::commit))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .routes(routes!(images::get, images::remove))
        .routes(routes!(volumes::list))
        .routes(routes!(volumes::get, volumes::remove))
        .routes(routes!(volumes::set_head))
        .routes(routes!(volumes::tar))
        .routes(routes!(groups::list, groups::create))
        .routes(routes!(groups::get, groups::update, groups::remove))
        .routes(routes!(groups::set_member, groups::remove_member))
        .routes(routes!(groups::code, groups::new_code))
        .routes(routes!(groups::instances))
        .routes(routes!(groups::usage))
        .routes(routes!(groups::join))
        .routes(routes!(groups::my_usage))
        .routes(routes!(groups::usage_csv))
        .routes(routes!(groups::audit))
        .route_layer(middleware::from_fn_with_state(
            service.clone(),
            authenticate,
        ))
        .routes(routes!(session::login))
        .routes(routes!(users::register))
        .split_for_parts()
}

/// Builds the API's router (`/healthz`, `/metrics`, `/api/v1` and
/// `/api/v1/openapi.json`).
///
/// Every `/api/v1` route except `login`, `register` and the document passes [`authenticate`],
/// which attaches the caller; the service operations decide what each caller may do.
pub fn router(service: Arc<Service>) -> Router {
    let (api, doc) = described(&service);
    let doc = Arc::new(doc);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            crate::autoscaler::openstack::PACKAGE_PATH,
            get(packages::agent_package),
        )
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(service)
}

/// What answers an address no door serves: a JSON error under `/api/`, a page
/// elsewhere.
pub async fn fallback(req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        ApiError(ServiceError::not_found("no such endpoint")).into_response()
    } else {
        crate::web::error_page(
            StatusCode::NOT_FOUND,
            None,
            "Not found",
            "There is no page at this address.",
        )
    }
}

/// The authenticated caller of a request (attached by [`authenticate`]).
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous))
    }
}

/// The client's address, if the listener recorded one.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Resolves the request's token to a [`Caller`] and attaches it.
///
/// A session cookie is accepted only with the `X-Requested-With` header on requests
/// that change something: a cross-site form cannot set that header, so the cookie
/// alone cannot be used to act as the user (CSRF).
async fn authenticate(
    State(service): State<Arc<Service>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(cred) = auth::credential(req.headers()) else {
        return ApiError(ServiceError::unauthenticated(
            "missing bearer token (Authorization: Bearer <token>)",
        ))
        .into_response();
    };
    if matches!(cred, auth::Credential::Cookie(_))
        && !req.method().is_safe()
        && !req.headers().contains_key("x-requested-with")
    {
        return ApiError(ServiceError::new(
            Kind::Forbidden,
            "csrf",
            "a request authenticated by the session cookie must carry X-Requested-With",
        ))
        .into_response();
    }
    match service.authenticate(cred.token()) {
        Ok(caller) => {
            let addr = req
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            req.extensions_mut().insert(caller.from_addr(addr));
            next.run(req).await
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// `/healthz`: up and the store writable, for anyone; with an admin's token, the
/// number of hosts and instances in each state too.
async fn healthz(State(service): State<Arc<Service>>, req: Request) -> Response {
    let caller = auth::credential(req.headers())
        .and_then(|c| service.authenticate(c.token()).ok())
        .unwrap_or_else(Caller::anonymous);
    match service.health(&caller).await {
        Ok(h) => Json(h).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// `/metrics`: the Prometheus text exposition, for an admin's API token. Only the
/// `Authorization: Bearer` header is read: scrapers send that, and a browser's
/// session cookie has no business here.
async fn metrics(State(service): State<Arc<Service>>, req: Request) -> Response {
    let caller = match auth::credential(req.headers()) {
        Some(auth::Credential::Bearer(token)) => match service.authenticate(token) {
            Ok(c) => c,
            Err(e) => return ApiError(e).into_response(),
        },
        _ => Caller::anonymous(),
    };
    match service.metrics(&caller) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}
