//! Tag → digest resolution against a real registry (Debian's `docker-registry` on
//! loopback): saving a blueprint pins the tag's digest; an unknown tag, a registry
//! that is down or a missing login is a field error and nothing is saved; a
//! configured login works and never shows up in the API or the log; a moved tag is
//! picked up by `refresh` as a new revision while a running instance keeps the
//! digest it started with.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{controller_with_agent, Controller};
use cairn_tests::docker::{docker, InstanceContainers};
use cairn_tests::registry::{forget_pulled, unique_http_image, Registry, HTTP_PORT};
use cairn_tests::require::{require, Need};

const PASSWORD: &str = "pw-Zq81-never-shown";
const WRONG_PASSWORD: &str = "pw-wrong-also-never-shown";

fn blueprint(name: &str, image: &str) -> Value {
    json!({
        "name": name, "image": image, "app": "http", "app_port": HTTP_PORT,
        "memory_mib": 32, "cpus": 0.2, "prepull": "none",
    })
}

/// Creates a blueprint; returns status and body.
async fn create(ctl: &Controller, bp: Value) -> (u16, Value) {
    ctl.send(Method::POST, "/api/v1/blueprints", Some(bp)).await
}

async fn refresh(ctl: &Controller, name: &str) -> (u16, Value) {
    ctl.send(
        Method::POST,
        &format!("/api/v1/blueprints/{name}/refresh"),
        None,
    )
    .await
}

/// The one field error of a `400 invalid_blueprint`, on `image`.
fn image_error(status: u16, body: &Value) -> String {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_blueprint")),
        "{body}"
    );
    let fields = body["error"]["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), 1, "{body}");
    assert_eq!(fields[0]["field"], "image", "{body}");
    fields[0]["message"].as_str().unwrap().to_string()
}

async fn assert_absent(ctl: &Controller, name: &str) {
    let (status, body) = ctl.get(&format!("/api/v1/blueprints/{name}")).await;
    assert_eq!(status, 404, "{name} was saved: {body}");
    let (status, _) = ctl
        .get(&format!("/api/v1/blueprints/{name}/revisions"))
        .await;
    assert_eq!(status, 404);
}

