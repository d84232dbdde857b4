//! Registry-free images (`cairn images push`) against a real controller process:
//! archives go up as content-defined chunks and a one-file manifest; corrupted,
//! incomplete and non-Docker archives are refused with a clear error and leave
//! nothing listed; a committed archive is served over the agent link from any
//! offset, read from the chunk store (a damaged chunk is a refusal naming it); and
//! a second version of an image sharing base layers sends only its new layer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cairn_controller::images::archives::blake3_file;
use cairn_shared::chunks::{
    chunk_bytes, ChunkDir, ChunkId, ChunkRef, Entry, EntryKind, Manifest, Params, DEFAULT_PARAMS,
};
use cairn_shared::framing;
use cairn_shared::identity;
use cairn_shared::protocol::{AgentRequest, AgentResponse, Welcome, PROTOCOL_VERSION};
use cairn_tests::cluster::{bin, stderr, Controller, ControllerOptions};
use cairn_tests::rawlink;
use cairn_tests::require::{require, Need};
use serde_json::{json, Value};

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

/// The one-file manifest `cairn images push` builds for `data`.
fn manifest_for(data: &[u8]) -> Manifest {
    Manifest::new(
        DEFAULT_PARAMS,
        vec![Entry {
            path: "image.tar".into(),
            kind: EntryKind::File {
                chunks: chunk_bytes(data, DEFAULT_PARAMS),
            },
            mode: 0o644,
            size: data.len() as u64,
            mtime_ns: 0,
        }],
    )
}

/// The chunks of a one-file manifest.
fn chunks_of(m: &Manifest) -> Vec<ChunkRef> {
    match &m.entries[0].kind {
        EntryKind::File { chunks } => chunks.clone(),
        other => panic!("{other:?}"),
    }
}

