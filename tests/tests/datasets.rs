//! Datasets end to end: the real `cairn` CLI pushes a tree (many small files, a
//! large one, empty files, symlinks, non-ASCII names) to a real controller process;
//! the manifest read back through the API is the one a local scan makes; an
//! unchanged push creates nothing and sends nothing; a small change is a new version
//! that sends a few chunks; `ls`, `show`, `rm` work; a forged pack is refused naming
//! the chunk; a user who is not an admin cannot push.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn_shared::chunks::manifest::{Limits, Manifest};
use cairn_shared::chunks::scan::scan;
use cairn_shared::chunks::{ChunkId, DEFAULT_PARAMS};
use cairn_tests::cluster::{bin, stderr, Controller, ControllerOptions};
use reqwest::Method;

/// Runs `cairn` with `token`, its scan cache under `home`.
fn cairn_as(ctl: &Controller, home: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(bin("cairn"))
        .args(args)
        .env_remove("XDG_CONFIG_HOME")
        .env("CAIRN_URL", &ctl.api)
        .env("CAIRN_TOKEN", token)
        .env("CAIRN_CONFIG", home.join("cairn.toml"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "cairn failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic incompressible bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn build_tree(root: &Path) {
    for d in 0..10 {
        let dir = root.join(format!("notes/week-{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            std::fs::write(
                dir.join(format!("ex-{f:03}.txt")),
                format!("week {d}, exercise {f}\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("big.bin"), noise(20 * 1024 * 1024, 7)).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("empty-1"), b"").unwrap();
    std::fs::write(root.join("notes/empty-2"), b"").unwrap();
    std::fs::create_dir_all(root.join("données")).unwrap();
    std::fs::write(root.join("données/résumé ☃.txt"), "ünïcödé\n").unwrap();
    std::fs::write(root.join("日本語.txt"), "こんにちは\n").unwrap();
    std::os::unix::fs::symlink("big.bin", root.join("link-to-big")).unwrap();
    std::os::unix::fs::symlink("../nowhere", root.join("notes/dangling")).unwrap();
}

/// `sent X in` of a push's summary, in bytes (approximately, from the human size).
fn sent_bytes(summary: &str) -> f64 {
    let s = summary
        .split("sent ")
        .nth(1)
        .and_then(|r| r.split(" in ").next())
        .unwrap_or_else(|| panic!("no 'sent' in {summary:?}"));
    let (n, unit) = s.split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other}"),
    }
}

async fn manifest_bytes(ctl: &Controller, name: &str, version: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/datasets/{name}/versions/{version}/manifest",
            ctl.api
        ))
        .bearer_auth(&ctl.admin_token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_unchanged_change_list_show_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let tree = tmp.path().join("tree");
    build_tree(&tree);
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let admin = ctl.admin_token.clone();
    let tree_arg = tree.to_str().unwrap();

    // First push: everything is sent.
    let out = ok(cairn_as(
        &ctl,
        &home,
        &admin,
        &["datasets", "push", "course", tree_arg],
    ));
    assert!(out.starts_with("pushed course@1: 405 files, "), "{out}");
    assert!(sent_bytes(&out) >= 19.5 * 1024.0 * 1024.0, "{out}");

    // The manifest the controller keeps is the one a local scan makes.
    let local = scan(&tree, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    let (status, got) = manifest_bytes(&ctl, "course", "1").await;
    assert_eq!(status, 200);
    let got = Manifest::decode(&got, &Limits::DEFAULT).unwrap();
    assert_eq!(got, local.manifest);
    let (_, d) = ctl.get("/api/v1/datasets/course").await;
    assert_eq!(d["versions"][0]["manifest"], local.manifest.id().to_hex());
    assert_eq!(d["versions"][0]["files"], 405);
    assert_eq!(d["versions"][0]["pushed_by"], "admin");

    // Unchanged: no version, nothing sent.
    let out = ok(cairn_as(
        &ctl,
        &home,
        &admin,
        &["datasets", "push", "course", tree_arg],
    ));
    assert_eq!(out, "unchanged: course@1\n");
    let (_, d) = ctl.get("/api/v1/datasets/course").await;
    assert_eq!(d["versions"].as_array().unwrap().len(), 1);

    // A few bytes in the middle of the big file change: a new version, a few
    // chunks sent, not the file.
    let mut big = std::fs::read(tree.join("big.bin")).unwrap();
    big[10 * 1024 * 1024..10 * 1024 * 1024 + 100].fill(0);
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    let out = ok(cairn_as(
        &ctl,
        &home,
        &admin,
        &["datasets", "push", "course", tree_arg],
    ));
    assert!(out.starts_with("pushed course@2: 405 files, "), "{out}");
    let sent = sent_bytes(&out);
    assert!(
        sent < 2.0 * 1024.0 * 1024.0,
        "sent {sent} bytes for a 100-byte change: {out}"
    );
    let (_, latest) = manifest_bytes(&ctl, "course", "latest").await;
    let local = scan(&tree, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    assert_eq!(
        Manifest::decode(&latest, &Limits::DEFAULT).unwrap(),
        local.manifest
    );

    // ls and show, for a user who is not an admin too.
    let alice = ctl.user("alice", "user").await;
    let ls = ok(cairn_as(&ctl, &home, &alice, &["datasets", "ls"]));
    assert!(ls.contains("course") && ls.contains("@2"), "{ls}");
    let show = ok(cairn_as(
        &ctl,
        &home,
        &alice,
        &["datasets", "show", "course"],
    ));
    assert!(
        show.contains("course@1") && show.contains("course@2"),
        "{show}"
    );
    // The web pages show them, with the nav entry.
    let page = |path: &'static str| {
        let (api, alice) = (ctl.api.clone(), alice.clone());
        async move {
            let r = reqwest::Client::new()
                .get(format!("{api}{path}"))
                .header("cookie", format!("cairn_session={alice}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, html) = page("/datasets").await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("href=\"/datasets/course\"") && html.contains("course@2"),
        "{html}"
    );
    let (s, html) = page("/datasets/course").await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("course@1") && html.contains("405"), "{html}");
    // ...who may not push or remove (exit code 4: forbidden).
    let o = cairn_as(&ctl, &home, &alice, &["datasets", "push", "mine", tree_arg]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let o = cairn_as(&ctl, &home, &alice, &["datasets", "rm", "course"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));

    // rm one version, then the dataset.
    let out = ok(cairn_as(
        &ctl,
        &home,
        &admin,
        &["datasets", "rm", "course@1"],
    ));
    assert_eq!(out, "removed course@1\n");
    let show = ok(cairn_as(
        &ctl,
        &home,
        &admin,
        &["datasets", "show", "course"],
    ));
    assert!(
        !show.contains("course@1") && show.contains("course@2"),
        "{show}"
    );
    assert_eq!(manifest_bytes(&ctl, "course", "1").await.0, 404);
    let out = ok(cairn_as(&ctl, &home, &admin, &["datasets", "rm", "course"]));
    assert_eq!(out, "removed course (1 version)\n");
    let o = cairn_as(&ctl, &home, &admin, &["datasets", "show", "course"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let ls = ok(cairn_as(&ctl, &home, &admin, &["datasets", "ls"]));
    assert!(ls.starts_with("no datasets"), "{ls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_push_sends_a_manifest_delta_and_recovers_what_the_controller_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let tree = tmp.path().join("tree");
    // 3,000 small files: a manifest of some 300 KiB.
    for d in 0..30 {
        let dir = tree.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:03}.txt")), noise(200, d * 1000 + f)).unwrap();
        }
    }
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let admin = ctl.admin_token.clone();
    let arg = tree.to_str().unwrap();
    let push = || {
        ok(cairn_as(
            &ctl,
            &home,
            &admin,
            &["datasets", "push", "notes", arg],
        ))
    };
    let whole = {
        let out = push();
        assert!(out.starts_with("pushed notes@1: 3000 files, "), "{out}");
        scan(&tree, DEFAULT_PARAMS, None, &mut |_| {})
            .unwrap()
            .manifest
            .encode()
            .len()
    };
    assert!(whole > 150_000, "{whole}");

    // Three files change: their bytes and a small delta travel, not the manifest.
    for d in [3, 15, 27] {
        std::fs::write(tree.join(format!("d{d:02}/f050.txt")), noise(200, 99 + d)).unwrap();
    }
    let out = push();
    assert!(out.starts_with("pushed notes@2: "), "{out}");
    let sent = sent_bytes(&out);
    assert!(
        sent < 30.0 * 1024.0,
        "sent {sent} bytes for 3 changed files: {out}"
    );
    let local = scan(&tree, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    let (_, latest) = manifest_bytes(&ctl, "notes", "latest").await;
    assert_eq!(
        Manifest::decode(&latest, &Limits::DEFAULT).unwrap(),
        local.manifest
    );

    // The controller lost the chunk of an unchanged file and the manifest the
    // delta would start from: the push notices both and still commits.
    let store = cairn_shared::chunks::dir::ChunkDir::open(ctl.dir.join("chunks")).unwrap();
    let lost = ChunkId::of(&std::fs::read(tree.join("d00/f000.txt")).unwrap());
    assert!(store.remove(&lost).unwrap());
    assert!(store.remove(&local.manifest.id()).unwrap());
    std::fs::write(tree.join("d01/f001.txt"), noise(200, 5)).unwrap();
    let o = cairn_as(&ctl, &home, &admin, &["datasets", "push", "notes", arg]);
    let out = ok(o);
    assert!(out.starts_with("pushed notes@3: "), "{out}");
    assert!(store.contains(&lost));
    let local = scan(&tree, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    let (_, latest) = manifest_bytes(&ctl, "notes", "latest").await;
    assert_eq!(
        Manifest::decode(&latest, &Limits::DEFAULT).unwrap(),
        local.manifest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_packs_and_bad_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| {
        http.request(Method::POST, format!("{}{path}", ctl.api))
            .bearer_auth(&ctl.admin_token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };

    let good = b"a good chunk".to_vec();
    let forged = ChunkId::of(b"what the id claims");
    let mut pack = vec![];
    for (id, bytes) in [
        (ChunkId::of(&good), &good[..]),
        (forged, &b"other bytes"[..]),
    ] {
        pack.extend_from_slice(&id.0);
        pack.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        pack.extend_from_slice(bytes);
    }
    let r = post("/api/v1/chunks", pack).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "chunk_mismatch");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&forged.to_hex()),
        "{body}"
    );
    // Nothing of the pack was stored.
    let (s, m) = ctl
        .send(
            Method::POST,
            "/api/v1/chunks/missing",
            Some(serde_json::json!({"ids": [ChunkId::of(&good).to_hex(), forged.to_hex()]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(m["missing"].as_array().unwrap().len(), 2);

    // A full batch of ids (16384, about 1.1 MB of JSON) is answered; one more is not.
    let many: Vec<String> = (0..16384u32)
        .map(|i| ChunkId::of(&i.to_be_bytes()).to_hex())
        .collect();
    let (s, m) = ctl
        .send(
            Method::POST,
            "/api/v1/chunks/missing",
            Some(serde_json::json!({ "ids": many })),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["missing"].as_array().unwrap().len(), 16384);
    let mut too_many = many.clone();
    too_many.push(forged.to_hex());
    let (s, m) = ctl
        .send(
            Method::POST,
            "/api/v1/chunks/missing",
            Some(serde_json::json!({ "ids": too_many })),
        )
        .await;
    assert_eq!(s, 400, "{m}");

    // A pack over 32 MiB is refused before it is read: 413, or the connection closed
    // under a client still sending (never a pack that was read and judged).
    match post("/api/v1/chunks", vec![0u8; 33 * 1024 * 1024]).await {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    // A manifest that does not decode: 400 with the rule.
    let r = post("/api/v1/datasets/course/versions", b"garbage".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_manifest");
    assert_eq!(body["error"]["fields"][0]["field"], "manifest");

    // A manifest naming chunks the controller lacks: 409 chunks_missing.
    let dir = tmp.path().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), b"never uploaded").unwrap();
    let m = scan(&dir, DEFAULT_PARAMS, None, &mut |_| {})
        .unwrap()
        .manifest;
    let r = post("/api/v1/datasets/course/versions", m.encode())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "chunks_missing");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&ChunkId::of(b"never uploaded").to_hex()),
        "{body}"
    );
}
