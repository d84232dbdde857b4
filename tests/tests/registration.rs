//! Accounts' lives against a real controller: sign-up closed by default; open,
//! a sign-up waits for approval (the pending account cannot log in and says
//! why), auto-approved by e-mail domain; approval by an admin or by a manager of
//! the group whose code came with it — never by an outsider or a manager of
//! another group; rejection; bad input that makes no account; expiry, which
//! stops tokens and logins and is lifted again; a deletion request, withdrawn,
//! asked again and carried out after the grace period; sign-ups from one
//! address throttled. Through the API, the
//! CLI and the web form.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{stderr, wait_for, Controller, ControllerOptions};

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "cairn failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

/// Whether the proxy treats `token`'s holder as logged out: its not-found page
/// then offers a login (for someone logged in it points to their instances).
async fn proxy_offers_login(ctl: &Controller, token: &str) -> bool {
    let resp = reqwest::Client::new()
        .get(format!("{}/i/i-0123456789abcdef/", ctl.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    resp.text().await.unwrap().contains("log in")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_wait_for_the_right_approver_and_accounts_expire_and_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let signup = |name: &str, email: &str, code: Option<&str>| {
        let mut b = json!({"name": name, "email": email, "password": format!("{name}-password-1")});
        if let Some(c) = code {
            b["code"] = json!(c);
        }
        b
    };

    // Closed unless the site opens it.
    let (s, b) = ctl
        .request(
            None,
            Method::POST,
            "/api/v1/register",
            Some(signup("sam", "sam@mail.example", None)),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("registration_closed")),
        "{b}"
    );
    ctl.terminate();
    ctl.set_config("open", "true");
    ctl.set_config("auto_approve_domains", r#"["uni.example"]"#);
    ctl.set_config("deletion_grace_secs", "3");
    ctl.start().await;

    let admin = ctl.admin_token.clone();
    let tina = ctl.user("tina", "user").await; // teaches course A
    let mark = ctl.user("mark", "user").await; // manages course B
    let olga = ctl.user("olga", "user").await; // an outsider
    for (g, owner) in [("course-a", "tina"), ("course-b", "mark")] {
        let (s, b) = ctl
            .request(
                Some(&admin),
                Method::POST,
                "/api/v1/groups",
                Some(json!({"name": g, "owner": owner})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = ctl
        .request(
            Some(&tina),
            Method::POST,
            "/api/v1/groups/course-a/code",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let code = b["code"].as_str().unwrap().to_string();

    // Bad input makes no account.
    for (body, status, code_) in [
        (
            signup("sam", "not-an-address", None),
            400,
            "invalid_request",
        ),
        (
            signup("Sam!", "sam@mail.example", None),
            400,
            "invalid_request",
        ),
        (
            signup("sam", "sam@mail.example", Some("AAAAABBBBB")),
            404,
            "not_found",
        ),
        (
            signup("tina", "tina@mail.example", None),
            409,
            "already_exists",
        ),
    ] {
        let (s, b) = ctl
            .request(None, Method::POST, "/api/v1/register", Some(body.clone()))
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code_)),
            "{body} → {b}"
        );
    }
    let (_, users) = ctl.get("/api/v1/users").await;
    assert!(!names(&users).contains(&"sam".to_string()), "{users}");

    // Sam signs up with course A's code, through the CLI: he waits for course
    // A's managers, and cannot log in yet, being told why.
    let out = ok(ctl.cairn_as(
        None,
        &[
            "register",
            "sam",
            "--email",
            "sam@mail.example",
            "--code",
            &code,
            "--password-stdin",
        ],
        "sam-password-1\n",
    ));
    assert!(out.contains("waits for a manager of course-a"), "{out}");
    let refused = ctl.login("sam", "sam-password-1").await.unwrap_err();
    assert_eq!(refused["error"]["code"], "account_pending", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a manager of course-a"),
        "{refused}"
    );
    // A wrong password still says only "wrong".
    let wrong = ctl.login("sam", "not-his-password").await.unwrap_err();
    assert_eq!(wrong["error"]["code"], "login_failed", "{wrong}");

    // Who sees and may decide Sam's sign-up: admins and course A's managers;
    // neither an outsider nor course B's manager, who learn nothing of it.
    for (who, token, sees) in [
        ("admin", &admin, true),
        ("tina", &tina, true),
        ("mark", &mark, false),
        ("olga", &olga, false),
    ] {
        let (s, list) = ctl
            .request(Some(token), Method::GET, "/api/v1/registrations", None)
            .await;
        assert_eq!(s, 200, "{who}: {list}");
        assert_eq!(
            names(&list).contains(&"sam".to_string()),
            sees,
            "{who}: {list}"
        );
    }
    for token in [&mark, &olga] {
        for verb in ["approve", "reject"] {
            let (s, b) = ctl
                .request(
                    Some(token),
                    Method::POST,
                    &format!("/api/v1/users/sam/{verb}"),
                    None,
                )
                .await;
            assert_eq!(
                (s, b["error"]["code"].as_str()),
                (404, Some("not_found")),
                "{b}"
            );
        }
    }
    let out = ok(ctl.cairn_as(Some(&tina), &["users", "pending"], ""));
    assert!(out.contains("sam") && out.contains("course-a"), "{out}");
    let out = ok(ctl.cairn_as(Some(&tina), &["users", "approve", "sam"], ""));
    assert!(out.contains("approved"), "{out}");
    let sam = ctl.login("sam", "sam-password-1").await.unwrap();
    let (s, g) = ctl
        .request(Some(&sam), Method::GET, "/api/v1/groups/course-a", None)
        .await;
    assert_eq!(s, 200, "Sam is in course A: {g}");
    // Approving twice: nothing waits any more.
    let (s, _) = ctl
        .request(Some(&tina), Method::POST, "/api/v1/users/sam/approve", None)
        .await;
    assert_eq!(s, 404);

    // A sign-up from an approved domain (or under it) logs in at once.
    let (s, b) = ctl
        .request(
            None,
            Method::POST,
            "/api/v1/register",
            Some(signup("pat", "pat@physics.uni.example", None)),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["user"]["pending"], false, "{b}");
    let pat = ctl.login("pat", "pat-password-1").await.unwrap();

    // A sign-up without a code waits for an admin: a manager may not decide it.
    // Rejected, the account is gone.
    let (s, b) = ctl
        .request(
            None,
            Method::POST,
            "/api/v1/register",
            Some(signup("rex", "rex@mail.example", None)),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert!(b["message"].as_str().unwrap().contains("an admin"), "{b}");
    let (s, _) = ctl
        .request(Some(&tina), Method::POST, "/api/v1/users/rex/approve", None)
        .await;
    assert_eq!(s, 404);
    let (s, b) = ctl
        .request(Some(&admin), Method::POST, "/api/v1/users/rex/reject", None)
        .await;
    assert_eq!(s, 200, "{b}");
    let gone = ctl.login("rex", "rex-password-1").await.unwrap_err();
    assert_eq!(gone["error"]["code"], "login_failed", "{gone}");

    // The web form: linked from the login page, and it says what happens next.
    let http = reqwest::Client::new();
    let login_page = http
        .get(format!("{}/login", ctl.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(login_page.contains("href=\"/register\""), "{login_page}");
    let resp = http
        .post(format!("{}/register", ctl.api))
        .form(&[
            ("name", "vera"),
            ("email", "vera@mail.example"),
            ("password", "vera-password-1"),
            ("code", code.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let text = resp.text().await.unwrap();
    assert!(text.contains("waits for a manager of course-a"), "{text}");
    // Her login on the web page, before approval: refused, saying for whom she waits.
    let resp = http
        .post(format!("{}/login", ctl.api))
        .form(&[("user", "vera"), ("password", "vera-password-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("waits for a manager of course-a"), "{text}");

    // Expiry (admins only): Pat's token stops working and his login says why;
    // lifted, both work again.
    let (s, _) = ctl
        .request(
            Some(&tina),
            Method::PUT,
            "/api/v1/users/pat/expiry",
            Some(json!({"expires_ms": 1})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = ctl
        .request(
            Some(&admin),
            Method::PUT,
            "/api/v1/users/pat/expiry",
            Some(json!({"expires_ms": 1})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = ctl.get_with("/api/v1/me", Some(&pat)).await;
    assert_eq!(s, 401, "an expired account's token stops working");
    assert!(
        proxy_offers_login(&ctl, &pat).await,
        "the proxy no longer knows him"
    );
    let refused = ctl.login("pat", "pat-password-1").await.unwrap_err();
    assert_eq!(refused["error"]["code"], "account_expired", "{refused}");
    let out = ok(ctl.cairn_as(Some(&admin), &["users", "expire", "pat", "--never"], ""));
    assert!(out.contains("never expires"), "{out}");
    let (s, me) = ctl.get_with("/api/v1/me", Some(&pat)).await;
    assert_eq!((s, me["user"].as_str()), (200, Some("pat")), "{me}");
    assert!(
        !proxy_offers_login(&ctl, &pat).await,
        "the proxy knows him again"
    );

    // Deletion: asked by Pat himself (nobody else but admins may), withdrawn,
    // asked again, and carried out after the grace period.
    let (s, _) = ctl
        .request(Some(&sam), Method::POST, "/api/v1/users/pat/deletion", None)
        .await;
    assert_eq!(s, 404, "another user cannot ask for Pat's deletion");
    let out = ok(ctl.cairn_as(Some(&pat), &["users", "delete", "pat", "--yes"], ""));
    assert!(out.contains("will be deleted in"), "{out}");
    let out = ok(ctl.cairn_as(Some(&pat), &["users", "delete", "pat", "--cancel"], ""));
    assert!(out.contains("will not be deleted"), "{out}");
    let (_, users) = ctl.get("/api/v1/users").await;
    let p = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "pat")
        .unwrap();
    assert!(p.get("delete_after_ms").is_none(), "withdrawn: {p}");
    let (s, b) = ctl
        .request(Some(&pat), Method::POST, "/api/v1/users/pat/deletion", None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["delete_after_ms"].as_u64().is_some(), "{b}");
    wait_for("Pat's account deleted", Duration::from_secs(30), || {
        let ctl = &ctl;
        async move {
            let (_, users) = ctl.get("/api/v1/users").await;
            !names(&users).contains(&"pat".to_string())
        }
    })
    .await;
    let (s, _) = ctl.get_with("/api/v1/me", Some(&pat)).await;
    assert_eq!(s, 401);

    // One address signing up again and again is held back, saying for how long.
    let mut throttled = None;
    for n in 0..12 {
        let (s, b) = ctl
            .request(
                None,
                Method::POST,
                "/api/v1/register",
                Some(signup(&format!("spam{n}"), "spam@mail.example", None)),
            )
            .await;
        if s == 429 {
            throttled = Some((n, b));
            break;
        }
        assert_eq!(s, 201, "{b}");
    }
    let (n, b) = throttled.expect("sign-ups from one address are throttled");
    assert!(n <= 10, "held back after {n} sign-ups");
    assert_eq!(b["error"]["code"], "registration_throttled", "{b}");

    // The audit log has each step, with who did it.
    let (_, audit) = ctl.get("/api/v1/audit").await;
    let text = audit.to_string();
    for action in [
        "user.register",
        "user.approve",
        "user.reject",
        "user.expiry",
        "user.delete_request",
        "user.delete_cancel",
        "user.delete",
    ] {
        assert!(text.contains(action), "{action} in {text}");
    }
}
