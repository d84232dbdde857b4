//! Registry-free images (`cairn images push`) against a real controller process: an
//! upload cut off halfway resumes from the controller's offset, corrupted and
//! non-Docker archives are refused with a clear error and leave nothing listed, and
//! a committed archive is served over the agent link from any offset.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cairn_controller::images::archives::blake3_file;
use cairn_shared::framing;
use cairn_shared::identity;
use cairn_shared::protocol::{AgentRequest, AgentResponse, Welcome, PROTOCOL_VERSION};
use cairn_tests::cluster::{bin, stderr, wait_for, Controller, ControllerOptions};
use cairn_tests::rawlink;
use cairn_tests::require::{require, Need};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// The image pushed; bump the number when [`fill_rootfs`] changes.
const TAG: &str = "cairn-test/upload:1";
/// Incompressible bytes in the image, so the archive is big enough to cut in two.
const DATA_BYTES: usize = 3 * 1024 * 1024;

/// Runs the `cairn` CLI as the controller's admin.
fn cairn(ctl: &Controller, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("cairn"))
        .args(args)
        .env_remove("XDG_CONFIG_HOME")
        .env("CAIRN_URL", &ctl.api)
        .env("CAIRN_TOKEN", &ctl.admin_token)
        .env("CAIRN_CONFIG", dir.join("cairn.toml"))
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so the image is the same every build.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn fill_rootfs(root: &Path) {
    std::fs::write(root.join("hello.txt"), "pushed, not pulled\n").unwrap();
    std::fs::write(root.join("data.bin"), noise(DATA_BYTES)).unwrap();
}

/// A plain tar of one file: a tar, but not a `docker save` archive.
fn plain_tar(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello.txt"), "hi\n").unwrap();
    let out = dir.join("plain.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&content)
        .arg("-cf")
        .arg(&out)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success());
    out
}

/// Starts a `PATCH` of `declared` bytes, sends only `body`, and drops the connection.
async fn patch_and_hang_up(ctl: &Controller, id: &str, body: &[u8], declared: usize) {
    let addr = ctl.api.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH /api/v1/images/uploads/{id} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {}\r\nUpload-Offset: 0\r\nContent-Length: {declared}\r\n\
         Content-Type: application/offset+octet-stream\r\n\r\n",
        ctl.admin_token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    drop(s);
}

