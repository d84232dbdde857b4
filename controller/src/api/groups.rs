//! `/api/v1/groups`, `/api/v1/join`, `/api/v1/usage`, `/api/v1/audit`: groups and
//! their people, join codes, usage and the audit log. Each handler parses, calls
//! one operation of [`crate::service::groups`] and renders.
//!
//! * `GET|POST /groups`, `GET|PATCH|DELETE /groups/{name}`.
//! * `PUT|DELETE /groups/{name}/members/{user}` — add, change, remove (or leave).
//! * `GET|POST /groups/{name}/code` — the join code; a new one retires the old.
//! * `GET /groups/{name}/instances`, `GET /groups/{name}/usage` — managers.
//! * `POST /join` `{code}` — join a group.
//! * `GET /usage` — the caller's; `GET /usage.csv` — everyone's (admins).
//! * `GET /audit?limit=N` — the newest entries (admins).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cairn_api::groups::{
    AuditEntry, Departure, Group, GroupInput, JoinCode, JoinCodeInput, JoinInput, MemberInput,
    UsageReport, UsageRow,
};
use cairn_api::instances::InstanceView;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{body, ApiResult};
use crate::service::{Caller, Service};

type Refused = cairn_api::error::ErrorBody;

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    summary = "The caller's groups (admins: all)",
    responses((status = 200, description = "groups", body = Vec<Group>), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn list(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(s.list_groups(&caller)?))
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups",
    summary = "Create a group with an owner (admins)",
    request_body = GroupInput,
    responses((status = 201, description = "the group", body = Group), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn create(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<GroupInput>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let input = body(b)?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_group(&caller, &input).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    summary = "One group (members and codes for its managers)",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, description = "the group", body = Group), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn get(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Group>> {
    Ok(Json(s.group(&caller, &name)?))
}

#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "groups",
    summary = "Edit a group: its owner the title, expiry and idle timeout; admins everything",
    params(("name" = String, Path, description = "group name")),
    request_body = GroupInput,
    responses((status = 200, description = "the group", body = Group), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn update(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<GroupInput>, JsonRejection>,
) -> ApiResult<Json<Group>> {
    let input = body(b)?;
    Ok(Json(s.update_group(&caller, &name, &input).await?))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    summary = "Remove a group (admins), stopping its instances; its blueprints must go first",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, description = "the instances stopped", body = Vec<String>), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn remove(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(s.delete_group(&caller, &name).await?))
}

#[utoipa::path(put, path = "/api/v1/groups/{name}/members/{user}", tag = "groups",
    summary = "Add a member or change their role (managers; owners by owners and admins)",
    params(("name" = String, Path, description = "group name"), ("user" = String, Path, description = "account")),
    request_body = MemberInput,
    responses((status = 200, description = "the group", body = Group), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn set_member(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
    b: Result<Json<MemberInput>, JsonRejection>,
) -> ApiResult<Json<Group>> {
    let input = body(b)?;
    Ok(Json(s.set_member(&caller, &name, &user, input.role).await?))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}/members/{user}", tag = "groups",
    summary = "Remove a member (managers) or leave (oneself); their running instances of the group are stopped and listed",
    params(("name" = String, Path, description = "group name"), ("user" = String, Path, description = "account")),
    responses((status = 200, description = "what was stopped", body = Departure), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn remove_member(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<Json<Departure>> {
    Ok(Json(s.remove_member(&caller, &name, &user).await?))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/code", tag = "groups",
    summary = "The group's join code (managers)",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, description = "the code", body = JoinCode), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn code(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<JoinCode>> {
    Ok(Json(s.join_code(&caller, &name)?))
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/code", tag = "groups",
    summary = "A new join code (managers); the old one stops working",
    params(("name" = String, Path, description = "group name")),
    request_body = JoinCodeInput,
    responses((status = 200, description = "the code", body = JoinCode), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn new_code(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<JoinCodeInput>, JsonRejection>,
) -> ApiResult<Json<JoinCode>> {
    let input = body(b)?;
    Ok(Json(s.new_join_code(&caller, &name, &input).await?))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/instances", tag = "groups",
    summary = "Instances launched through the group (managers)",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, description = "instances", body = Vec<InstanceView>), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn instances(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<InstanceView>>> {
    Ok(Json(s.group_instances(&caller, &name)?))
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/usage", tag = "groups",
    summary = "The group's usage per member, beside its quotas (managers)",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, description = "usage", body = UsageReport), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn usage(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<UsageReport>> {
    Ok(Json(s.group_usage(&caller, &name)?))
}

#[utoipa::path(post, path = "/api/v1/join", tag = "groups",
    summary = "Join a group with its code",
    request_body = JoinInput,
    responses((status = 200, description = "the group joined", body = Group), (status = 409, description = "`join_refused`: expired, used up, replaced, already a member", body = Refused), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn join(
    State(s): State<Arc<Service>>,
    caller: Caller,
    b: Result<Json<JoinInput>, JsonRejection>,
) -> ApiResult<Json<Group>> {
    let input = body(b)?;
    Ok(Json(s.join(&caller, &input.code).await?))
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "groups",
    summary = "The caller's usage in each group",
    responses((status = 200, description = "usage", body = Vec<UsageRow>), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn my_usage(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<UsageRow>>> {
    Ok(Json(s.my_usage(&caller)?))
}

#[utoipa::path(get, path = "/api/v1/usage.csv", tag = "groups",
    summary = "Every group's usage per member as CSV (admins)",
    responses((status = 200, description = "text/csv", content_type = "text/csv", body = String), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn usage_csv(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    let csv = s.usage_csv(&caller, None)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"cairn-usage.csv\"",
            ),
        ],
        csv,
    ))
}

/// How many audit entries.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most 1000 (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "groups",
    summary = "The newest audit entries: admin, manager and login actions (admins)",
    params(AuditQuery),
    responses((status = 200, description = "entries, newest first", body = Vec<AuditEntry>), (status = "4XX", description = "refused: the error body says why", body = Refused)))]
pub async fn audit(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(s.audit_log(&caller, q.limit.unwrap_or(100))?))
}