/// Rewrites the controller's `[images]` registries and restarts it.
async fn configure_registries(ctl: &mut Controller, entries: &str) {
    let path = ctl.dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("registries = ").expect("registries in [images]");
    let end = start + text[start..].find('\n').unwrap();
    let text = format!("{}registries = {entries}{}", &text[..start], &text[end..]);
    std::fs::write(&path, text).unwrap();
    ctl.terminate();
    ctl.start().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_resolve_to_digests_and_refresh_moves_them() {
    if !require(&[Need::Docker, Need::Registry]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut open = Registry::start(tmp.path(), "open");
    let host = open.host();
    forget_pulled(&host);
    let first = unique_http_image("cairn-test/resolve-first:1", 4096);
    let digest_a = open.publish(&first, "course/web:1");

    let (mut ctl, _agent, _host_id) = controller_with_agent(tmp.path(), "resolve-host").await;
    let mut cleanup = InstanceContainers::default();

    // Saving resolves the tag to the digest the registry serves.
    let image = format!("{host}/course/web:1");
    let (status, web) = create(&ctl, blueprint("web", &image)).await;
    assert_eq!(status, 201, "{web}");
    let pinned_a = format!("{host}/course/web@{digest_a}");
    assert_eq!(web["image"], image.as_str(), "the tag stays as written");
    assert_eq!(web["resolved"]["reference"], pinned_a.as_str(), "{web}");
    assert_eq!(web["resolved"]["source"], "Registry", "{web}");

    // An unknown tag: a field error, nothing saved.
    let (status, body) = create(&ctl, blueprint("ghost", &format!("{host}/course/web:nope"))).await;
    let msg = image_error(status, &body);
    assert!(
        msg.contains(&format!("tag nope not found in {host}/course/web")),
        "{msg}"
    );
    assert_absent(&ctl, "ghost").await;

    // An instance launched now runs digest A, which the agent pulls by digest.
    let alice = ctl.user("alice", "user").await;
    let id = ctl.launch(&alice, "web").await;
    cleanup.0.push(id.clone());
    let running = ctl
        .wait_instance(&alice, &id, "running", Duration::from_secs(90))
        .await;
    assert_eq!(running["revision"], 1, "{running}");
    let container_image = || {
        docker(&[
            "inspect",
            "--format",
            "{{.Config.Image}}",
            &format!("cairn-{id}"),
        ])
    };
    assert_eq!(container_image(), pinned_a);
    let image_id_a = docker(&["inspect", "--format", "{{.Image}}", &format!("cairn-{id}")]);

    // The tag moves in the registry.
    let second = unique_http_image("cairn-test/resolve-second:1", 4096);
    let digest_b = open.publish(&second, "course/web:1");
    assert_ne!(digest_a, digest_b);
    let pinned_b = format!("{host}/course/web@{digest_b}");

    // Editing another field keeps the digest: no silent move.
    let mut edited = blueprint("web", &image);
    edited["memory_mib"] = json!(48);
    let (status, body) = ctl
        .send(Method::PUT, "/api/v1/blueprints/web", Some(edited))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["revision"].as_u64(),
            body["resolved"]["reference"].as_str()
        ),
        (Some(2), Some(pinned_a.as_str())),
        "{body}"
    );

    // Refresh: the new digest, as a new revision; again: unchanged.
    let (status, body) = refresh(&ctl, "web").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true, "{body}");
    assert_eq!(body["blueprint"]["revision"], 3, "{body}");
    assert_eq!(
        body["blueprint"]["resolved"]["reference"],
        pinned_b.as_str(),
        "{body}"
    );
    let (status, body) = refresh(&ctl, "web").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["changed"].as_bool(),
            body["blueprint"]["revision"].as_u64()
        ),
        (Some(false), Some(3)),
        "{body}"
    );
    let (_, revs) = ctl.get("/api/v1/blueprints/web/revisions").await;
    let refs: Vec<&str> = revs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["resolved"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, [&pinned_a, &pinned_a, &pinned_b]);

    // The running instance keeps its revision and the bits it started with.
    let inst = ctl.instance(&alice, &id).await;
    assert_eq!(
        (inst["state"].as_str(), inst["revision"].as_u64()),
        (Some("running"), Some(1)),
        "{inst}"
    );
    assert_eq!(container_image(), pinned_a);
    assert_eq!(
        docker(&["inspect", "--format", "{{.Image}}", &format!("cairn-{id}")]),
        image_id_a
    );

    // A registry with a login: without one configured, a clear error.
    // `with_login` writes its htpasswd into `root/NAME` without creating it (it
    // creates only the storage directory, which here is the open registry's).
    std::fs::create_dir_all(tmp.path().join("locked")).unwrap();
    let locked = Registry::with_login(tmp.path(), "locked", &open, "course", PASSWORD);
    let locked_host = locked.host();
    let private = format!("{locked_host}/course/web:1");
    let (status, body) = create(&ctl, blueprint("private", &private)).await;
    let msg = image_error(status, &body);
    assert!(
        msg.contains(&format!("registry {locked_host} needs a login")),
        "{msg}"
    );
    assert_absent(&ctl, "private").await;

    // A wrong password: refused, naming the user only.
    configure_registries(
        &mut ctl,
        &format!(
            r#"[{{ host = "{locked_host}", username = "course", password = "{WRONG_PASSWORD}" }}]"#
        ),
    )
    .await;
    let (status, body) = create(&ctl, blueprint("private", &private)).await;
    let msg = image_error(status, &body);
    assert!(
        msg.contains(&format!(
            "registry {locked_host} refused the login for course"
        )),
        "{msg}"
    );
    assert!(!body.to_string().contains(WRONG_PASSWORD), "{body}");
    assert_absent(&ctl, "private").await;

    // The right one: resolved through the login.
    configure_registries(
        &mut ctl,
        &format!(r#"[{{ host = "{locked_host}", username = "course", password = "{PASSWORD}" }}]"#),
    )
    .await;
    let (status, body) = create(&ctl, blueprint("private", &private)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["resolved"]["reference"],
        format!("{locked_host}/course/web@{digest_b}").as_str(),
        "{body}"
    );
    let (status, refreshed) = refresh(&ctl, "private").await;
    assert_eq!(
        (status, refreshed["changed"].as_bool()),
        (200, Some(false)),
        "{refreshed}"
    );
    // Nothing the API answers, and nothing in the log, holds a password.
    let mut seen = vec![body.to_string(), refreshed.to_string()];
    for path in [
        "/api/v1/blueprints",
        "/api/v1/blueprints/private",
        "/api/v1/blueprints/private/revisions",
        "/api/v1/hosts",
        "/healthz",
    ] {
        seen.push(ctl.get(path).await.1.to_string());
    }
    seen.push(ctl.log_text());
    for text in &seen {
        for secret in [PASSWORD, WRONG_PASSWORD] {
            assert!(!text.contains(secret), "a password leaked: {text}");
        }
    }

    // The registry is down: saving and refreshing fail clearly, nothing changes.
    open.stop();
    let (status, body) = create(&ctl, blueprint("down", &image)).await;
    let msg = image_error(status, &body);
    assert!(
        msg.contains(&format!("registry {host} is unreachable")),
        "{msg}"
    );
    assert_absent(&ctl, "down").await;
    let (status, body) = refresh(&ctl, "web").await;
    assert!(image_error(status, &body).contains("unreachable"));
    let (_, web) = ctl.get("/api/v1/blueprints/web").await;
    assert_eq!(
        (
            web["revision"].as_u64(),
            web["resolved"]["reference"].as_str()
        ),
        (Some(3), Some(pinned_b.as_str()))
    );

    // A blueprint that never pulls needs no registry at all.
    let mut local = blueprint("local", &first);
    local["pull"] = json!("never");
    let (status, body) = create(&ctl, local).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["resolved"]["reference"].as_str(),
            body["resolved"]["source"].as_str()
        ),
        (Some(first.as_str()), Some("Host"))
    );

    drop(cleanup);
    forget_pulled(&host);
}