/// Sends every chunk of `data` in one pack, as `cairn images push` would.
async fn send_chunks(ctl: &Controller, data: &[u8], chunks: &[ChunkRef]) {
    let mut pack = vec![];
    let mut at = 0usize;
    for c in chunks {
        pack.extend_from_slice(&c.id.0);
        pack.extend_from_slice(&c.len.to_be_bytes());
        pack.extend_from_slice(&data[at..at + c.len as usize]);
        at += c.len as usize;
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/chunks", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .header("content-type", "application/octet-stream")
        .body(pack)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
}

/// `POST /api/v1/images?archive=…` with `manifest`, as `token`.
async fn commit(ctl: &Controller, token: &str, manifest: &[u8], archive: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/images?archive={archive}", ctl.api))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(manifest.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The `S` and `T` of `sent S bytes of T` in what `push` printed.
fn sent_of(printed: &str) -> (u64, u64) {
    let at = printed
        .find("sent ")
        .unwrap_or_else(|| panic!("no `sent` in {printed:?}"));
    let words: Vec<&str> = printed[at..].split_whitespace().collect();
    assert_eq!((words[2], words[3]), ("bytes", "of"), "{printed}");
    (words[1].parse().unwrap(), words[4].parse().unwrap())
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

    let original = std::fs::read(&plain).unwrap();
    let hash = blake3_file(&plain).unwrap();
    let m = manifest_for(&original);
    let chunks = chunks_of(&m);
    let token = ctl.admin_token.clone();
    // Chunks not sent (the CLI sent the plain tar's above, so another file's):
    // refused, saying how many are missing.
    let unsent = noise(5000);
    let um = manifest_for(&unsent);
    let n = chunks_of(&um).len();
    let (status, body) = commit(
        &ctl,
        &token,
        &um.encode(),
        blake3::hash(&unsent).to_hex().as_str(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "chunks_missing");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "{n} of the archive's {n} chunks are not on the controller"
            )),
        "{body}"
    );
    // Chunks that do not make the hash claimed (the file changed, or bytes were
    // corrupted before they were chunked): refused.
    send_chunks(&ctl, &original, &chunks).await;
    let (status, body) = commit(&ctl, &token, &m.encode(), &"ab".repeat(32)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "hash_mismatch");
    // A manifest that is not one file.
    let (status, body) = commit(&ctl, &token, b"not a manifest", &hash).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid image manifest"),
        "{body}"
    );
    assert!(images(&ctl).await.is_empty());
    let out = cairn(&ctl, tmp.path(), &["images", "ls"]);
    assert!(stdout(&out).starts_with("no images;"), "{}", stdout(&out));

    // Only admins push.
    let alice = ctl.user("alice", "user").await;
    let (status, _) = commit(&ctl, &alice, &m.encode(), &hash).await;
    assert_eq!(status, 403);
    // Sizes are checked before a chunk is read: an archive of 5200 chunks of 4 MiB.
    let big = Params::with_avg(1 << 20);
    let fake: Vec<ChunkRef> = (0..5200u32)
        .map(|i| ChunkRef {
            id: ChunkId::of(&i.to_be_bytes()),
            len: big.max,
        })
        .collect();
    let huge = Manifest::new(
        big,
        vec![Entry {
            path: "image.tar".into(),
            size: fake.iter().map(|c| u64::from(c.len)).sum(),
            kind: EntryKind::File { chunks: fake },
            mode: 0o644,
            mtime_ns: 0,
        }],
    );
    let (status, body) = commit(&ctl, &token, &huge.encode(), &hash).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("images.max_archive_bytes"),
        "{body}"
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
async fn a_push_goes_up_as_chunks_and_the_archive_is_served_over_the_link() {
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

    // Half the chunks are already there (an earlier push that broke off): `push`
    // sends only the rest.
    let m = manifest_for(&original);
    let chunks = chunks_of(&m);
    let half_chunks = chunks.len() / 2;
    let first_half: usize = chunks[..half_chunks].iter().map(|c| c.len as usize).sum();
    send_chunks(&ctl, &original[..first_half], &chunks[..half_chunks]).await;
    let out = cairn(
        &ctl,
        tmp.path(),
        &["images", "push", archive_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let short_id = &image_id["sha256:".len().."sha256:".len() + 12];
    assert!(
        stdout(&out).starts_with(&format!("pushed image sha256:{short_id} (")),
        "{}",
        stdout(&out)
    );
    let (sent, total) = sent_of(&stdout(&out));
    assert_eq!(total, size as u64);
    assert!(
        sent <= (size - first_half) as u64 && sent + (first_half as u64) >= (size as u64) * 9 / 10,
        "sent {sent} of {size}, {first_half} there before"
    );
    assert!(
        stdout(&out).contains(&format!("use it in a blueprint as image = \"{TAG}\"")),
        "{}",
        stdout(&out)
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
    assert_eq!(listed[0]["manifest"], m.id().to_hex());
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
    assert_eq!(sent_of(&stdout(&out)).0, 0);

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
    // From the middle of a chunk.
    let half = size / 2 + 3;
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
    // A chunk rotted on the controller's disk: a fetch starting in it is refused,
    // saying so, rather than sending wrong bytes.
    let victim = chunks[half_chunks];
    let at: u64 = chunks[..half_chunks].iter().map(|c| u64::from(c.len)).sum();
    let path = ChunkDir::open(ctl.dir.join("chunks"))
        .unwrap()
        .path_of(&victim.id);
    let mut rotten = std::fs::read(&path).unwrap();
    rotten[0] ^= 0xff;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, &rotten).unwrap();
    let (resp, bytes) = fetch(&conn, &hash, at + 1).await;
    assert!(
        matches!(resp, AgentResponse::Refused { ref message, .. } if message.contains("is damaged")),
        "{resp:?}"
    );
    assert!(bytes.is_empty());
    // The chunk is restored by sending it again (it is missing once removed).
    std::fs::remove_file(&path).unwrap();
    send_chunks(
        &ctl,
        &original[at as usize..at as usize + victim.len as usize],
        &[victim],
    )
    .await;

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

/// The shared base: busybox and [`BASE_BYTES`] of noise.
const BASE_TAG: &str = "cairn-test/shared-base:1";
const BASE_BYTES: usize = 6 * 1024 * 1024;
/// Each version's own layer.
const LAYER_BYTES: usize = 3 * 1024 * 1024;

/// Noise from `seed` (xorshift), so each layer is incompressible and its own.
fn noise_from(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `tag`: [`BASE_TAG`] plus one layer holding `/course.bin` (noise from `seed`),
/// made with `docker commit` so the base's layers are shared, not copied.
fn derived_image(tag: &str, seed: u64, dir: &Path) -> String {
    if cairn_tests::images::image_exists(tag) {
        return tag.to_string();
    }
    let file = dir.join(format!("course-{seed}.bin"));
    std::fs::write(&file, noise_from(seed, LAYER_BYTES)).unwrap();
    let name = format!("cairn-derive-{}-{seed}", std::process::id());
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    cairn_tests::docker::docker(&["create", "--name", &name, BASE_TAG, "/bin/sh"]);
    cairn_tests::docker::docker(&["cp", file.to_str().unwrap(), &format!("{name}:/course.bin")]);
    cairn_tests::docker::docker(&["commit", &name, tag]);
    cairn_tests::docker::docker(&["rm", "-f", &name]);
    tag.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_version_sharing_base_layers_sends_only_its_new_layer() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    cairn_tests::images::ensure_image(BASE_TAG, |root| {
        cairn_tests::images::busybox_rootfs(root);
        std::fs::write(root.join("base.bin"), noise_from(1, BASE_BYTES)).unwrap();
    });
    let v1 = derived_image("cairn-test/shared-course:1", 2, tmp.path());
    let v2 = derived_image("cairn-test/shared-course:2", 3, tmp.path());
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;

    let mut pushed = vec![];
    for tag in [&v1, &v2] {
        let path = tmp
            .path()
            .join(format!("{}.tar", tag.replace(['/', ':'], "_")));
        cairn_tests::docker::docker(&["save", "-o", path.to_str().unwrap(), tag]);
        let out = cairn(
            &ctl,
            tmp.path(),
            &["images", "push", path.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        assert!(
            stdout(&out).contains(&format!("image = \"{tag}\"")),
            "{}",
            stdout(&out)
        );
        pushed.push(sent_of(&stdout(&out)));
    }
    let [(sent1, total1), (sent2, total2)] = pushed[..] else {
        panic!("{pushed:?}")
    };
    // The first push sends everything (bar chunks repeated inside the archive).
    assert!(total1 as usize > BASE_BYTES + LAYER_BYTES, "{total1}");
    assert!(
        sent1 >= total1 * 9 / 10,
        "first push sent {sent1} of {total1}"
    );
    // The second sends about its own layer: the base's chunks are already there.
    let bound = (LAYER_BYTES as u64) * 5 / 4 + (1 << 20);
    assert!(
        sent2 <= bound && sent2 * 2 < total2,
        "second push sent {sent2} of {total2} (its new layer is {LAYER_BYTES} bytes; bound {bound})"
    );
    assert!(
        sent2 >= LAYER_BYTES as u64,
        "its new layer was sent: {sent2}"
    );
    assert_eq!(images(&ctl).await.len(), 2);

    // On the wire to an agent too: gone from the engine, each version is fetched
    // and loaded by the agent, and the second takes the base's chunks from the
    // archive it kept, fetching about its own layer only.
    for tag in [&v1, &v2] {
        cairn_tests::docker::docker(&["rmi", tag]);
    }
    let agent = cairn_tests::cluster::start_agent(&ctl, tmp.path(), "seeded").await;
    for (i, tag) in [&v1, &v2].into_iter().enumerate() {
        let bp = ctl
            .blueprint(json!({
                "name": format!("course-v{i}"), "image": tag, "app": "http",
                "app_port": 8080, "memory_mib": 32, "prepull": "all",
            }))
            .await;
        let reference = bp["resolved"]["reference"].as_str().unwrap().to_string();
        let t0 = std::time::Instant::now();
        while !agent
            .log_text()
            .lines()
            .any(|l| l.contains("image ready") && l.contains(&reference))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the agent did not load {tag}:\n{}",
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let fetched: Vec<u64> = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("image archive chunks in place"))
        .map(|l| {
            let at = l.find("fetched_bytes=").unwrap() + "fetched_bytes=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    assert!(
        fetched[0] >= total1 * 9 / 10,
        "first fetch {fetched:?} of {total1}"
    );
    assert!(
        fetched[1] <= bound && fetched[1] >= LAYER_BYTES as u64,
        "second fetch took {} of {total2} (its new layer is {LAYER_BYTES} bytes; bound {bound})",
        fetched[1]
    );
}
