//! The Datasets pages, for every signed-in user (datasets are course material):
//! every dataset with its latest version, and one dataset's versions with their
//! size, files, date and who pushed them. Pushing and removing are the CLI's
//! (`cairn datasets push|rm`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{count, duration, page};
use super::{failure, Session};
use crate::service::Service;

fn now() -> u64 {
    cairn_shared::time::now_ms()
}

/// `1.5 GiB`, `320 KiB`, `12 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

fn ago(ms: u64) -> String {
    format!("{} ago", duration(now().saturating_sub(ms) / 1000))
}

/// `GET /datasets`.
pub async fn list(State(service): State<Arc<Service>>, s: Session) -> Response {
    let list = match service.list_datasets(&s.caller) {
        Ok(l) => l,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        @if list.is_empty() {
            p { "No datasets yet. An administrator pushes one with "
                code { "cairn datasets push NAME ./dir" } "." }
        } @else {
            div class="table-wrap" {
                table {
                    thead { tr {
                        th scope="col" { "Dataset" } th scope="col" { "Latest" }
                        th scope="col" { "Size" } th scope="col" { "Files" }
                        th scope="col" { "Versions" } th scope="col" { "Pushed" }
                    } }
                    tbody {
                        @for d in &list {
                            @if let Some(v) = d.latest() {
                                tr {
                                    td { a href={ "/datasets/" (d.name) } { (d.name) } }
                                    td { code { (d.name) "@" (v.version) } }
                                    td { (bytes(v.bytes)) }
                                    td { (v.files) }
                                    td { (d.versions.len()) }
                                    td { (ago(v.created_ms)) " by " (v.pushed_by) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Datasets", Some(&s.viewer), "/datasets", body).into_response()
}

/// `GET /datasets/{name}`: every version kept, newest first.
pub async fn one(
    State(service): State<Arc<Service>>,
    s: Session,
    Path(name): Path<String>,
) -> Response {
    let d = match service.dataset(&s.caller, &name) {
        Ok(d) => d,
        Err(e) => return failure(Some(&s.viewer), &e),
    };
    let body = html! {
        p { (count(d.versions.len() as u64, "version", "versions")) " kept. "
            "Use a version as " code { (d.name) "@N" } ", or " code { (d.name) } " for the latest." }
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "Size" } th scope="col" { "Files" }
                    th scope="col" { "Pushed" } th scope="col" { "By" } th scope="col" { "Manifest" }
                } }
                tbody {
                    @for v in d.versions.iter().rev() {
                        tr {
                            td { code { (d.name) "@" (v.version) } }
                            td { (bytes(v.bytes)) }
                            td { (v.files) }
                            td { (ago(v.created_ms)) }
                            td { (v.pushed_by) }
                            td { code title=(v.manifest) { (v.manifest.get(..12).unwrap_or(&v.manifest)) } }
                        }
                    }
                }
            }
        }
        p { a href="/datasets" { "All datasets" } }
    };
    (
        StatusCode::OK,
        page(
            &format!("Dataset {}", d.name),
            Some(&s.viewer),
            "/datasets",
            body,
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_for_people() {
        assert_eq!(super::bytes(12), "12 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(300 * 1024 * 1024), "300 MiB");
    }
}