async fn offset_of(ctl: &Controller, id: &str) -> u64 {
    let (status, body) = ctl.get(&format!("/api/v1/images/uploads/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().unwrap()
}

async fn images(ctl: &Controller) -> Vec<Value> {
    let (status, body) = ctl.get("/api/v1/images").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_refused_and_nothing_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    // A tar that is not a `docker save` archive: refused at commit, one line, exit 7.
    let plain = plain_tar(tmp.path());
    let out = cairn(
        &ctl,
        tmp.path(),
        &["images", "push", plain.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).ends_with("error: not a docker save archive: manifest.json missing\n"),
        "{}",
        stderr(&out)
    );
    // A compressed archive is caught before anything is sent.
    let gz = tmp.path().join("image.tar.gz");
    let mut bytes = vec![0x1f, 0x8b, 8, 0];
    bytes.resize(4096, 0);
    std::fs::write(&gz, bytes).unwrap();
    let out = cairn(&ctl, tmp.path(), &["images", "push", gz.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("gzip-compressed"), "{}", stderr(&out));

    // Bytes corrupted in transit (one flipped): the hash check refuses them and the
    // upload is discarded.
    let original = std::fs::read(&plain).unwrap();
    let hash = blake3_file(&plain).unwrap();
    let (status, up) = ctl
        .send(
            Method::POST,
            "/api/v1/images/uploads",
            Some(json!({"size_bytes": original.len(), "blake3": hash})),
        )
        .await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(up["offset"], 0);
    let id = up["id"].as_str().unwrap().to_string();
    let mut corrupted = original.clone();
    corrupted[original.len() / 3] ^= 0x40;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/images/uploads/{id}", ctl.api);
    // HEAD tells the offset in a header, as tus clients expect.
    let resp = http
        .head(&url)
        .bearer_auth(&ctl.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["upload-offset"].to_str().unwrap(), "0");
    // Without an offset the request means nothing.
    let resp = http
        .patch(&url)
        .bearer_auth(&ctl.admin_token)
        .body(corrupted.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = http
        .patch(&url)
        .bearer_auth(&ctl.admin_token)
        .header("Upload-Offset", "0")
        .body(corrupted)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["upload-offset"].to_str().unwrap(),
        original.len().to_string()
    );
    let (status, body) = ctl
        .send(
            Method::POST,
            &format!("/api/v1/images/uploads/{id}/commit"),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "hash_mismatch");
    assert_eq!(
        body["error"]["message"],
        "the uploaded bytes do not match the archive's BLAKE3 hash (corrupted in transit or changed on disk); push again"
    );
    assert_eq!(
        ctl.get(&format!("/api/v1/images/uploads/{id}")).await.0,
        404
    );
    assert!(images(&ctl).await.is_empty());
    let out = cairn(&ctl, tmp.path(), &["images", "ls"]);
    assert!(stdout(&out).starts_with("no images;"), "{}", stdout(&out));

    // Only admins push.
    let alice = ctl.user("alice", "user").await;
    let (status, _) = ctl
        .request(
            Some(&alice),
            Method::POST,
            "/api/v1/images/uploads",
            Some(json!({"size_bytes": 2048, "blake3": "ab".repeat(32)})),
        )
        .await;
    assert_eq!(status, 403);
    // Sizes are checked before a byte is sent.
    let (status, body) = ctl
        .send(
            Method::POST,
            "/api/v1/images/uploads",
            Some(json!({"size_bytes": 1u64 << 62, "blake3": "ab".repeat(32)})),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("images.max_archive_bytes"),
        "{body}"
    );
    assert_eq!(
        std::fs::read_dir(ctl.dir.join("images/uploads"))
            .unwrap()
            .count(),
        0
    );
}

/// Sends one `FetchImage` on its own stream; returns the answer and the bytes after it.
async fn fetch(conn: &quinn::Connection, archive: &str, offset: u64) -> (AgentResponse, Vec<u8>) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = AgentRequest::FetchImage {
        archive: archive.into(),
        offset,
    };
    framing::write(&mut send, &req, 64 * 1024).await.unwrap();
    send.finish().unwrap();
    let resp: AgentResponse = framing::read(&mut recv, 64 * 1024).await.unwrap().unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(30), recv.read_to_end(64 << 20))
        .await
        .expect("the archive arrives in time")
        .unwrap();
    (resp, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_push_resumes_and_the_archive_is_served_over_the_link() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    cairn_tests::images::ensure_image(TAG, fill_rootfs);
    let image_id = cairn_tests::docker::docker(&["image", "inspect", "--format", "{{.Id}}", TAG]);
    let archive_path = tmp.path().join("upload.tar");
    cairn_tests::docker::docker(&["save", "-o", archive_path.to_str().unwrap(), TAG]);
    let original = std::fs::read(&archive_path).unwrap();
    let size = original.len();
    assert!(size > DATA_BYTES, "{size}");
    let hash = blake3_file(&archive_path).unwrap();

    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    // An upload whose connection drops halfway keeps what arrived.
    let (status, up) = ctl
        .send(
            Method::POST,
            "/api/v1/images/uploads",
            Some(json!({"size_bytes": size, "blake3": hash})),
        )
        .await;
    assert_eq!(status, 201, "{up}");
    let id = up["id"].as_str().unwrap().to_string();
    let half = size / 2;
    patch_and_hang_up(&ctl, &id, &original[..half], size).await;
    wait_for("the first half to be kept", Duration::from_secs(10), || {
        let (ctl, id) = (&ctl, &id);
        async move { offset_of(ctl, id).await == half as u64 }
    })
    .await;
    // Sending from anywhere else is refused with the offset to go on from.
    let resp = reqwest::Client::new()
        .patch(format!("{}/api/v1/images/uploads/{id}", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .header("Upload-Offset", "0")
        .body(original[..1024].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(
        resp.headers()["upload-offset"].to_str().unwrap(),
        half.to_string()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["offset"], half as u64);
    assert_eq!(body["error"]["code"], "offset_mismatch");
    assert_eq!(offset_of(&ctl, &id).await, half as u64);

    // `push` finds the unfinished upload of the same bytes and sends only the rest.
    let out = cairn(
        &ctl,
        tmp.path(),
        &["images", "push", archive_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("resuming at 1."), "{}", stderr(&out));
    let short_id = &image_id["sha256:".len().."sha256:".len() + 12];
    assert!(
        stdout(&out).starts_with(&format!("pushed image sha256:{short_id} (")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(&format!("use it in a blueprint as image = \"{TAG}\"")),
        "{}",
        stdout(&out)
    );
    // What the controller keeps is exactly the file.
    let stored = std::fs::read(ctl.dir.join(format!("images/archives/{hash}.tar"))).unwrap();
    assert!(
        stored == original,
        "the stored archive differs from the pushed file"
    );
    let listed: Value = serde_json::from_str(&stdout(&cairn(
        &ctl,
        tmp.path(),
        &["images", "ls", "--json"],
    )))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["image_id"], image_id);
    assert_eq!(listed[0]["archive"], hash);
    assert_eq!(listed[0]["tags"], json!([TAG]));
    assert_eq!(listed[0]["uploaded_by"], "admin");

    // Pushing it again sends nothing.
    let out = cairn(
        &ctl,
        tmp.path(),
        &["images", "push", archive_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already has this archive"),
        "{}",
        stderr(&out)
    );

    // A copy with one byte flipped (inside the layer) is refused: its hash is its
    // own, but its layer no longer matches the image config.
    let mut damaged = original.clone();
    damaged[size / 2] ^= 0x01;
    let damaged_path = tmp.path().join("damaged.tar");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let out = cairn(
        &ctl,
        tmp.path(),
        &["images", "push", damaged_path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: the archive is damaged: layer "),
        "{err}"
    );
    assert_eq!(images(&ctl).await.len(), 1);
    assert_eq!(
        std::fs::read_dir(ctl.dir.join("images/uploads"))
            .unwrap()
            .count(),
        0
    );

    // Agents fetch the archive over the link, from any offset.
    let st = cairn_agent::enrol::join(&cairn_agent::enrol::JoinOptions {
        controller: ctl.link.to_string(),
        token: ctl.token("5m", 1),
        ca_sha256: identity::Fingerprint::parse(&ctl.ca_sha256).unwrap(),
        state_dir: tmp.path().join("fetcher"),
        labels: Default::default(),
        hostname: "fetcher".into(),
        force: false,
    })
    .await
    .expect("enrol");
    let ep = rawlink::endpoint();
    let conn = rawlink::connect(
        &ep,
        ctl.link,
        rawlink::client_with_cert(&st.ca_der, &st.cert_der, &st.key_pem),
    )
    .await
    .unwrap();
    let (mut control, mut control_recv) = conn.open_bi().await.unwrap();
    framing::write(
        &mut control,
        &rawlink::hello(PROTOCOL_VERSION, "fetcher"),
        framing::MAX_FRAME_LEN,
    )
    .await
    .unwrap();
    let _: Welcome = framing::read(&mut control_recv, framing::MAX_FRAME_LEN)
        .await
        .unwrap()
        .unwrap();
    let (resp, bytes) = fetch(&conn, &hash, 0).await;
    assert_eq!(
        resp,
        AgentResponse::ImageStream {
            size_bytes: size as u64
        }
    );
    assert!(bytes == original, "the fetched archive differs");
    let (resp, bytes) = fetch(&conn, &hash, half as u64).await;
    assert_eq!(
        resp,
        AgentResponse::ImageStream {
            size_bytes: size as u64
        }
    );
    assert!(bytes[..] == original[half..], "the fetched tail differs");
    let (resp, bytes) = fetch(&conn, &hash, size as u64 + 1).await;
    assert!(
        matches!(resp, AgentResponse::Refused { ref message, .. } if message.contains("past the end")),
        "{resp:?}"
    );
    assert!(bytes.is_empty());

    // Removed (by tag): gone from the list, and agents are told so.
    let out = cairn(&ctl, tmp.path(), &["images", "rm", TAG]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("removed image sha256:"),
        "{}",
        stdout(&out)
    );
    assert!(images(&ctl).await.is_empty());
    let (resp, _) = fetch(&conn, &hash, 0).await;
    assert!(
        matches!(resp, AgentResponse::Refused { ref message, .. } if message.starts_with(&format!("no image archive {hash} on this controller"))),
        "{resp:?}"
    );
    let out = cairn(&ctl, tmp.path(), &["images", "rm", &hash]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    conn.close(0u32.into(), b"done");
}
