//! `/api/v1/openapi.json` describes every route the API serves, and serves every
//! route it describes, with every schema it refers to.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;

use serde_json::Value;

use cairn_tests::cluster::{Controller, ControllerOptions};

/// Every route of the REST API, as its users (the CLI, the web UI's script, the
/// tests) call it.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/login"),
    ("post", "/api/v1/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("post", "/api/v1/users/{name}/disable"),
    ("post", "/api/v1/users/{name}/enable"),
    ("post", "/api/v1/users/{name}/unlock"),
    ("post", "/api/v1/register"),
    ("get", "/api/v1/registrations"),
    ("post", "/api/v1/users/{name}/approve"),
    ("post", "/api/v1/users/{name}/reject"),
    ("put", "/api/v1/users/{name}/expiry"),
    ("post", "/api/v1/users/{name}/deletion"),
    ("delete", "/api/v1/users/{name}/deletion"),
    ("get", "/api/v1/instances"),
    ("post", "/api/v1/instances"),
    ("get", "/api/v1/instances/{id}"),
    ("delete", "/api/v1/instances/{id}"),
    ("post", "/api/v1/instances/{id}/extend"),
    ("get", "/api/v1/instances/{id}/logs"),
    ("get", "/api/v1/hosts"),
    ("get", "/api/v1/hosts/{id}"),
    ("delete", "/api/v1/hosts/{id}"),
    ("post", "/api/v1/hosts/{id}/drain"),
    ("post", "/api/v1/hosts/{id}/undrain"),
    ("get", "/api/v1/autoscaler"),
    ("get", "/api/v1/join-tokens"),
    ("post", "/api/v1/join-tokens"),
    ("delete", "/api/v1/join-tokens/{id}"),
    ("get", "/api/v1/blueprints"),
    ("post", "/api/v1/blueprints"),
    ("get", "/api/v1/blueprints/{name}"),
    ("put", "/api/v1/blueprints/{name}"),
    ("get", "/api/v1/blueprints/{name}/revisions"),
    ("post", "/api/v1/blueprints/{name}/enable"),
    ("post", "/api/v1/blueprints/{name}/disable"),
    ("post", "/api/v1/blueprints/{name}/refresh"),
    ("get", "/api/v1/images"),
    ("post", "/api/v1/images"),
    ("get", "/api/v1/images/{archive}"),
    ("delete", "/api/v1/images/{archive}"),
    ("post", "/api/v1/chunks/missing"),
    ("post", "/api/v1/chunks"),
    ("get", "/api/v1/datasets"),
    ("get", "/api/v1/datasets/{name}"),
    ("delete", "/api/v1/datasets/{name}"),
    ("post", "/api/v1/datasets/{name}/versions"),
    ("delete", "/api/v1/datasets/{name}/versions/{version}"),
    ("get", "/api/v1/datasets/{name}/versions/{version}/manifest"),
    ("get", "/api/v1/volumes"),
    ("get", "/api/v1/volumes/{name}"),
    ("delete", "/api/v1/volumes/{name}"),
    ("post", "/api/v1/volumes/{name}/head"),
    ("get", "/api/v1/volumes/{name}/snapshots/{id}/tar"),
    ("get", "/api/v1/groups"),
    ("post", "/api/v1/groups"),
    ("get", "/api/v1/groups/{name}"),
    ("patch", "/api/v1/groups/{name}"),
    ("delete", "/api/v1/groups/{name}"),
    ("put", "/api/v1/groups/{name}/members/{user}"),
    ("delete", "/api/v1/groups/{name}/members/{user}"),
    ("get", "/api/v1/groups/{name}/code"),
    ("post", "/api/v1/groups/{name}/code"),
    ("get", "/api/v1/groups/{name}/instances"),
    ("get", "/api/v1/groups/{name}/usage"),
    ("post", "/api/v1/join"),
    ("get", "/api/v1/usage"),
    ("get", "/api/v1/usage.csv"),
    ("get", "/api/v1/audit"),
];

fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.insert(x.as_str().unwrap().to_string());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_routes_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let (status, doc) = ctl.get_with("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let known: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "documented but not in this test's list: {unknown:?}"
    );

    // Every documented route is served: with placeholders for its parameters, the
    // answer is the handler's (200, 4xx with a JSON error other than "no such
    // endpoint"), never the router's 404 or 405.
    let http = reqwest::Client::new();
    for (method, path) in &documented {
        let url = format!(
            "{}{}",
            ctl.api,
            path.replace("{id}", "x")
                .replace("{name}", "x")
                .replace("{archive}", "x")
                .replace("{version}", "1")
        );
        let resp = http
            .request(method.to_uppercase().parse().unwrap(), &url)
            .bearer_auth(&ctl.admin_token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("no such endpoint") && !body.is_empty() || status < 300,
            "{method} {path} is documented but not served: {status} {body}"
        );
    }

    // Every schema the document refers to is in it.
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a local ref");
        assert!(
            schemas.contains_key(name),
            "{r} is referred to but not defined"
        );
    }
    assert!(schemas.contains_key("InstanceView") && schemas.contains_key("HostView"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
