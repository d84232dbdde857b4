//! Groups against a real controller, agent and Docker: a teacher's course from
//! creation to its end, every permission edge between member, manager, owner,
//! admin and outsider (a manager of group B acting on group A included), quotas
//! with the numbers, usage and its CSV, removal and expiry stopping instances
//! with a reason, the audit log, the CLI; and idle culling through the proxy,
//! where WebSocket messages keep an instance and pings do not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Output;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use cairn_tests::cluster::{start_agent, stderr, wait_for, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::require::{require, Need};
use cairn_tests::testapp::{testapp_image, PORT};

const MINUTE: Duration = Duration::from_secs(60);

fn ok(o: Output) -> String {
    assert!(o.status.success(), "cairn failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lab(name: &str, image: &str, group: &str, memory: u64) -> Value {
    json!({
        "name": name, "image": image, "pull": "never", "app": "http", "app_port": PORT,
        "memory_mib": memory, "cpus": 0.5, "group": group, "cost": 2.0,
        "max_lifetime_secs": 3600,
    })
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|b| b[key].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_from_join_code_to_its_end_with_every_permission_edge() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = testapp_image();
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let _agent = start_agent(&ctl, tmp.path(), "docker-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    let tina = ctl.user("tina", "user").await; // teaches course A
    let mark = ctl.user("mark", "user").await; // manages course B
    let sam = ctl.user("sam", "user").await; // a student
    let olga = ctl.user("olga", "user").await; // in no course
    let admin = ctl.admin_token.clone();
    let req = |t: &str, m: Method, p: &str, b: Option<Value>| {
        let t = t.to_string();
        let p = p.to_string();
        let ctl = &ctl;
        async move { ctl.request(Some(&t), m, &p, b).await }
    };

    // Teachers may start groups of their own (the browser test has one do it),
    // but quotas, limits and other owners are the admins'.
    let (s, b) = req(
        &tina,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "course-a", "owner": "sam"})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = req(
        &tina,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "course-a", "quota": {"instances": 500}})),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    let (s, b) = req(&admin, Method::POST, "/api/v1/groups", Some(json!({
        "name": "course-a", "owner": "tina", "title": "Course A",
        "limits": {"images": ["cairn-test/*"], "max_memory_mib": 512, "max_lifetime_secs": 7200},
        "member_quota": {"instances": 1},
    }))).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        b["members"][0],
        json!({"user": "tina", "role": "owner", "joined_ms": b["members"][0]["joined_ms"]})
    );
    let (s, b) = req(
        &admin,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "course-b", "owner": "mark"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");

    // The teacher builds a blueprint within the admin's limits, and only within.
    let (s, b) = req(
        &tina,
        Method::POST,
        "/api/v1/blueprints",
        Some(lab("lab", "busybox:latest", "course-a", 256)),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not among the images allowed"),
        "{b}"
    );
    let (s, b) = req(
        &tina,
        Method::POST,
        "/api/v1/blueprints",
        Some(lab("lab", &image, "course-a", 1024)),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024 MiB of memory is over its limit of 512 MiB"),
        "{b}"
    );
    let (s, b) = req(
        &tina,
        Method::POST,
        "/api/v1/blueprints",
        Some(lab("lab", &image, "course-a", 256)),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["group"], "course-a");
    // Not in someone else's group, and not in the default one.
    let (s, _) = req(
        &tina,
        Method::POST,
        "/api/v1/blueprints",
        Some(lab("lab2", &image, "course-b", 256)),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = req(
        &tina,
        Method::POST,
        "/api/v1/blueprints",
        Some(lab("lab2", &image, "everyone", 256)),
    )
    .await;
    assert_eq!(s, 403);

    // A manager of course B is an outsider to course A, in every door.
    for (m, path, body) in [
        (Method::GET, "/api/v1/groups/course-a", None),
        (Method::GET, "/api/v1/groups/course-a/instances", None),
        (Method::GET, "/api/v1/groups/course-a/usage", None),
        (Method::GET, "/api/v1/groups/course-a/code", None),
        (
            Method::POST,
            "/api/v1/groups/course-a/code",
            Some(json!({})),
        ),
        (
            Method::PUT,
            "/api/v1/groups/course-a/members/olga",
            Some(json!({"role": "member"})),
        ),
        (
            Method::PATCH,
            "/api/v1/groups/course-a",
            Some(json!({"title": "mine"})),
        ),
    ] {
        let (s, b) = req(&mark, m.clone(), path, body).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{m} {path}: {b}"
        );
    }
    let (s, _) = req(
        &mark,
        Method::PUT,
        "/api/v1/blueprints/lab",
        Some(lab("lab", &image, "course-a", 128)),
    )
    .await;
    assert_eq!(s, 404, "mark cannot even see lab");

    // Students see nothing of the course before they join.
    let (_, list) = req(&sam, Method::GET, "/api/v1/blueprints", None).await;
    assert!(!names(&list, "name").contains(&"lab".to_string()), "{list}");
    let (s, _) = req(
        &sam,
        Method::POST,
        "/api/v1/instances",
        Some(json!({"blueprint": "lab"})),
    )
    .await;
    assert_eq!(s, 404);

    // A join code, through the CLI as a teacher would.
    let out = ok(ctl.cairn_as(
        Some(&tina),
        &["groups", "code", "course-a", "--new", "--valid", "1d"],
        "",
    ));
    let code = out.split_whitespace().next().unwrap().to_string();
    assert_eq!(code.len(), 10, "{out}");
    assert!(out.contains(&format!("cairn join {code}")), "{out}");
    let refused = ctl.cairn_as(Some(&sam), &["groups", "code", "course-a", "--new"], "");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("no group named \"course-a\""),
        "{}",
        stderr(&refused)
    );
    // Typed the way people type codes.
    let typed = format!("{}-{}", &code[..5], &code[5..]).to_lowercase();
    let out = ok(ctl.cairn_as(Some(&sam), &["join", &typed], ""));
    assert!(out.contains("joined course-a (Course A)"), "{out}");
    let again = ctl.cairn_as(Some(&sam), &["join", &code], "");
    assert!(
        stderr(&again).contains("you are already in this group"),
        "{}",
        stderr(&again)
    );
    let out = ok(ctl.cairn_as(Some(&sam), &["groups"], ""));
    assert!(
        out.contains("course-a") && out.contains("member") && out.contains("everyone"),
        "{out}"
    );

    // A member: sees the group, not its people; launches within the quota.
    let (s, g) = req(&sam, Method::GET, "/api/v1/groups/course-a", None).await;
    assert_eq!(
        (s, g["role"].as_str(), g["members"].as_array().map(Vec::len)),
        (200, Some("member"), Some(0)),
        "{g}"
    );
    let (s, b) = req(&sam, Method::GET, "/api/v1/groups/course-a/instances", None).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs a manager"),
        "{b}"
    );
    let id = ctl.launch(&sam, "lab").await;
    cleanup.0.push(id.clone());
    let running = ctl.wait_instance(&sam, &id, "running", MINUTE).await;
    assert_eq!(running["group"], "course-a");
    let (s, b) = req(
        &sam,
        Method::POST,
        "/api/v1/instances",
        Some(json!({"blueprint": "lab"})),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("quota_exceeded")),
        "{b}"
    );
    assert_eq!(
        b["error"]["message"],
        "you already run 1 of the 1 instances allowed (group course-a)"
    );

    // The teacher sees and could stop it, but does not reach the student's app.
    let (_, list) = req(
        &tina,
        Method::GET,
        "/api/v1/groups/course-a/instances",
        None,
    )
    .await;
    assert_eq!(names(&list, "id"), vec![id.clone()]);
    let (s, _) = req(&tina, Method::GET, &format!("/api/v1/instances/{id}"), None).await;
    assert_eq!(s, 200);
    let (s, _) = req(&mark, Method::GET, &format!("/api/v1/instances/{id}"), None).await;
    assert_eq!(s, 404);
    let resp = reqwest::Client::new()
        .get(format!("{}/i/{id}/", ctl.api))
        .bearer_auth(&tina)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the teacher reached a student's app");
    let out = ok(ctl.cairn_as(Some(&tina), &["ps", "--group", "course-a"], ""));
    assert!(out.contains(&id) && out.contains("sam"), "{out}");

    // Usage: the student's own, the group's for its managers, CSV for admins.
    let (_, mine) = req(&sam, Method::GET, "/api/v1/usage", None).await;
    assert_eq!(
        (mine[0]["group"].as_str(), mine[0]["instances"].as_u64()),
        (Some("course-a"), Some(1)),
        "{mine}"
    );
    let (s, report) = req(&tina, Method::GET, "/api/v1/groups/course-a/usage", None).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        (
            report["rows"][0]["user"].as_str(),
            report["total"]["memory_mib"].as_u64()
        ),
        (Some("sam"), Some(256)),
        "{report}"
    );
    assert_eq!(report["member_quota"]["instances"], 1);
    let (s, _) = req(&sam, Method::GET, "/api/v1/groups/course-a/usage", None).await;
    assert_eq!(s, 403);
    let csv = ok(ctl.cairn_as(Some(&admin), &["usage", "--csv"], ""));
    assert!(
        csv.starts_with("group,user,instances,memory_mib,credits,launches\n"),
        "{csv}"
    );
    assert!(csv.contains("course-a,sam,1,256,"), "{csv}");
    let refused = ctl.cairn_as(Some(&tina), &["usage", "--csv"], "");
    assert!(
        stderr(&refused).contains("needs an admin"),
        "{}",
        stderr(&refused)
    );

    // Removing a member stops nothing silently.
    let (s, d) = req(
        &tina,
        Method::DELETE,
        "/api/v1/groups/course-a/members/sam",
        None,
    )
    .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["stopped"], json!([id.clone()]));
    assert_eq!(d["reason"], "sam was removed from group course-a by tina");
    let stopped = ctl.wait_instance(&sam, &id, "stopped", MINUTE).await;
    assert_eq!(
        stopped["state_reason"], "sam was removed from group course-a by tina",
        "{stopped}"
    );
    let (s, _) = req(
        &sam,
        Method::POST,
        "/api/v1/instances",
        Some(json!({"blueprint": "lab"})),
    )
    .await;
    assert_eq!(s, 404, "a removed member still launches");

    // Roles: a manager manages members but makes no owners; members leave.
    let (s, _) = req(
        &tina,
        Method::PUT,
        "/api/v1/groups/course-a/members/mark",
        Some(json!({"role": "manager"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = req(
        &mark,
        Method::PUT,
        "/api/v1/groups/course-a/members/olga",
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = req(
        &mark,
        Method::DELETE,
        "/api/v1/groups/course-a/members/tina",
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("last_owner")),
        "{b}"
    );
    let (s, _) = req(
        &mark,
        Method::PUT,
        "/api/v1/groups/course-a/members/olga",
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(s, 200);
    let out = ok(ctl.cairn_as(Some(&olga), &["groups", "leave", "course-a"], ""));
    assert!(out.contains("olga is no longer in course-a"), "{out}");
    // Owners set the course's end; quotas stay the admins'.
    let (s, b) = req(
        &tina,
        Method::PATCH,
        "/api/v1/groups/course-a",
        Some(json!({"quota": {"instances": 100}})),
    )
    .await;
    assert_eq!(s, 403, "{b}");

    // The course ends while an instance runs: it is stopped with the reason.
    let out = ok(ctl.cairn_as(Some(&sam), &["join", &code], ""));
    assert!(out.contains("joined course-a"), "{out}");
    let id2 = ctl.launch(&sam, "lab").await;
    cleanup.0.push(id2.clone());
    ctl.wait_instance(&sam, &id2, "running", MINUTE).await;
    let ends = cairn_shared::time::now_ms() + 1500;
    let (s, b) = req(
        &tina,
        Method::PATCH,
        "/api/v1/groups/course-a",
        Some(json!({"expires_ms": ends})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let stopped = ctl.wait_instance(&sam, &id2, "stopped", MINUTE).await;
    assert_eq!(stopped["state_reason"], "group course-a ended", "{stopped}");
    // Expired members are outsiders, the owner too; admins keep access.
    let (s, _) = req(&sam, Method::GET, "/api/v1/groups/course-a", None).await;
    assert_eq!(s, 404);
    let (s, _) = req(&tina, Method::GET, "/api/v1/groups/course-a/usage", None).await;
    assert_eq!(s, 404);
    let (s, report) = req(&admin, Method::GET, "/api/v1/groups/course-a/usage", None).await;
    assert_eq!(s, 200);
    let credits = report["total"]["credits"].as_f64().unwrap();
    assert!(
        credits > 0.0 && credits < 0.5,
        "two short runs at 2 credits an hour: {report}"
    );
    let again = ctl.cairn_as(Some(&sam), &["join", &code], "");
    assert!(
        stderr(&again).contains("group course-a has ended"),
        "{}",
        stderr(&again)
    );

    // The audit log names who did what from where.
    let (s, log) = req(&admin, Method::GET, "/api/v1/audit?limit=200", None).await;
    assert_eq!(s, 200);
    let entries = log.as_array().unwrap();
    let find = |action: &str, target: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} {target} in {log:#}"))
    };
    let e = find("group.member.remove", "course-a/sam");
    assert_eq!(
        (e["actor"].as_str(), e["from"].as_str()),
        (Some("tina"), Some("127.0.0.1")),
        "{e}"
    );
    assert_eq!(find("group.create", "course-a")["actor"], "admin");
    assert_eq!(find("group.join", "course-a")["actor"], "sam");
    let login = find("login", "olga");
    assert_eq!(
        (login["actor"].as_str(), login["from"].as_str()),
        (Some("olga"), Some("127.0.0.1")),
        "{login}"
    );
    let (s, _) = req(&tina, Method::GET, "/api/v1/audit", None).await;
    assert_eq!(s, 403);
    let out = ok(ctl.cairn_as(Some(&admin), &["audit", "-n", "5"], ""));
    assert!(out.starts_with("WHEN"), "{out}");
}

/// Opens a WebSocket to instance `id`'s echo as the holder of `token`.
async fn websocket(
    ctl: &Controller,
    token: &str,
    id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/i/{id}/ws", ctl.api.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_stopped_and_messages_not_pings_keep_one_alive() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = testapp_image();
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let _agent = start_agent(&ctl, tmp.path(), "docker-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    let (s, b) = ctl
        .send(
            Method::PATCH,
            "/api/v1/groups/everyone",
            Some(json!({"idle_timeout_secs": 8})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    ctl.blueprint(json!({
        "name": "app", "image": image, "pull": "never", "app": "http", "app_port": PORT,
        "memory_mib": 128, "cpus": 0.5, "max_instances_per_user": 2,
    }))
    .await;
    let ann = ctl.user("ann", "user").await;
    let busy = ctl.launch(&ann, "app").await;
    let pinged = ctl.launch(&ann, "app").await;
    cleanup.0.extend([busy.clone(), pinged.clone()]);
    ctl.wait_instance(&ann, &busy, "running", MINUTE).await;
    ctl.wait_instance(&ann, &pinged, "running", MINUTE).await;

    let mut ws_busy = websocket(&ctl, &ann, &busy).await;
    let mut ws_pinged = websocket(&ctl, &ann, &pinged).await;
    // Messages on one, pings and pongs on the other, every second, until the
    // pinged one is stopped for idleness.
    let mut warned = false;
    let mut n = 0;
    let pinged_view = loop {
        n += 1;
        assert!(n < 60, "the pinged instance was not culled within a minute");
        ws_busy
            .send(Message::text(format!("keystroke {n}")))
            .await
            .unwrap();
        assert_eq!(
            ws_busy.next().await.unwrap().unwrap(),
            Message::text(format!("keystroke {n}"))
        );
        let _ = ws_pinged.send(Message::Ping(vec![1, 2, 3].into())).await;
        let view = ctl.instance(&ann, &pinged).await;
        warned |= view["idle_stop_ms"].is_u64();
        if view["state"] != "running" {
            break view;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let stopped = ctl.wait_instance(&ann, &pinged, "stopped", MINUTE).await;
    assert_eq!(stopped["state_reason"], "idle for 8s", "{pinged_view:#}");
    assert!(warned, "no warning was shown before the stop");
    let busy_view = ctl.instance(&ann, &busy).await;
    assert_eq!(
        busy_view["state"], "running",
        "an active instance was culled: {busy_view:#}"
    );
    let last = busy_view["last_activity_ms"].as_u64().unwrap();
    assert!(cairn_shared::time::now_ms() - last < 5_000, "{busy_view:#}");
    let out = ok(ctl.cairn_as(Some(&ann), &["ps"], ""));
    let line = out.lines().find(|l| l.contains(&busy)).unwrap();
    assert!(
        line.contains("s ago") || line.contains("0s"),
        "ps shows no activity: {out}"
    );

    // Plain requests count too: the busy one, left alone now, is kept by them.
    drop(ws_busy);
    let http = reqwest::Client::new();
    for _ in 0..12 {
        let r = http
            .get(format!("{}/i/{busy}/small", ctl.api))
            .bearer_auth(&ann)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(ctl.instance(&ann, &busy).await["state"], "running");
    // And left alone it goes.
    wait_for("the unused instance to be culled", MINUTE, || async {
        ctl.instance(&ann, &busy).await["state"] == "stopped"
    })
    .await;
}
