//! `/api/v1/login`, `logout`, `me`, and one's API tokens.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::session::Login;

use super::{body, ApiResult, ClientAddr};
use crate::service::views::{ApiTokenView, LoginResponse};
use crate::service::{Caller, Service};
use crate::users::Principal;

/// `POST /api/v1/login`: trades a user name and password for an API token.
pub async fn login(
    State(s): State<Arc<Service>>,
    ClientAddr(client): ClientAddr,
    b: Result<Json<Login>, JsonRejection>,
) -> ApiResult<Json<LoginResponse>> {
    let req = body(b)?;
    Ok(Json(
        s.login(&req.user, &req.password, &req.description, client)
            .await?,
    ))
}

/// `POST /api/v1/logout`: revokes the token used for this request.
pub async fn logout(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<StatusCode> {
    s.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(State(s): State<Arc<Service>>, caller: Caller) -> ApiResult<Json<Principal>> {
    Ok(Json(s.me(&caller)?))
}

/// `GET /api/v1/tokens`: one's own tokens (an admin sees everyone's).
pub async fn list_tokens(
    State(s): State<Arc<Service>>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiTokenView>>> {
    Ok(Json(s.list_tokens(&caller)?))
}

/// `DELETE /api/v1/tokens/{id}`.
pub async fn revoke_token(
    State(s): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
