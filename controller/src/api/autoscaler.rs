//! The autoscaler over the API: what the queue waits for, and the recent decisions.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::Admin;
use crate::app::App;

/// `GET /api/v1/autoscaler`: recent autoscaler decisions with their reasons, newest
/// first, and what the queue waits for per pool.
pub async fn autoscaler(State(app): State<Arc<App>>, _: Admin) -> Json<serde_json::Value> {
    let waiting: std::collections::BTreeMap<String, serde_json::Value> = app
        .instances
        .shortfall()
        .into_iter()
        .map(|(pool, s)| {
            (
                if pool.is_empty() {
                    "(no matching pool)".into()
                } else {
                    pool
                },
                serde_json::json!({
                    "waiting": s.waiting,
                    "memory_bytes": s.resources.memory,
                    "millicpus": s.resources.millicpus,
                }),
            )
        })
        .collect();
    Json(serde_json::json!({
        "waiting": waiting,
        "decisions": app.autoscaler.decisions(),
    }))
}
