//! Sign-up and its approval: the registration form (where the site takes
//! sign-ups), and the list of registrations waiting for the viewer (admins: all;
//! a group's managers: those that came with its code) with Approve and Reject.
//! Every rule is the service's; these pages parse, call one operation, render.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use cairn_api::users::Registration;
use maud::html;
use serde::Deserialize;

use super::layout::{duration, message, page};
use super::{failure, Session};
use crate::service::{Kind, Service};

/// `GET /register`.
pub async fn form(State(service): State<Arc<Service>>) -> Response {
    register_page(
        &service,
        StatusCode::OK,
        None,
        None,
        &RegisterForm::default(),
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

fn register_page(
    service: &Service,
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
    f: &RegisterForm,
) -> Response {
    let open = service.registration_open();
    let body = html! {
        div class="login stack" {
            @if let Some(e) = error { (message("error", e)) }
            @if let Some(n) = notice {
                (message("notice", n))
                p { a href="/login" { "Go to the login page" } }
            } @else if !open {
                p { "This site does not take sign-ups. Ask your course or group administrator for an account." }
            } @else {
                form class="fields" method="post" action="/register" {
                    div {
                        label for="name" { "User name " span class="hint" { "lower-case letters, digits, '.', '_' and '-'" } }
                        input id="name" name="name" autocomplete="username" required autofocus value=(f.name);
                    }
                    div {
                        label for="email" { "E-mail" }
                        input id="email" name="email" type="email" autocomplete="email" required value=(f.email);
                    }
                    div {
                        label for="password" { "Password " span class="hint" { "at least 8 characters" } }
                        input id="password" name="password" type="password" autocomplete="new-password" required;
                    }
                    div {
                        label for="code" { "Join code " span class="hint" { "optional: your course's code, so its teachers can approve you" } }
                        input id="code" name="code" autocomplete="off" value=(f.code);
                    }
                    div { button type="submit" { "Sign up" } }
                }
            }
        }
    };
    (status, page("Sign up", None, "", body)).into_response()
}

/// `POST /register`.
pub async fn register(
    State(service): State<Arc<Service>>,
    crate::api::ClientAddr(client): crate::api::ClientAddr,
    Form(f): Form<RegisterForm>,
) -> Response {
    let r = Registration {
        name: f.name.trim().to_string(),
        email: f.email.clone(),
        password: f.password.clone(),
        code: Some(f.code.clone()).filter(|c| !c.trim().is_empty()),
    };
    match service.register(&r, client).await {
        Ok(done) => register_page(&service, StatusCode::CREATED, None, Some(&done.message), &f),
        Err(e) if e.kind == Kind::Internal => failure(None, &e),
        Err(e) => {
            let kept = RegisterForm {
                password: String::new(),
                ..f
            };
            register_page(
                &service,
                crate::api::status_of(e.kind),
                Some(&e.message),
                None,
                &kept,
            )
        }
    }
}

/// `GET /registrations`.
pub async fn pending(State(service): State<Arc<Service>>, s: Session) -> Response {
    let list = match service.pending_users(&s.caller) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let now = cairn_shared::time::now_ms();
    let body = html! {
        @if list.is_empty() {
            p class="muted" { "No registration waits for you." }
        } @else {
            div class="table-wrap" {
                table {
                    thead { tr { th scope="col" { "User" } th scope="col" { "E-mail" } th scope="col" { "Group" }
                        th scope="col" { "Asked" } th scope="col" { span class="muted" { "Actions" } } } }
                    tbody {
                        @for u in &list {
                            tr id={ "registration-" (u.name) } {
                                td { (u.name) }
                                td { (u.email.as_deref().unwrap_or("-")) }
                                td { (u.pending_group.as_deref().unwrap_or("-")) }
                                td { (duration(now.saturating_sub(u.created_ms) / 1000)) " ago" }
                                td {
                                    form method="post" action={ "/registrations/" (u.name) "/approve" } {
                                        input type="hidden" name="csrf" value=(s.viewer.csrf);
                                        button type="submit" { "Approve" }
                                    }
                                    form method="post" action={ "/registrations/" (u.name) "/reject" } {
                                        input type="hidden" name="csrf" value=(s.viewer.csrf);
                                        button type="submit" class="secondary" { "Reject" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Registrations", Some(&s.viewer), "", body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /registrations/{name}/approve` and `…/reject`.
pub async fn decide(
    State(service): State<Arc<Service>>,
    s: Session,
    Path((name, verb)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    let done = match verb.as_str() {
        "approve" => service.approve_user(&s.caller, &name).await,
        "reject" => service.reject_user(&s.caller, &name).await,
        _ => return Err(super::not_found(&s.viewer, "no such action")),
    };
    done.map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to("/registrations").into_response())
}
