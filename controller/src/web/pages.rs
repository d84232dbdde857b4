//! The pages the proxy shows instead of an app: not found, not running yet, gone,
//! unreachable. They refresh themselves while waiting makes sense.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::layout::{self, page};
use crate::instances::{Instance, InstanceState};

fn respond(status: StatusCode, refresh: Option<u32>, body: Markup) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let Some(secs) = refresh {
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            h.insert(header::RETRY_AFTER, v.clone());
            h.insert(header::HeaderName::from_static("refresh"), v);
        }
    }
    resp
}

/// 404 for an instance that does not exist, is someone else's, or needs a login.
/// All three look the same, so the page reveals nothing about other users.
pub fn proxy_not_found(offer_login: bool) -> Response {
    let body = page(
        "Not found",
        None,
        "",
        html! {
            p { "There is no instance at this address that you can open." }
            @if offer_login {
                p { "If it is yours, " a href="/login" { "log in" } " first, then open it again from " em { "My instances" } "." }
            } @else {
                p { a href="/instances" { "Go to my instances" } }
            }
        },
    );
    respond(StatusCode::NOT_FOUND, None, body)
}

/// 503 while the instance is on its way: state, progress, and a self-refresh.
pub fn instance_waiting(i: &Instance) -> Response {
    let pct = layout::progress_of(i.state, i.state_reason.as_deref());
    let state = layout::state_name(i.state);
    let mut title = state.to_string();
    if let Some(first) = title.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let body = page(
        &format!("{title} — {pct}%"),
        None,
        "",
        html! {
            div class="stack big-progress" role="status" aria-live="polite" {
                p { "Instance " code { (i.id) } " of " strong { (i.blueprint) } " is " (layout::badge(state)) "." }
                progress max="100" value=(pct) aria-label="Launch progress" { (pct) "%" }
                @if i.state == InstanceState::Stopping {
                    p { "It is stopping and will not come back." }
                } @else {
                    p class="muted" { "This page reloads by itself and opens the app when it is ready." }
                }
                p { a href={ "/instances/" (i.id) } { "Instance details" } }
            }
        },
    );
    let refresh = (i.state != InstanceState::Stopping).then_some(2);
    respond(StatusCode::SERVICE_UNAVAILABLE, refresh, body)
}

/// 410 for an instance that stopped or failed.
pub fn instance_gone(i: &Instance) -> Response {
    let state = layout::state_name(i.state);
    let body = page(
        "This instance has ended",
        None,
        "",
        html! {
            p { "Instance " code { (i.id) } " of " strong { (i.blueprint) } " is " (layout::badge(state)) "." }
            @if let Some(r) = &i.state_reason {
                p { "Reason: " (r) }
            }
            p { a class="button" href="/" { "Launch a new one" } }
        },
    );
    respond(StatusCode::GONE, None, body)
}

/// 502 when the app could not be reached through its host.
pub fn proxy_error(i: &Instance, reason: &str) -> Response {
    let body = page(
        "The instance did not answer",
        None,
        "",
        html! {
            p { "Cairn could not reach instance " code { (i.id) } ": " (reason) }
            p class="muted" { "This page tries again every few seconds." }
            p { a href={ "/instances/" (i.id) } { "Instance details" } }
        },
    );
    respond(StatusCode::BAD_GATEWAY, Some(5), body)
}
