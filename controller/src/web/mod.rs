//! The web UI: server-rendered pages (maud, checked at compile time) and one small
//! script. No JavaScript build step, nothing fetched from elsewhere.
//!
//! * [`layout`] — the page shell, styles, script and shared pieces.
//! * [`user`] — the catalogue, launching, my instances, one instance.
//! * [`admin`] — hosts, all instances, blueprints, users.
//! * [`datasets`] — datasets and their versions (everyone signed in).
//! * [`groups`] — groups: joining, starting one, a group's people, code,
//!   instances and usage for its managers.
//! * [`volumes`] — a user's volumes and snapshots: restore, download, delete.
//! * [`registration`] — sign-up, and the registrations waiting for approval.
//! * [`pages`] — what the proxy shows instead of an app that is not there.
//!
//! A browser session is a login token in an `HttpOnly`, `SameSite=Lax` cookie. Every
//! form that changes something carries a CSRF token derived from the session.

// Handlers answer `Result<Response, Response>`: the error is a rendered page, built
// and moved once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod datasets;
pub mod groups;
pub mod layout;
pub mod pages;
pub mod registration;
pub mod user;
pub mod volumes;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use crate::auth::{self, SESSION_COOKIE};
use crate::service::{Caller, Kind, Service, ServiceError};
use layout::{page, Viewer};

/// The UI's routes.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/", get(user::catalogue))
        .route("/login", get(login_form).post(login))
        .route("/login/oidc", get(sso_begin))
        .route("/login/oidc/callback", get(sso_callback))
        .route("/logout", post(logout))
        .route("/launch", post(user::launch))
        .route("/instances", get(user::my_instances))
        .route("/instances/{id}", get(user::instance))
        .route("/instances/{id}/stop", post(user::stop))
        .route("/instances/{id}/extend", post(user::extend))
        .route("/datasets", get(datasets::list))
        .route("/datasets/{name}", get(datasets::one))
        .route("/volumes", get(volumes::list))
        .route("/volumes/{name}", get(volumes::one))
        .route("/volumes/{name}/head", post(volumes::set_head))
        .route("/volumes/{name}/delete", post(volumes::delete))
        .route("/volumes/{name}/snapshots/{id}/tar", get(volumes::tar))
        .route("/groups", get(groups::list).post(groups::create))
        .route("/groups/join", post(groups::join))
        .route("/groups/{name}", get(groups::one))
        .route("/groups/{name}/code", post(groups::new_code))
        .route("/groups/{name}/members", post(groups::add_member))
        .route(
            "/groups/{name}/members/{user}/remove",
            post(groups::remove_member),
        )
        .route("/groups/{name}/usage.csv", get(groups::usage_csv))
        .route("/admin/hosts", get(admin::hosts))
        .route("/admin/instances", get(admin::instances))
        .route("/admin/blueprints", get(admin::blueprints))
        .route(
            "/admin/blueprints/new",
            get(admin::new_blueprint).post(admin::create_blueprint),
        )
        .route(
            "/admin/blueprints/{name}",
            get(admin::edit_blueprint).post(admin::save_blueprint),
        )
        .route(
            "/admin/blueprints/{name}/enabled",
            post(admin::set_blueprint_enabled),
        )
        .route("/admin/users", get(admin::users).post(admin::create_user))
        .route(
            "/register",
            get(registration::form).post(registration::register),
        )
        .route("/registrations", get(registration::pending))
        .route("/registrations/{name}/{verb}", post(registration::decide))
        .route(
            "/admin/users/{name}/disabled",
            post(admin::set_user_disabled),
        )
        .route("/static/cairn.css", get(css))
        .route("/static/cairn.js", get(js))
        .with_state(service)
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", layout::CSS)
}

async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", layout::JS)
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub viewer: Viewer,
}

