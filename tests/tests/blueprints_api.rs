//! Blueprints over the REST API of a real controller process: validation with
//! field-level errors, revisions, enable/disable, and persistence across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use reqwest::Method;
use serde_json::json;

use cairn_tests::cluster::{Controller, ControllerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blueprints_validate_revise_and_persist() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    // Invalid: every problem comes back with its field, and nothing is saved.
    let bad = json!({"name": "Py", "image": "", "app": "matlab", "app_port": 0, "memory_mib": 8, "max_lifetime_secs": 0});
    let (status, body) = ctl
        .send(Method::POST, "/api/v1/blueprints", Some(bad))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_blueprint");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    for want in [
        "name",
        "image",
        "app",
        "app_port",
        "memory_mib",
        "max_lifetime_secs",
    ] {
        assert!(fields.contains(&want), "{want} not in {fields:?}");
    }
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory_mib: 8 MiB is under the minimum of 16 MiB"),
        "{body}"
    );
    assert_eq!(ctl.get("/api/v1/blueprints").await.1, json!([]));

    // Unknown fields and malformed JSON are refused with a readable message.
    let (status, body) = ctl
        .send(
            Method::POST,
            "/api/v1/blueprints",
            Some(json!({"name": "x", "imgae": "typo"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `imgae`"),
        "{body}"
    );

    // Create, conflict, edit, disable.
    let good = json!({"name": "python", "description": "Python course", "image": "cairn-test/busybox:1", "pull": "never",
                      "app": "http", "app_port": 8080, "memory_mib": 64, "placement": {"zone": "a"}});
    let (status, body) = ctl
        .send(Method::POST, "/api/v1/blueprints", Some(good.clone()))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["revision"].as_u64(),
            body["max_lifetime_secs"].as_u64()
        ),
        (Some(1), Some(3600))
    );
    let (status, body) = ctl
        .send(Method::POST, "/api/v1/blueprints", Some(good.clone()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_exists"))
    );

    let mut edited = good.clone();
    edited["memory_mib"] = json!(128);
    let (status, body) = ctl
        .send(Method::PUT, "/api/v1/blueprints/python", Some(edited))
        .await;
    assert_eq!(
        (
            status,
            body["revision"].as_u64(),
            body["memory_mib"].as_u64()
        ),
        (200, Some(2), Some(128)),
        "{body}"
    );
    let (status, body) = ctl
        .send(Method::POST, "/api/v1/blueprints/python/disable", None)
        .await;
    assert_eq!(
        (status, body["revision"].as_u64(), body["enabled"].as_bool()),
        (200, Some(3), Some(false))
    );
    let mut other = good.clone();
    other["name"] = json!("nope");
    let (status, _) = ctl
        .send(Method::PUT, "/api/v1/blueprints/nope", Some(other))
        .await;
    assert_eq!(status, 404);
    // Renaming through an edit is refused on the name field.
    let (status, body) = ctl
        .send(Method::PUT, "/api/v1/blueprints/nope", Some(good.clone()))
        .await;
    assert_eq!(
        (status, body["error"]["fields"][0]["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );

    // Survives kill -9: current record and every revision.
    ctl.kill9();
    ctl.start().await;
    let (_, b) = ctl.get("/api/v1/blueprints/python").await;
    assert_eq!(
        (
            b["revision"].as_u64(),
            b["enabled"].as_bool(),
            b["memory_mib"].as_u64()
        ),
        (Some(3), Some(false), Some(128))
    );
    let (_, revs) = ctl.get("/api/v1/blueprints/python/revisions").await;
    let revs = revs.as_array().unwrap();
    assert_eq!(revs.len(), 3);
    assert_eq!(revs[0]["spec"]["memory_mib"], 64);

    // Without the admin token: 401 with a JSON error.
    let (status, body) = ctl.get_with("/api/v1/blueprints", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
}
