//! The Groups pages: a user's groups, joining with a code, starting a group; one
//! group's page, where its managers see its people (add, remove), its join code
//! (make a new one), its members' instances (stop them), its usage (CSV), and
//! start a blueprint for it. Every rule is the service's; these pages parse, call
//! one operation and render.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use cairn_api::groups::GroupRole;
use maud::html;
use serde::Deserialize;

use super::layout::{badge, duration, message, page};
use super::{failure, Session};
use crate::service::{Service, ServiceError};

fn ago(ms: u64) -> String {
    format!(
        "{} ago",
        duration(cairn_shared::time::now_ms().saturating_sub(ms) / 1000)
    )
}

fn until(ms: u64) -> String {
    let now = cairn_shared::time::now_ms();
    if ms <= now {
        "ended".into()
    } else {
        format!("ends in {}", duration((ms - now) / 1000))
    }
}

/// `GET /groups`.
pub async fn list(State(service): State<Arc<Service>>, s: Session) -> Response {
    let groups = match service.list_groups(&s.caller) {
        Ok(g) => g,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        div class="table-wrap" {
            table {
                thead { tr { th scope="col" { "Group" } th scope="col" { "Title" } th scope="col" { "Your role" } th scope="col" { "Ends" } } }
                tbody {
                    @for g in &groups {
                        tr {
                            td { a href={ "/groups/" (g.name) } { (g.name) } }
                            td { (g.title) }
                            td { @match g.role { Some(r) => (r.as_str()), None => "-" } }
                            td { @match g.expires_ms { Some(e) => (until(e)), None => "-" } }
                        }
                    }
                }
            }
        }
        h2 { "Join a group" }
        form class="fields" method="post" action="/groups/join" {
            input type="hidden" name="csrf" value=(s.viewer.csrf);
            div class="field" {
                label for="code" { "Join code" }
                input id="code" name="code" required autocomplete="off";
            }
            div { button type="submit" { "Join" } }
        }
        h2 { "Start a group" }
        form class="fields" method="post" action="/groups" {
            input type="hidden" name="csrf" value=(s.viewer.csrf);
            div class="field" {
                label for="name" { "Name" }
                input id="name" name="name" required;
                span class="hint" { "lower-case letters, digits and '-'" }
            }
            div class="field" {
                label for="title" { "Title" }
                input id="title" name="title";
            }
            div { button type="submit" { "Create group" } }
        }
    };
    page("Groups", Some(&s.viewer), "/groups", body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct NewGroupForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    title: String,
}

/// `POST /groups`: the caller starts a group they own.
pub async fn create(
    State(service): State<Arc<Service>>,
    s: Session,
    Form(f): Form<NewGroupForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let input = cairn_api::groups::GroupInput {
        name: Some(f.name.trim().to_string()),
        title: Some(f.title.trim().to_string()).filter(|t| !t.is_empty()),
        ..Default::default()
    };
    let g = service
        .create_group(&s.caller, &input)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/groups/{}", g.name)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct JoinForm {
    #[serde(default)]
    csrf: String,
    code: String,
}

/// `POST /groups/join`.
pub async fn join(
    State(service): State<Arc<Service>>,
    s: Session,
    Form(f): Form<JoinForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let g = service
        .join(&s.caller, &f.code)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/groups/{}", g.name)).into_response())
}

/// `GET /groups/{name}`.
pub async fn one(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
) -> Response {
    let view = match service.group_page(&s.caller, &name) {
        Ok(v) => v,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let g = &view.group;
    let managing = view.managing.is_some();
    let code = view.managing.as_ref().and_then(|m| m.code.as_ref());
    let instances = view.managing.as_ref().map(|m| &m.instances);
    let usage = view.managing.as_ref().map(|m| &m.usage);
    let csrf = &s.viewer.csrf;
    let body = html! {
        p { "Your role: " strong { @match g.role { Some(r) => (r.as_str()), None => "admin" } }
            @if let Some(e) = g.expires_ms { " · " (until(e)) } }
        @if managing {
            p { a href="/registrations" { "Sign-ups waiting for approval" } " (people who registered with this group's code)" }
            h2 { "Join code" }
            @match &code {
                Some(c) => p { "Students join with " code id="join-code" { (c.code) } " (" (until(c.expires_ms)) ", used " (c.uses) @if let Some(m) = c.max_uses { " of " (m) } " times)." },
                None => p { "No join code yet." },
            }
            form method="post" action={ "/groups/" (g.name) "/code" } class="inline" {
                input type="hidden" name="csrf" value=(csrf);
                label for="valid_days" { "Valid for (days) " }
                input id="valid_days" name="valid_days" value="7" size="4";
                " "
                button type="submit" id="new-code" { "New join code" }
            }
            h2 { "Blueprints" }
            (blueprint_list(&view.blueprints, true))
            p { a href={ "/admin/blueprints/new?group=" (g.name) } id="new-blueprint" { "New blueprint for this group" }
              @if !g.limits.images.is_empty() { span class="muted" { " (images: " (g.limits.images.join(", ")) ")" } } }
            h2 { "People" }
            div class="table-wrap" { table {
                thead { tr { th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { "Joined" } th scope="col" { span class="muted" { "Actions" } } } }
                tbody { @for m in &g.members { tr {
                    td { (m.user) } td { (m.role.as_str()) } td { (ago(m.joined_ms)) }
                    td { @if m.role != GroupRole::Owner {
                        form method="post" action={ "/groups/" (g.name) "/members/" (m.user) "/remove" } class="inline" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Remove" }
                        }
                    } }
                } } }
            } }
            form class="fields" method="post" action={ "/groups/" (g.name) "/members" } {
                input type="hidden" name="csrf" value=(csrf);
                div class="field" { label for="user" { "Add a person (user name)" } input id="user" name="user" required; }
                div class="field" { label for="role" { "Role" }
                    select id="role" name="role" { option value="member" { "member" } option value="manager" { "manager" } } }
                div { button type="submit" { "Add" } }
            }
            h2 { "Instances" }
            @if let Some(list) = instances {
                @if list.is_empty() { p { "None yet." } } @else {
                    div class="table-wrap" { table {
                        thead { tr { th scope="col" { "Instance" } th scope="col" { "Owner" } th scope="col" { "Blueprint" } th scope="col" { "State" } th scope="col" { "Last used" } th scope="col" { span class="muted" { "Actions" } } } }
                        tbody { @for i in list { tr {
                            td { a href={ "/instances/" (i.id) } { code { (i.id) } } }
                            td { (i.owner) } td { (i.blueprint) }
                            td { (badge(i.state.as_str())) @if let Some(r) = &i.state_reason { br; span class="muted" { (r) } } }
                            td { @match i.last_activity_ms { Some(t) => (ago(t)), None => "-" } }
                            td { @if !i.state.is_terminal() {
                                form method="post" action={ "/instances/" (i.id) "/stop" } class="inline" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Stop" }
                                }
                            } }
                        } } }
                    } }
                }
            }
            @if let Some(u) = usage {
                h2 { "Usage" }
                p { "Credits spent: " (format!("{:.2}", u.total.credits)) " · running now: " (u.total.instances)
                    " · " a href={ "/groups/" (g.name) "/usage.csv" } { "Download usage (CSV)" } }
            }
        } @else {
            h2 { "Blueprints" }
            (blueprint_list(&view.blueprints, false))
            (message("info", "You are a member: launch the group's blueprints from the catalogue."))
        }
        p { a href="/groups" { "All groups" } }
    };
    page(
        &format!("Group {}", g.title),
        Some(&s.viewer),
        "/groups",
        body,
    )
    .into_response()
}