impl Session {
    /// Checks the form's CSRF token.
    pub fn check(&self, csrf: &str) -> Result<(), Response> {
        if !csrf.is_empty() && csrf == self.viewer.csrf {
            Ok(())
        } else {
            Err(error_page(
                StatusCode::FORBIDDEN,
                Some(&self.viewer),
                "This form has expired",
                "Reload the page and try again.",
            ))
        }
    }
}

impl FromRequestParts<Arc<Service>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Response> {
        let to_login = || {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let q = serde_urlencoded_next(next);
            Redirect::to(&format!("/login?next={q}")).into_response()
        };
        let Some(token) = auth::cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        match service.authenticate(token) {
            Ok(caller) => {
                let viewer = match caller.principal() {
                    Some(p) => Viewer::of(p, auth::csrf_token(token)),
                    None => return Err(to_login()),
                };
                Ok(Session { caller, viewer })
            }
            Err(e) if e.kind == Kind::Unauthenticated => Err(to_login()),
            Err(e) => Err(failure(None, &e)),
        }
    }
}

/// A session of an admin; others get a 403 page.
#[derive(Debug, Clone)]
pub struct AdminSession(pub Session);

impl FromRequestParts<Arc<Service>> for AdminSession {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Response> {
        let s = Session::from_request_parts(parts, service).await?;
        if s.caller.is_admin() {
            Ok(AdminSession(s))
        } else {
            Err(error_page(
                StatusCode::FORBIDDEN,
                Some(&s.viewer),
                "Admins only",
                "This page is for administrators.",
            ))
        }
    }
}

/// Percent-encodes a path for the `next` parameter.
fn serde_urlencoded_next(next: &str) -> String {
    next.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only local paths are followed after login: never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

/// A page with a heading, a sentence and a status.
pub fn error_page(
    status: StatusCode,
    viewer: Option<&Viewer>,
    title: &str,
    text: &str,
) -> Response {
    let current = "";
    (
        status,
        page(
            title,
            viewer,
            current,
            html! { (layout::message("error", text)) },
        ),
    )
        .into_response()
}

/// The page for a failed operation: the status its kind maps to, and the
/// service's sentence.
pub fn failure(viewer: Option<&Viewer>, e: &ServiceError) -> Response {
    let title = match e.kind {
        Kind::NotFound => "Not found",
        Kind::Forbidden => "Not allowed",
        Kind::Invalid | Kind::Unprocessable | Kind::TooLarge => "Cannot do that",
        Kind::Conflict => "Not now",
        Kind::Throttled => "Too many attempts",
        Kind::Internal => "Something went wrong",
        _ => "Not available",
    };
    error_page(crate::api::status_of(e.kind), viewer, title, &e.message)
}

/// The 404 page for something that is not there (or not the viewer's).
pub fn not_found(viewer: &Viewer, what: &str) -> Response {
    error_page(StatusCode::NOT_FOUND, Some(viewer), "Not found", what)
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    /// Set by logout, so that a front proxy's identity header does not log the
    /// user straight back in: they asked to leave.
    #[serde(default)]
    logged_out: Option<String>,
}

/// The login page, or, behind a trusted front proxy that names the user, the
/// session at once.
async fn login_form(
    State(service): State<Arc<Service>>,
    crate::api::ClientAddr(client): crate::api::ClientAddr,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if q.logged_out.is_none() {
        let value = service
            .front_proxy_header()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok());
        match service.front_proxy_login(value, client).await {
            Ok(Some(session)) => return logged_in(&service, &session, next),
            Ok(None) => {}
            Err(e) if e.kind == Kind::Internal => return failure(None, &e),
            Err(e) => {
                return login_page(
                    &service,
                    crate::api::status_of(e.kind),
                    next,
                    Some(&e.message),
                    "",
                )
            }
        }
    }
    login_page(&service, StatusCode::OK, next, None, "")
}

