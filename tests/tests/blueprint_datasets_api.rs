//! Datasets in blueprints over the REST API of a real controller process: a pushed
//! dataset is named by a blueprint (the field round-trips), a missing one or a bad
//! mount path is a field error and saves nothing, and an instance shows the version
//! fixed at its launch even after a newer push. No agent: instances stay queued.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use reqwest::Method;
use serde_json::{json, Value};

use cairn_shared::chunks::manifest::{Entry, EntryKind, Manifest};
use cairn_shared::chunks::{ChunkId, ChunkRef, DEFAULT_PARAMS};
use cairn_tests::cluster::{Controller, ControllerOptions};

/// Pushes a one-file dataset version (a pack with its chunk, then the manifest);
/// returns the version number.
async fn push(ctl: &Controller, name: &str, text: &[u8]) -> u64 {
    let http = reqwest::Client::new();
    let id = ChunkId::of(text);
    let mut pack = id.0.to_vec();
    pack.extend_from_slice(&(text.len() as u32).to_be_bytes());
    pack.extend_from_slice(text);
    let resp = http
        .post(format!("{}/api/v1/chunks", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .header("content-type", "application/octet-stream")
        .body(pack)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let manifest = Manifest::new(
        DEFAULT_PARAMS,
        vec![Entry {
            path: "notes.txt".into(),
            size: text.len() as u64,
            kind: EntryKind::File {
                chunks: vec![ChunkRef {
                    id,
                    len: text.len() as u32,
                }],
            },
            mode: 0o644,
            mtime_ns: 0,
        }],
    )
    .encode();
    let resp = http
        .post(format!("{}/api/v1/datasets/{name}/versions", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .header("content-type", "application/octet-stream")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let answer: Value = resp.json().await.unwrap();
    answer["version"]["version"]
        .as_u64()
        .expect("version number")
}

fn fields(body: &Value) -> Vec<(String, String)> {
    body["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields: {body}"))
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blueprints_mount_datasets_and_instances_keep_their_version() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    let bp = |datasets: Value| {
        json!({"name": "course", "image": "cairn-test/busybox:1", "pull": "never",
               "app": "http", "app_port": 8080, "memory_mib": 64, "datasets": datasets})
    };

    // Nothing pushed yet: the dataset is missing, and nothing is saved.
    let (status, body) = ctl
        .send(
            Method::POST,
            "/api/v1/blueprints",
            Some(bp(json!([{"name": "course-data", "path": "/data/course"}]))),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        fields(&body),
        vec![(
            "datasets[0].name".to_string(),
            "no dataset \"course-data\"".to_string()
        )]
    );
    assert_eq!(ctl.get("/api/v1/blueprints").await.1, json!([]));

    // Bad mounts are field errors with their index.
    let (status, body) = ctl
        .send(
            Method::POST,
            "/api/v1/blueprints",
            Some(bp(json!([
                {"name": "course-data", "path": "/proc/x"},
                {"name": "course-data", "version": 0, "path": "/data"},
                {"name": "course-data", "path": "/data/inner"}
            ]))),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let f: Vec<String> = fields(&body).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        f,
        vec![
            "datasets[0].path",
            "datasets[1].version",
            "datasets[2].path"
        ]
    );

    // Pushed: the blueprint saves, and the field reads back as written.
    assert_eq!(push(&ctl, "course-data", b"week one").await, 1);
    let mounts = json!([{"name": "course-data", "path": "/data/course"},
                        {"name": "course-data", "version": 1, "path": "/data/first"}]);
    let (status, body) = ctl
        .send(Method::POST, "/api/v1/blueprints", Some(bp(mounts.clone())))
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, got) = ctl.get("/api/v1/blueprints/course").await;
    assert_eq!(got["datasets"], mounts);
    // A pinned version that does not exist is its own field.
    let (status, body) = ctl
        .send(
            Method::PUT,
            "/api/v1/blueprints/course",
            Some(bp(
                json!([{"name": "course-data", "version": 7, "path": "/d"}]),
            )),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body)[0].0, "datasets[0].version");

    // An instance fixes `latest` at launch and keeps it after a new push.
    let token = ctl.user("alice", "user").await;
    let first = ctl.launch(&token, "course").await;
    let shown = |i: &Value| -> Vec<(String, u64, String)> {
        i["datasets"]
            .as_array()
            .unwrap_or_else(|| panic!("no datasets: {i}"))
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    d["version"].as_u64().unwrap(),
                    d["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let want = |latest: u64| {
        vec![
            (
                "course-data".to_string(),
                latest,
                "/data/course".to_string(),
            ),
            ("course-data".to_string(), 1, "/data/first".to_string()),
        ]
    };
    assert_eq!(shown(&ctl.instance(&token, &first).await), want(1));
    assert_eq!(push(&ctl, "course-data", b"week two").await, 2);
    assert_eq!(shown(&ctl.instance(&token, &first).await), want(1));
    let (status, body) = ctl
        .send(
            Method::PUT,
            "/api/v1/blueprints/course",
            Some(
                json!({"name": "course", "image": "cairn-test/busybox:1", "pull": "never",
                        "app": "http", "app_port": 8080, "memory_mib": 64,
                        "max_instances_per_user": 2, "datasets": mounts}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let second = ctl.launch(&token, "course").await;
    assert_eq!(shown(&ctl.instance(&token, &second).await), want(2));
}