/// The group's blueprints; managers get a link to edit each.
fn blueprint_list(list: &[crate::blueprints::BlueprintRecord], editing: bool) -> maud::Markup {
    html! {
        @if list.is_empty() { p class="muted" { "None yet." } } @else {
            ul id="group-blueprints" { @for b in list { li {
                @if editing { a href={ "/admin/blueprints/" (b.spec.name) } { (b.spec.name) } } @else { (b.spec.name) }
                @if !b.spec.description.is_empty() { " — " (b.spec.description) }
                @if !b.spec.enabled { " " (badge("disabled")) }
            } } }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    valid_days: String,
}

/// `POST /groups/{name}/code`.
pub async fn new_code(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
    Form(f): Form<CodeForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let days: f64 = match f.valid_days.trim() {
        "" => 7.0,
        d => d.parse().map_err(|_| {
            failure(
                Some(&s.viewer),
                &ServiceError::invalid("valid days must be a number"),
            )
        })?,
    };
    let input = cairn_api::groups::JoinCodeInput {
        valid_secs: Some((days.clamp(0.0, 366.0) * 86_400.0) as u64),
        max_uses: None,
    };
    service
        .new_join_code(&s.caller, &name, &input)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/groups/{name}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    csrf: String,
    user: String,
    #[serde(default)]
    role: String,
}

/// `POST /groups/{name}/members`.
pub async fn add_member(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
    Form(f): Form<MemberForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let role = GroupRole::parse(f.role.trim()).unwrap_or(GroupRole::Member);
    service
        .set_member(&s.caller, &name, f.user.trim(), role)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/groups/{name}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /groups/{name}/members/{user}/remove`.
pub async fn remove_member(
    State(service): State<Arc<Service>>,
    s: Session,
    Path((name, user)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    service
        .remove_member(&s.caller, &name, &user)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/groups/{name}")).into_response())
}

/// `GET /groups/{name}/usage.csv` (managers).
pub async fn usage_csv(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
) -> Response {
    match service.usage_csv(&s.caller, Some(&name)) {
        Ok(csv) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}-usage.csv\""),
                ),
            ],
            csv,
        )
            .into_response(),
        Err(e) => failure(Some(&s.viewer), &e),
    }
}
