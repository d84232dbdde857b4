//! Accounts, login tokens and who may call what, against a real controller process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use reqwest::Method;
use serde_json::json;

use cairn_tests::cluster::{Controller, ControllerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_log_in_see_only_what_they_may_and_can_be_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    let bp = |name: &str| json!({"name": name, "image": "img:1", "pull": "never", "app": "http", "app_port": 8080, "memory_mib": 64});
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(bp("open")))
            .await
            .0,
        201
    );
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints", Some(bp("hidden")))
            .await
            .0,
        201
    );
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/blueprints/hidden/disable", None)
            .await
            .0,
        200
    );

    let alice = ctl.user("alice", "user").await;
    let bob = ctl.user("bob", "user").await;
    assert!(alice.starts_with("cairn_"), "{alice}");

    // Who am I.
    let (status, me) = ctl
        .request(Some(&alice), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(
        (status, me["user"].as_str(), me["role"].as_str()),
        (200, Some("alice"), Some("user"))
    );

    // Users see enabled blueprints only, and nothing admin.
    let (_, list) = ctl
        .request(Some(&alice), Method::GET, "/api/v1/blueprints", None)
        .await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["open"]);
    assert_eq!(
        ctl.request(Some(&alice), Method::GET, "/api/v1/blueprints/hidden", None)
            .await
            .0,
        404
    );
    let (status, body) = ctl
        .request(Some(&alice), Method::GET, "/api/v1/hosts", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        ctl.request(
            Some(&alice),
            Method::POST,
            "/api/v1/blueprints",
            Some(bp("mine"))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        ctl.request(Some(&alice), Method::GET, "/api/v1/users", None)
            .await
            .0,
        403
    );

    // Wrong passwords and unknown users get the same answer.
    let e1 = ctl.login("alice", "nope-nope-nope").await.unwrap_err();
    let e2 = ctl.login("nobody", "nope-nope-nope").await.unwrap_err();
    assert_eq!(e1, e2);
    assert_eq!(e1["error"]["code"], "login_failed");

    // Tokens: one's own list; someone else's token is "not found".
    let (_, toks) = ctl
        .request(Some(&alice), Method::GET, "/api/v1/tokens", None)
        .await;
    let toks = toks.as_array().unwrap();
    assert_eq!(toks.len(), 1);
    assert!(toks.iter().all(|t| t["user"] == "alice"));
    let alice_token_id = toks[0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/tokens/{alice_token_id}");
    assert_eq!(
        ctl.request(Some(&bob), Method::DELETE, &path, None).await.0,
        404
    );

    // Survives a kill -9 of the controller.
    ctl.kill9();
    ctl.start().await;
    assert_eq!(
        ctl.request(Some(&alice), Method::GET, "/api/v1/me", None)
            .await
            .0,
        200
    );

    // Logout revokes exactly that token.
    assert_eq!(
        ctl.request(Some(&alice), Method::POST, "/api/v1/logout", None)
            .await
            .0,
        204
    );
    let (status, body) = ctl
        .request(Some(&alice), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(
        ctl.request(Some(&bob), Method::GET, "/api/v1/me", None)
            .await
            .0,
        200
    );

    // A disabled account's tokens stop working at once, and it cannot log in.
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/users/bob/disable", None)
            .await
            .0,
        200
    );
    assert_eq!(
        ctl.request(Some(&bob), Method::GET, "/api/v1/me", None)
            .await
            .0,
        401
    );
    assert!(ctl.login("bob", "bob-password-1").await.is_err());
    assert_eq!(
        ctl.send(Method::POST, "/api/v1/users/bob/enable", None)
            .await
            .0,
        200
    );
    assert!(ctl.login("bob", "bob-password-1").await.is_ok());

    // Bad account input.
    let (status, body) = ctl
        .send(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "Eve!", "password": "long-enough"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = ctl
        .send(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "eve", "password": "short"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = ctl
        .send(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "alice", "password": "long-enough"})),
        )
        .await;
    assert_eq!(status, 409);
    let (_, users) = ctl.send(Method::GET, "/api/v1/users", None).await;
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("password_hash").is_none()),
        "{users}"
    );
}

/// `/healthz` tells anyone only that the controller is up and its store takes
/// writes; the counts of hosts and instances need an admin's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_counts_only_to_admins() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let (status, anon) = ctl.get_with("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(anon["status"], "ok");
    assert_eq!(anon["store"], "writable");
    assert!(
        anon.get("hosts").is_none() && anon.get("instances").is_none(),
        "{anon}"
    );
    let alice = ctl.user("alice", "user").await;
    let (_, user) = ctl.get_with("/healthz", Some(&alice)).await;
    assert!(user.get("instances").is_none(), "{user}");
    let (_, admin) = ctl.get("/healthz").await;
    assert!(
        admin["hosts"].is_object() && admin["instances"].is_object(),
        "{admin}"
    );
}
