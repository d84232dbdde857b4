//! What every user sees: the catalogue of blueprints, launching, their instances, and
//! one instance with live progress, time left, logs and Stop.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, badge, duration, message, page};
use super::{failure, AdminSession, Session};
use crate::service::views::InstanceView;
use crate::service::{Kind, Service};
use cairn_api::blueprints::{AppKind, BlueprintRecord};
use cairn_api::instances::InstanceState;

pub fn app_name(kind: AppKind) -> &'static str {
    match kind {
        AppKind::Jupyter => "JupyterLab",
        AppKind::Rstudio => "RStudio",
        AppKind::Http => "Web app",
    }
}

fn now() -> u64 {
    cairn_shared::time::now_ms()
}

/// `GET /`: the blueprints one may launch.
pub async fn catalogue(State(service): State<Arc<Service>>, s: Session) -> Response {
    catalogue_page(&service, &s, StatusCode::OK, None)
}

fn catalogue_page(
    service: &Service,
    s: &Session,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    // The catalogue is what the caller may launch, even for an admin.
    let blueprints: Vec<BlueprintRecord> = match service.list_blueprints(&s.caller) {
        Ok(v) => v.into_iter().filter(|b| b.spec.enabled).collect(),
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let mine: Vec<InstanceView> = match service.list_instances(&s.caller, false) {
        Ok(v) => v.into_iter().filter(|i| !i.state.is_terminal()).collect(),
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        @if let Some(e) = error { (message("error", e)) }
        @if !mine.is_empty() {
            section aria-labelledby="running-h" {
                h2 id="running-h" { "Your running environments" }
                (instance_table(&mine, false))
            }
        }
        section aria-labelledby="catalogue-h" {
            h2 id="catalogue-h" { "Launch an environment" }
            @if blueprints.is_empty() {
                p class="muted" { "No blueprints are available yet. An administrator adds them under Blueprints." }
            }
            div class="cards" {
                @for b in &blueprints {
                    article class="card" aria-labelledby={ "bp-" (b.spec.name) } {
                        h2 id={ "bp-" (b.spec.name) } { (b.spec.name) }
                        p { (b.spec.description) }
                        ul class="facts" {
                            li { (app_name(b.spec.app)) }
                            li { (b.spec.memory_mib) " MiB memory" }
                            li { (b.spec.cpus) " CPU" }
                            li { "up to " (duration(b.spec.max_lifetime_secs)) }
                        }
                        form method="post" action="/launch" {
                            input type="hidden" name="csrf" value=(s.viewer.csrf);
                            input type="hidden" name="blueprint" value=(b.spec.name);
                            button type="submit" aria-label={ "Launch " (b.spec.name) } { "Launch" }
                        }
                    }
                }
            }
        }
    };
    (status, page("Catalogue", Some(&s.viewer), "/", body)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LaunchForm {
    #[serde(default)]
    csrf: String,
    blueprint: String,
}

/// `POST /launch`: queue an instance and go to its page.
pub async fn launch(
    State(service): State<Arc<Service>>,
    s: Session,
    Form(f): Form<LaunchForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    match service.launch(&s.caller, &f.blueprint).await {
        Ok(i) => Ok(Redirect::to(&format!("/instances/{}", i.id)).into_response()),
        Err(e) if e.kind == Kind::Internal => Err(failure(Some(&s.viewer), &e)),
        Err(e) => Err(catalogue_page(
            &service,
            &s,
            crate::api::status_of(e.kind),
            Some(&e.message),
        )),
    }
}

/// A table of instances; `owners` adds the owner and host columns (admin view).
pub fn instance_table(list: &[InstanceView], owners: bool) -> Markup {
    let now = now();
    html! {
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { "Instance" }
                    th scope="col" { "Blueprint" }
                    @if owners { th scope="col" { "Owner" } th scope="col" { "Host" } }
                    th scope="col" { "State" }
                    th scope="col" { "Age" }
                    th scope="col" { "Time left" }
                    th scope="col" { span class="muted" { "Actions" } }
                } }
                tbody {
                    @for i in list {
                        @let state = layout::state_name(i.state);
                        tr {
                            td { a href={ "/instances/" (i.id) } { code { (i.id) } } }
                            td { (i.blueprint) " " span class="muted" { "r" (i.revision) } }
                            @if owners {
                                td { (i.owner) }
                                td { @if let Some(h) = &i.host { code { (h) } } @else { span class="muted" { "—" } } }
                            }
                            td { (badge(state)) @if let Some(r) = &i.state_reason { @if i.state.is_terminal() { br; span class="muted" { (r) } } } }
                            td { (duration(now.saturating_sub(i.created_ms) / 1000)) }
                            td { @if i.state.is_terminal() { span class="muted" { "—" } } @else { (duration(i.time_left_secs)) } }
                            td {
                                @if i.state == InstanceState::Running {
                                    a class="button" href={ "/i/" (i.id) "/" } { "Open" } " "
                                }
                                a href={ "/instances/" (i.id) } { "Details" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /instances`: the user's instances, newest first.
pub async fn my_instances(State(service): State<Arc<Service>>, s: Session) -> Response {
    let list = match service.list_instances(&s.caller, false) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        @if list.is_empty() {
            p { "You have no instances. " a href="/" { "Launch one from the catalogue." } }
        } @else {
            (instance_table(&list, false))
        }
    };
    page("My instances", Some(&s.viewer), "/instances", body).into_response()
}

/// `GET /instances/{id}`: live progress, Open, time left, logs, Stop.
pub async fn instance(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let i = service
        .instance(&s.caller, &id)
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    let kind = i.app.kind;
    let state = layout::state_name(i.state);
    let pct = layout::progress_of(i.state, i.state_reason.as_deref());
    let running = i.state == InstanceState::Running;
    let body = html! {
        div class="stack" data-instance=(i.id) {
            noscript { meta http-equiv="refresh" content="3"; }
            div class="stack big-progress" role="status" aria-live="polite" {
                p { span id="progress-text" {
                    @if running { "Ready to open" }
                    @else if i.state == InstanceState::Failed { "This instance failed" }
                    @else if i.state.is_terminal() { "This instance has ended" }
                    @else { (state) " — " (pct) "%" }
                } " " span id="state" class={ "badge s-" (state) } { (state) } }
                progress id="progress" max="100" value=(pct) aria-label="Launch progress" hidden[i.state.is_terminal()] { (pct) "%" }
                p id="reason" class="muted" hidden[i.state_reason.is_none()] { (i.state_reason.clone().unwrap_or_default()) }
            }
            @if let Some(at) = i.idle_stop_ms {
                div id="idle-warning" {
                    (layout::message("error", &format!(
                        "Nobody has used this instance for a while: it will be stopped in {} unless you use it.",
                        layout::duration(at.saturating_sub(cairn_shared::time::now_ms()) / 1000)
                    )))
                }
            }
            div class="row" {
                a id="open" class="button" href={ "/i/" (i.id) "/" } hidden[i.state.is_terminal()]
                    aria-disabled=(if running { "false" } else { "true" })
                    tabindex=[(!running).then_some("-1")] { "Open " (kind.map(app_name).unwrap_or("app")) }
                @if !i.state.is_terminal() {
                    form id="stop" method="post" action={ "/instances/" (i.id) "/stop" } {
                        input type="hidden" name="csrf" value=(s.viewer.csrf);
                        button type="submit" class="danger" { "Stop" }
                    }
                }
            }
            dl class="props" {
                dt { "Blueprint" } dd { (i.blueprint) " (revision " (i.revision) ")" }
                dt { "Owner" } dd { (i.owner) }
                dt { "Instance" } dd { code { (i.id) } }
                dt { "Time left" } dd id="time-left" { @if i.state.is_terminal() { "—" } @else { (duration(i.time_left_secs)) } }
                dt { "Started" } dd { (duration(now().saturating_sub(i.created_ms) / 1000)) " ago" }
                @if let Some(h) = &i.host { dt { "Host" } dd { code { (h) } } }
                dt { "Address" } dd { code { "/i/" (i.id) "/" } }
                // The service shows secrets to the owner only.
                @if let Some(t) = &i.app.token {
                    dt { "Jupyter token" } dd { details { summary { "Show" } code { (t) } p class="hint" { "Not needed in this browser: Cairn adds it for you." } } }
                }
                @if let Some(p) = &i.app.password {
                    dt { "RStudio password" } dd { details { summary { "Show" } code { (p) } } }
                }
            }
            @if s.caller.is_admin() && !i.state.is_terminal() {
                form class="row" method="post" action={ "/instances/" (i.id) "/extend" } {
                    input type="hidden" name="csrf" value=(s.viewer.csrf);
                    label for="hours" { "Extend by (hours)" }
                    input id="hours" name="hours" type="number" min="1" max="720" value="1" style="width:6rem";
                    button type="submit" class="secondary" { "Extend" }
                }
            }
            section aria-labelledby="history-h" {
                h2 id="history-h" { "History" }
                ol id="history" {
                    @for t in &i.transitions {
                        li { (layout::state_name(t.state)) " — " (duration(now().saturating_sub(t.at_ms) / 1000)) " ago"
                            @if let Some(r) = &t.reason { span class="muted" { " (" (r) ")" } } }
                    }
                }
            }
            section aria-labelledby="logs-h" {
                h2 id="logs-h" { "Logs" }
                button id="load-logs" type="button" class="secondary" { "Show the last 300 lines" }
                pre id="logs" class="logs" hidden {}
            }
        }
    };
    Ok(page(&i.blueprint, Some(&s.viewer), "/instances", body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /instances/{id}/stop`.
pub async fn stop(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let i = service
        .stop(&s.caller, &id)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/instances/{}", i.id)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ExtendForm {
    #[serde(default)]
    csrf: String,
    hours: u64,
}

/// `POST /instances/{id}/extend` (admins).
pub async fn extend(
    State(service): State<Arc<Service>>,
    AdminSession(s): AdminSession,
    Path(id): Path<String>,
    Form(f): Form<ExtendForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let i = service
        .extend(&s.caller, &id, f.hours.saturating_mul(3600))
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/instances/{}", i.id)).into_response())
}
