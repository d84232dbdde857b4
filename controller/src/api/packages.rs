//! `GET /packages/cairn-agent.deb`: the agent's package for bootstrapping hosts,
//! streamed from disk (see [`crate::service::packages`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::service::Service;

pub async fn agent_package(State(service): State<Arc<Service>>) -> Response {
    let pkg = match service.agent_package() {
        Ok(p) => p,
        Err(e) => return ApiError(e).into_response(),
    };
    match tokio::fs::File::open(&pkg.path).await {
        Ok(file) => (
            [
                (
                    header::CONTENT_TYPE,
                    "application/vnd.debian.binary-package".to_string(),
                ),
                (header::CONTENT_LENGTH, pkg.len.to_string()),
                // The hash the user-data names, so an operator can compare by hand.
                (
                    header::HeaderName::from_static("x-cairn-sha256"),
                    pkg.sha256.clone(),
                ),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(path = %pkg.path.display(), error = %e, "cannot open the agent package");
            ApiError(crate::service::ServiceError::new(
                crate::service::Kind::Unavailable,
                "package_unreadable",
                "the agent package cannot be read; see the controller's log",
            ))
            .into_response()
        }
    }
}