fn login_page(
    service: &Service,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
    user: &str,
) -> Response {
    let sso = service.sso_label();
    let body = html! {
        div class="login stack" {
            p class="muted" { "Your notebooks and apps, a click away. Ask your course or group administrator for an account." }
            @if let Some(e) = error { (layout::message("error", e)) }
            @if let Some(label) = sso {
                p { a class="button" id="sso-login" href={ "/login/oidc?next=" (serde_urlencoded_next(next)) } { "Log in with " (label) } }
                p class="muted" { "Or with a password of this site:" }
            }
            form class="fields" method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                div {
                    label for="user" { "User name" }
                    input id="user" name="user" autocomplete="username" required autofocus value=(user);
                }
                div {
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                }
                div { button type="submit" { "Log in" } }
            }
            @if service.registration_open() {
                p { "New here? " a id="register" href="/register" { "Sign up" } }
            }
        }
    };
    (status, page("Log in", None, "", body)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login(
    State(service): State<Arc<Service>>,
    crate::api::ClientAddr(client): crate::api::ClientAddr,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref()).to_string();
    let session = match service
        .login(&f.user, &f.password, "web session", client)
        .await
    {
        Ok(s) => s,
        Err(e) if e.kind == Kind::Internal => return failure(None, &e),
        Err(e) => {
            let status = crate::api::status_of(e.kind);
            let user: String = f.user.chars().take(64).collect();
            return login_page(&service, status, &next, Some(&e.message), &user);
        }
    };
    logged_in(&service, &session, &next)
}

/// The answer to a successful login: the session cookie, and on to `next`.
fn logged_in(
    service: &Service,
    session: &cairn_api::session::LoginResponse,
    next: &str,
) -> Response {
    let max_age = session
        .expires_ms
        .saturating_sub(cairn_shared::time::now_ms())
        / 1000;
    let cookie = session_cookie(service, &session.token, max_age);
    let mut resp = Redirect::to(next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// "Log in with …": on to the identity provider.
async fn sso_begin(State(service): State<Arc<Service>>, Query(q): Query<LoginQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    match service.sso_begin(next).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(e) => login_page(
            &service,
            crate::api::status_of(e.kind),
            next,
            Some(&e.message),
            "",
        ),
    }
}

#[derive(Debug, Deserialize)]
pub struct SsoCallback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    /// Set when the provider refused (the user cancelled, or is not allowed).
    error: Option<String>,
    error_description: Option<String>,
}

/// The identity provider sends the browser back here with a code.
async fn sso_callback(
    State(service): State<Arc<Service>>,
    crate::api::ClientAddr(client): crate::api::ClientAddr,
    Query(q): Query<SsoCallback>,
) -> Response {
    if let Some(err) = &q.error {
        let why: String = q
            .error_description
            .as_deref()
            .unwrap_or(err)
            .chars()
            .take(200)
            .collect();
        let msg = format!("the identity provider did not log you in: {why}");
        return login_page(&service, StatusCode::UNAUTHORIZED, "/", Some(&msg), "");
    }
    match service.sso_finish(&q.code, &q.state, client).await {
        Ok((session, next)) => logged_in(&service, &session, safe_next(Some(&next))),
        Err(e) if e.kind == Kind::Internal => failure(None, &e),
        Err(e) => login_page(
            &service,
            crate::api::status_of(e.kind),
            "/",
            Some(&e.message),
            "",
        ),
    }
}

fn session_cookie(service: &Service, value: &str, max_age: u64) -> String {
    let secure = if service.serves_https() {
        "; Secure"
    } else {
        ""
    };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(service): State<Arc<Service>>,
    s: Session,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    // The bootstrap admin token has no session to end; the cookie goes either way.
    if let Err(e) = service.logout(&s.caller).await {
        if e.kind == Kind::Internal {
            return Err(failure(Some(&s.viewer), &e));
        }
    }
    let mut resp = Redirect::to("/login?logged_out=1").into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&service, "", 0)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/instances/x")), "/instances/x");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(serde_urlencoded_next("/i/x/?a=1&b"), "/i/x/%3Fa%3D1%26b");
    }
}
