//! The Volumes pages, for each signed-in user: their volumes (files kept between
//! instances), one volume's snapshots with what each is (the head, older saves,
//! conflicts and halted saves waiting for a decision), a download of any snapshot
//! as a tar, making a snapshot the head, and deleting a volume (confirmed).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use cairn_api::volumes::SnapshotStatus;
use maud::html;
use serde::Deserialize;

use super::datasets::bytes;
use super::layout::{count, duration, message, page};
use super::{failure, Session};
use crate::service::Service;

fn ago(ms: u64) -> String {
    format!(
        "{} ago",
        duration(cairn_shared::time::now_ms().saturating_sub(ms) / 1000)
    )
}

/// `GET /volumes`.
pub async fn list(State(service): State<Arc<Service>>, s: Session) -> Response {
    let list = match service.list_volumes(&s.caller, None, false) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        @if list.is_empty() {
            p { "No volumes yet. Launching a blueprint that keeps files makes one: your files are saved while the instance runs and when it stops, and come back at the next launch, on any host." }
        } @else {
            div class="table-wrap" {
                table {
                    thead { tr {
                        th scope="col" { "Volume" } th scope="col" { "Size" } th scope="col" { "Files" }
                        th scope="col" { "Snapshots" } th scope="col" { "Saved" } th scope="col" { "In use by" }
                    } }
                    tbody {
                        @for v in &list {
                            tr {
                                td { a href={ "/volumes/" (v.name) } { (v.name) }
                                    @if v.attention > 0 { " " span class="badge failed" { (v.attention) " to look at" } } }
                                td { (bytes(v.bytes)) }
                                td { (v.files) }
                                td { (v.snapshots.len()) }
                                td { @match v.snapshots.iter().find(|s| s.head) { Some(h) => (ago(h.created_ms)), None => "never" } }
                                td { @match &v.in_use_by { Some(i) => a href={ "/instances/" (i) } { code { (i) } }, None => "-" } }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Volumes", Some(&s.viewer), "/volumes", body).into_response()
}

/// `GET /volumes/{name}`: the snapshots, newest first.
pub async fn one(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
) -> Response {
    let v = match service.volume(&s.caller, None, &name) {
        Ok(v) => v,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        p { (count(v.snapshots.len() as u64, "snapshot", "snapshots")) " kept. The head is what the next launch restores." }
        @if let Some(i) = &v.in_use_by {
            (message("info", &format!("Instance {i} writes this volume now: stop it before you restore a snapshot or delete the volume.")))
        }
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { "Snapshot" } th scope="col" { "Status" } th scope="col" { "Size" }
                    th scope="col" { "Files" } th scope="col" { "Saved" } th scope="col" { "By" }
                    th scope="col" { span class="muted" { "Actions" } }
                } }
                tbody {
                    @for x in v.snapshots.iter().rev() {
                        tr {
                            td { (x.id) @if x.head { " " span class="badge running" { "head" } } }
                            td { @match x.status {
                                SnapshotStatus::Saved => "saved",
                                SnapshotStatus::Conflict => span class="badge failed" title=[x.reason.as_deref()] { "conflict" },
                                SnapshotStatus::Halted => span class="badge failed" title=[x.reason.as_deref()] { "halted" },
                            }
                            @if let Some(r) = &x.reason { br; span class="muted" { (r) } } }
                            td { (bytes(x.bytes)) }
                            td { (x.files) }
                            td { (ago(x.created_ms)) }
                            td { code { (x.by) } }
                            td {
                                a href={ "/volumes/" (v.name) "/snapshots/" (x.id) "/tar" } { "Download" }
                                @if !x.head {
                                    form method="post" action={ "/volumes/" (v.name) "/head" } class="inline" {
                                        input type="hidden" name="csrf" value=(s.viewer.csrf);
                                        input type="hidden" name="snapshot" value=(x.id);
                                        button type="submit" { "Make head" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        form method="post" action={ "/volumes/" (v.name) "/delete" } {
            input type="hidden" name="csrf" value=(s.viewer.csrf);
            div class="row" {
                input id="confirm" name="confirm" type="checkbox";
                label for="confirm" { "Delete every snapshot of these files for good" }
            }
            button type="submit" { "Delete volume" }
        }
        p { a href="/volumes" { "All volumes" } }
    };
    page(
        &format!("Volume {}", v.name),
        Some(&s.viewer),
        "/volumes",
        body,
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct HeadForm {
    #[serde(default)]
    csrf: String,
    snapshot: u64,
}

/// `POST /volumes/{name}/head`.
pub async fn set_head(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
    Form(f): Form<HeadForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    service
        .set_volume_head(&s.caller, None, &name, f.snapshot)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to(&format!("/volumes/{name}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: Option<String>,
}

/// `POST /volumes/{name}/delete` (with the confirmation ticked).
pub async fn delete(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Result<Response, Response> {
    s.check(&f.csrf)?;
    if f.confirm.is_none() {
        let e = crate::service::ServiceError::invalid(
            "tick the confirmation: deleting a volume deletes every snapshot of its files",
        );
        return Err(failure(Some(&s.viewer), &e));
    }
    service
        .remove_volume(&s.caller, None, &name)
        .await
        .map_err(|e| failure(Some(&s.viewer), &e))?;
    Ok(Redirect::to("/volumes").into_response())
}

/// `GET /volumes/{name}/snapshots/{id}/tar`.
pub async fn tar(
    State(service): State<Arc<Service>>,
    s: Session,
    Path((name, id)): Path<(String, u64)>,
) -> Response {
    match service.snapshot_tar(&s.caller, None, &name, id).await {
        Ok(d) => d.into_response(),
        Err(e) => failure(Some(&s.viewer), &e),
    }
}
