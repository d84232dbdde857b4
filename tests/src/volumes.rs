//! Users' volumes from tests: a busybox blueprint that keeps files, launches that
//! name a volume, commands run in an instance's container, the volume as the API
//! shows it.

use reqwest::Method;
use serde_json::{json, Value};

use crate::cluster::Controller;
use crate::images::busybox_image;

/// Where the test blueprints mount the volume.
pub const WORK: &str = "/home/user/work";

/// Saves blueprint `name`: busybox serving HTTP on 8080, with a volume at [`WORK`]
/// owned by `owner` (`UID:GID`), checkpointed every `checkpoint_minutes`, pinned to
/// hosts labelled `site=SITE` when given.
pub async fn blueprint(
    ctl: &Controller,
    name: &str,
    site: Option<&str>,
    checkpoint_minutes: f64,
    owner: &str,
) {
    let mut bp = json!({
        "name": name, "image": busybox_image(), "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 64, "cpus": 0.2, "max_instances_per_user": 5,
        // httpd as PID 1 would ignore SIGTERM (every stop would wait Docker's 10 s).
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"],
        "volume": {"path": WORK, "checkpoint_minutes": checkpoint_minutes, "owner": owner}
    });
    if let Some(s) = site {
        bp["placement"] = json!({ "site": s });
    }
    let (status, body) = ctl.send(Method::POST, "/api/v1/blueprints", Some(bp)).await;
    assert_eq!(status, 201, "{body}");
}

/// Launches `bp` writing `volume`; the status and body as answered.
pub async fn launch(ctl: &Controller, token: &str, bp: &str, volume: &str) -> (u16, Value) {
    ctl.request(
        Some(token),
        Method::POST,
        "/api/v1/instances",
        Some(json!({"blueprint": bp, "volume": volume})),
    )
    .await
}

/// [`launch`] that must succeed; the instance id.
pub async fn launched(ctl: &Controller, token: &str, bp: &str, volume: &str) -> String {
    let (status, inst) = launch(ctl, token, bp, volume).await;
    assert_eq!(status, 201, "{inst}");
    inst["id"].as_str().expect("an instance id").to_string()
}

/// Runs `script` with `sh -c` in the instance's container; its output, which it
/// must have succeeded to give.
pub fn exec(id: &str, script: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", &format!("cairn-{id}"), "sh", "-c", script])
        .output()
        .expect("run docker exec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}: {text}");
    text
}

/// `GET /api/v1/volumes/{name}` as `token`.
pub async fn volume(ctl: &Controller, token: &str, name: &str) -> Value {
    let (status, v) = ctl
        .request(
            Some(token),
            Method::GET,
            &format!("/api/v1/volumes/{name}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}
