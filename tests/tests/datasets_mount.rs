//! Datasets end to end on a real Docker Engine: a tree pushed to the controller
//! (REST: chunk packs, then the manifest), a blueprint that mounts it, instances
//! that see exactly its content read-only, share one copy per host, cannot leave
//! the tree through a symlink, survive an agent killed mid-fetch (only missing
//! chunks are fetched after the restart), fail clearly on a chunk corrupt on the
//! controller, and fetch once for five concurrent launches.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_shared::chunks::dir::ChunkDir;
use cairn_shared::chunks::manifest::Manifest;
use cairn_shared::chunks::{scan, ChunkId, DEFAULT_PARAMS};
use cairn_tests::cluster::{controller_with_agent, wait_for, Controller};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

const MOUNT: &str = "/data/course";

/// A tree: nested directories, a file of `big` pseudo-random bytes (many chunks),
/// small and empty files, a read-only file, and a symlink to /etc.
fn make_tree(root: &Path, big: usize) {
    std::fs::create_dir_all(root.join("week1/notes")).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..big)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("week1/data.bin"), &bytes).unwrap();
    std::fs::write(
        root.join("week1/notes/readme.txt"),
        b"welcome to the course\n",
    )
    .unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
}

/// SHA-256 of every regular file under `root`, by relative path.
fn hashes(root: &Path) -> BTreeMap<String, String> {
    let s = scan::scan(root, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    s.manifest
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                cairn_shared::chunks::manifest::EntryKind::File { .. }
            )
        })
        .map(|e| {
            let bytes = std::fs::read(root.join(&e.path)).unwrap();
            (e.path.clone(), sha256_hex(&bytes))
        })
        .collect()
}

/// Pushes `root` as a new version of dataset `name` over the REST API; returns the
/// version, its manifest id and the manifest.
async fn push(ctl: &Controller, name: &str, root: &Path) -> (u64, ChunkId, Manifest) {
    let s = scan::scan(root, DEFAULT_PARAMS, None, &mut |_| {}).unwrap();
    let http = reqwest::Client::new();
    let mut pack: Vec<u8> = vec![];
    let send = |pack: Vec<u8>| {
        let http = http.clone();
        let (api, token) = (ctl.api.clone(), ctl.admin_token.clone());
        async move {
            let resp = http
                .post(format!("{api}/api/v1/chunks"))
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(pack)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert_eq!(status, 200, "{}", resp.text().await.unwrap());
        }
    };
    for (id, loc) in &s.locations {
        let data = std::fs::read(root.join(&loc.path)).unwrap();
        let bytes = &data[loc.offset as usize..loc.offset as usize + loc.len as usize];
        if pack.len() + bytes.len() + 36 > 16 << 20 {
            send(std::mem::take(&mut pack)).await;
        }
        pack.extend_from_slice(&id.0);
        pack.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        pack.extend_from_slice(bytes);
    }
    if !pack.is_empty() {
        send(pack).await;
    }
    let resp = http
        .post(format!("{}/api/v1/datasets/{name}/versions", ctl.api))
        .bearer_auth(&ctl.admin_token)
        .header("content-type", "application/octet-stream")
        .body(s.manifest.encode())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let version = body["version"]["version"].as_u64().unwrap();
    assert_eq!(body["version"]["manifest"], s.manifest.id().to_hex());
    (version, s.manifest.id(), s.manifest)
}

async fn blueprint(ctl: &Controller, name: &str, dataset: &str, version: u64) {
    let bp = json!({
        "name": name, "image": busybox_image(), "pull": "never", "app": "http", "app_port": 8080,
        "memory_mib": 32, "cpus": 0.1,
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
        "datasets": [{"name": dataset, "version": version, "path": MOUNT}]
    });
    let (status, body) = ctl.send(Method::POST, "/api/v1/blueprints", Some(bp)).await;
    assert_eq!(status, 201, "{body}");
}

async fn launch(ctl: &Controller, token: &str, bp: &str) -> String {
    let (status, inst) = ctl
        .request(
            Some(token),
            Method::POST,
            "/api/v1/instances",
            Some(json!({"blueprint": bp})),
        )
        .await;
    assert_eq!(status, 201, "{inst}");
    inst["id"].as_str().unwrap().to_string()
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap()
}

fn exec(id: &str, script: &str) -> (bool, String) {
    let out = docker(&["exec", &format!("cairn-{id}"), "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mount_of(id: &str) -> Value {
    let out = docker(&["inspect", &format!("cairn-{id}")]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == MOUNT)
        .cloned()
        .expect("the dataset mount")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_see_the_pushed_tree_read_only_and_share_one_copy() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, agent, _host) = controller_with_agent(tmp.path(), "data-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    let src = tmp.path().join("course");
    make_tree(&src, 3 << 20);
    let (version, manifest, _) = push(&ctl, "course", &src).await;
    blueprint(&ctl, "nb", "course", version).await;
    let alice = ctl.user("alice", "user").await;
    let bob = ctl.user("bob", "user").await;
    let a = launch(&ctl, &alice, "nb").await;
    cleanup.0.push(a.clone());
    let b = launch(&ctl, &bob, "nb").await;
    cleanup.0.push(b.clone());
    for (t, id) in [(&alice, &a), (&bob, &b)] {
        ctl.wait_instance(t, id, "running", Duration::from_secs(120))
            .await;
    }

    // Exactly the pushed content: every file hashed inside the container.
    let local = hashes(&src);
    assert_eq!(local.len(), 3);
    for (path, want) in &local {
        let (ok, out) = exec(&a, &format!("sha256sum {MOUNT}/{path}"));
        assert!(ok, "{out}");
        assert!(
            out.starts_with(want.as_str()),
            "{path}: {out} (want {want})"
        );
    }
    let (ok, listing) = exec(&a, &format!("cd {MOUNT} && find . | sort"));
    assert!(ok);
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        vec![
            ".",
            "./empty",
            "./etc-link",
            "./week1",
            "./week1/data.bin",
            "./week1/notes",
            "./week1/notes/readme.txt"
        ]
    );

    // Read-only, even for root in the container.
    let (ok, out) = exec(&a, &format!("touch {MOUNT}/new-file"));
    assert!(!ok);
    assert!(out.contains("Read-only file system"), "{out}");
    let (ok, out) = exec(&a, &format!("echo x >> {MOUNT}/week1/notes/readme.txt"));
    assert!(!ok, "{out}");

    // The symlink resolves inside the container: its own /etc, not the host's.
    let (ok, out) = exec(
        &a,
        &format!("cat {MOUNT}/etc-link/hostname; echo ---; cat /etc/hostname"),
    );
    assert!(ok, "{out}");
    let (via_link, own) = out.split_once("---").unwrap();
    assert_eq!(via_link.trim(), own.trim());

    // One copy on the host, bound read-only and private into both.
    let (ma, mb) = (mount_of(&a), mount_of(&b));
    assert_eq!(ma["Source"], mb["Source"]);
    assert_eq!(ma["RW"], false);
    assert_eq!(ma["Propagation"], "rprivate");
    let tree = agent
        .state_dir
        .join("datasets/trees")
        .join(manifest.to_hex());
    assert_eq!(ma["Source"], tree.display().to_string());
    // The materialiser wrote the symlink as a symlink, never following it.
    let link = tree.join("etc-link");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/etc"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The agent's log lines that say what a fetch took: (bytes fetched, bytes found in
/// the staging tree of an earlier attempt).
fn fetch_counts(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("dataset chunks in place"))
        .map(|l| {
            let field = |name: &str| -> u64 {
                let at = l.find(&format!("{name}=")).unwrap() + name.len() + 1;
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            (field("fetched_bytes"), field("resumed_bytes"))
        })
        .collect()
}

/// Bytes the files under `dir` have on disk (allocated blocks: the staging tree's
/// files are created at full length, sparse, and fill as chunks arrive).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_fetch_fetches_only_the_missing_chunks() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, mut agent, _host) = controller_with_agent(tmp.path(), "data-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    let src = tmp.path().join("course");
    // Big enough that the fetch is caught half-way, small enough for a debug-build
    // scan (FastCDC + BLAKE3 unoptimised run at tens of MB/s).
    make_tree(&src, 96 << 20);
    let (version, manifest, m) = push(&ctl, "big", &src).await;
    let total: u64 = m.unique_chunks().iter().map(|c| u64::from(c.len)).sum();
    blueprint(&ctl, "nb", "big", version).await;
    let alice = ctl.user("alice", "user").await;
    let id = launch(&ctl, &alice, "nb").await;
    cleanup.0.push(id.clone());

    // Kill the agent once part of the chunks are in the tree being assembled.
    let staging = agent
        .state_dir
        .join("datasets/trees")
        .join(format!("{}.partial", manifest.to_hex()));
    wait_for(
        "the fetch to be under way",
        Duration::from_secs(180),
        || {
            let dir = staging.clone();
            async move { allocated(&dir) > total / 10 }
        },
    )
    .await;
    let inst = ctl.instance(&alice, &id).await;
    // Not running yet (the controller may still show "scheduled": the agent's
    // "preparing: datasets" report can trail the chunks arriving).
    assert!(
        inst["state"] == "preparing" || inst["state"] == "scheduled",
        "{inst}"
    );
    agent.kill9();
    assert!(
        staging.exists(),
        "the whole version arrived before the kill; make it bigger"
    );

    agent.start();
    ctl.wait_instance(&alice, &id, "running", Duration::from_secs(180))
        .await;
    let counts = fetch_counts(&agent.log_text());
    let (fetched, resumed) = *counts.last().expect("a fetch was logged");
    // What the first run wrote was checked and kept; only the rest came again.
    assert!(resumed > 0, "nothing of the first run was reused");
    assert!(fetched < total, "fetched {fetched} of {total}");
    assert!(
        fetched + resumed >= total,
        "fetched {fetched} + kept {resumed} of {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupt_on_the_controller_fails_the_launch_naming_it() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent, _host) = controller_with_agent(tmp.path(), "data-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    let src = tmp.path().join("course");
    make_tree(&src, 2 << 20);
    let (version, _, m) = push(&ctl, "rotten", &src).await;
    let bad = m.unique_chunks()[1].id;
    let store = ChunkDir::open(ctl.dir.join("chunks")).unwrap();
    let path = store.path_of(&bad);
    assert!(path.is_file(), "no chunk file at {}", path.display());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    // Store files may be read-only.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, &bytes).unwrap();
    blueprint(&ctl, "nb", "rotten", version).await;
    let alice = ctl.user("alice", "user").await;
    let id = launch(&ctl, &alice, "nb").await;
    cleanup.0.push(id.clone());
    let failed = ctl
        .wait_instance(&alice, &id, "failed", Duration::from_secs(120))
        .await;
    let reason = failed.to_string();
    assert!(
        reason.contains(&format!(
            "dataset rotten@{version}: chunk {bad} is corrupt on the controller"
        )),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_launches_fetch_the_version_once() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, agent, _host) = controller_with_agent(tmp.path(), "data-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    let src = tmp.path().join("course");
    make_tree(&src, 20 << 20);
    let (version, _, m) = push(&ctl, "shared", &src).await;
    blueprint(&ctl, "nb", "shared", version).await;
    let mut users = vec![];
    for n in 0..5 {
        users.push(ctl.user(&format!("user{n}"), "user").await);
    }
    let ids = futures::future::join_all(users.iter().map(|t| launch(&ctl, t, "nb"))).await;
    cleanup.0.extend(ids.iter().cloned());
    for (t, id) in users.iter().zip(&ids) {
        ctl.wait_instance(t, id, "running", Duration::from_secs(180))
            .await;
    }
    let counts = fetch_counts(&agent.log_text());
    assert_eq!(counts.len(), 1, "{counts:?}");
    // One fetch, of every chunk once.
    let unique: u64 = m.unique_chunks().iter().map(|c| u64::from(c.len)).sum();
    assert_eq!(counts[0], (unique, 0));
    let sources: std::collections::HashSet<String> = ids
        .iter()
        .map(|id| mount_of(id)["Source"].to_string())
        .collect();
    assert_eq!(sources.len(), 1);
}
