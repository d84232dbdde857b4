//! Users' volumes end to end on a real Docker Engine: files written in an instance
//! on host A come back byte for byte (modes, mtimes, symlinks, odd names, a large
//! file) in the next instance pinned to host B; a second writer is refused; a
//! save that would empty the volume is halted and the head kept; an older
//! snapshot can be made the head again and downloaded as a tar; a save over the
//! quota keeps the instance `stopping` with the reason and the files, and goes
//! through once room is made; an instance cut off from the controller past the
//! lost threshold is `unreachable`, not failed, resumes when its host returns,
//! and — when its owner relaunched elsewhere meanwhile — its late save becomes a
//! conflict snapshot beside the head.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use cairn_tests::cluster::{start_agent_labelled, wait_for, Controller, ControllerOptions};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::require::{require, Need};
use cairn_tests::volumes::{blueprint, exec, launch, launched, volume, WORK};

/// Every entry under the volume as seen in the container: kind, size, mode,
/// mtime, owner, and content hash or link target.
fn listing(id: &str) -> BTreeMap<String, String> {
    let out = exec(
        id,
        &format!(
            "cd {WORK} && find . -mindepth 1 | sort | while IFS= read -r p; do \
               if [ -L \"$p\" ]; then echo \"$p|link|$(readlink \"$p\")|$(stat -c '%u:%g' \"$p\")\"; \
               elif [ -d \"$p\" ]; then echo \"$p|dir|$(stat -c '%a %Y %u:%g' \"$p\")\"; \
               else echo \"$p|file|$(stat -c '%s %a %Y %u:%g' \"$p\")|$(sha256sum < \"$p\" | cut -c1-64)\"; fi; \
             done"
        ),
    );
    out.lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(p, rest)| (p.to_string(), rest.to_string()))
        .collect()
}

/// What the test writes in a fresh volume: a 100 MiB file, 300 small ones in
/// nested directories, a symlink, a name with spaces and unicode, odd modes and
/// an old mtime.
const WRITE_HOME: &str = "cd /home/user/work \
    && dd if=/dev/urandom of=big.bin bs=1048576 count=100 2>/dev/null \
    && mkdir -p notes/deep \
    && i=0; while [ $i -lt 300 ]; do echo \"line $i of the notes\" > notes/deep/n$i.txt; i=$((i+1)); done \
    && echo 'print(1)' > 'my notebook — été.py' \
    && ln -s notes/deep/n1.txt latest \
    && chmod 0640 'my notebook — été.py' && chmod 0750 notes \
    && touch -d '2020-01-02 03:04:05' notes/deep/n7.txt \
    && chown -R 1000:100 .";

async fn stop_and_wait(ctl: &Controller, token: &str, id: &str) {
    ctl.stop_instance(token, id, Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_follow_the_user_to_another_host_byte_for_byte() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let a = start_agent_labelled(&ctl, tmp.path(), "vol-a", "site=a").await;
    let b = start_agent_labelled(&ctl, tmp.path(), "vol-b", "site=b").await;
    let mut cleanup = InstanceContainers(vec![]);
    blueprint(&ctl, "nb-a", Some("a"), 5.0, "1000:100").await;
    blueprint(&ctl, "nb-b", Some("b"), 5.0, "1000:100").await;
    let alice = ctl.user("alice", "user").await;

    let first = launched(&ctl, &alice, "nb-a", "work").await;
    cleanup.0.push(first.clone());
    ctl.wait_instance(&alice, &first, "running", Duration::from_secs(120))
        .await;
    // A new volume is an empty directory the container user owns.
    assert_eq!(
        exec(&first, &format!("stat -c '%u:%g' {WORK}")).trim(),
        "1000:100"
    );
    exec(&first, WRITE_HOME);
    let before = listing(&first);
    assert_eq!(before.len(), 305, "{before:?}");

    // One writer at a time.
    let (status, refused) = launch(&ctl, &alice, "nb-b", "work").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "volume_in_use");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&first),
        "{refused}"
    );

    stop_and_wait(&ctl, &alice, &first).await;
    let v = volume(&ctl, &alice, "work").await;
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["files"], 303, "files and the symlink: {v}");
    assert!(
        v["in_use_by"].is_null(),
        "the final save releases the lease: {v}"
    );
    // The host copy is gone from the working area once the save was acknowledged.
    let work_a = a.state_dir.join("volumes/work").join(&first);
    assert!(!work_a.exists(), "{}", work_a.display());

    let second = launched(&ctl, &alice, "nb-b", "work").await;
    cleanup.0.push(second.clone());
    ctl.wait_instance(&alice, &second, "running", Duration::from_secs(180))
        .await;
    assert_eq!(
        ctl.instance(&alice, &second).await["host"].as_str(),
        Some(b.host_id().as_str())
    );
    let after = listing(&second);
    assert_eq!(after, before, "the files on host B are the files of host A");
    let out = exec(
        &second,
        &format!("stat -c '%u:%g' {WORK}/notes/deep/n3.txt"),
    );
    assert_eq!(out.trim(), "1000:100");
    stop_and_wait(&ctl, &alice, &second).await;

    // Back on A with nothing changed on B: A's kept copy is the head, taken whole.
    let third = launched(&ctl, &alice, "nb-a", "work").await;
    cleanup.0.push(third.clone());
    ctl.wait_instance(&alice, &third, "running", Duration::from_secs(120))
        .await;
    assert_eq!(listing(&third), before);
    assert!(
        a.log_text()
            .contains("volume restored from the copy kept on this host"),
        "{}",
        a.log_text()
    );
    let v = volume(&ctl, &alice, "work").await;
    assert_eq!(
        v["snapshots"].as_array().unwrap().len(),
        1,
        "saves of unchanged files make no snapshot: {v}"
    );
    stop_and_wait(&ctl, &alice, &third).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptying_save_is_halted_and_older_snapshots_come_back() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.set_config("quota_mib", "64");
    ctl.set_config("deletion_grace_secs", "1");
    ctl.start().await;
    let agent = start_agent_labelled(&ctl, tmp.path(), "vol-h", "site=h").await;
    let mut cleanup = InstanceContainers(vec![]);
    blueprint(&ctl, "nb", None, 0.0, "1000:100").await;
    let bob = ctl.user("bob", "user").await;

    let one = launched(&ctl, &bob, "nb", "home").await;
    cleanup.0.push(one.clone());
    ctl.wait_instance(&bob, &one, "running", Duration::from_secs(120))
        .await;
    exec(
        &one,
        // As the container's user would (restores give every file to it).
        &format!("cd {WORK} && for i in 1 2 3 4 5 6 7 8 9 10; do echo $i > f$i; done && chown -R 1000:100 ."),
    );
    let kept = listing(&one);
    stop_and_wait(&ctl, &bob, &one).await;

    // Everything deleted: the save is kept aside, halted, and the head stays.
    let two = launched(&ctl, &bob, "nb", "home").await;
    cleanup.0.push(two.clone());
    ctl.wait_instance(&bob, &two, "running", Duration::from_secs(120))
        .await;
    assert_eq!(listing(&two), kept);
    exec(&two, &format!("rm -rf {WORK}/*"));
    stop_and_wait(&ctl, &bob, &two).await;
    let v = volume(&ctl, &bob, "home").await;
    let snaps = v["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 2, "{v}");
    assert_eq!(snaps[1]["status"], "halted", "{v}");
    assert_eq!(snaps[1]["files"], 0);
    assert!(
        snaps[1]["reason"].as_str().unwrap().contains("empty"),
        "{v}"
    );
    assert_eq!(snaps[0]["head"], true);
    assert_eq!(v["attention"], 1);
    let (first_id, halted_id) = (
        snaps[0]["id"].as_u64().unwrap(),
        snaps[1]["id"].as_u64().unwrap(),
    );

    // The next launch gets the head, not the emptied tree.
    let three = launched(&ctl, &bob, "nb", "home").await;
    cleanup.0.push(three.clone());
    ctl.wait_instance(&bob, &three, "running", Duration::from_secs(120))
        .await;
    assert_eq!(listing(&three), kept);
    // Making a snapshot the head is refused while an instance writes the volume.
    let (status, body) = ctl
        .request(
            Some(&bob),
            Method::POST,
            "/api/v1/volumes/home/head",
            Some(json!({"snapshot": halted_id})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "volume_in_use");
    stop_and_wait(&ctl, &bob, &three).await;

    // Confirmed: the emptied tree becomes the head; then the first comes back.
    for (snapshot, files) in [(halted_id, 0), (first_id, 10)] {
        let (status, v) = ctl
            .request(
                Some(&bob),
                Method::POST,
                "/api/v1/volumes/home/head",
                Some(json!({"snapshot": snapshot})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["files"], files, "{v}");
    }
    let four = launched(&ctl, &bob, "nb", "home").await;
    cleanup.0.push(four.clone());
    ctl.wait_instance(&bob, &four, "running", Duration::from_secs(120))
        .await;
    assert_eq!(listing(&four), kept);

    // A snapshot downloads as a tar with every file.
    let http = reqwest::Client::new();
    let tar = http
        .get(format!(
            "{}/api/v1/volumes/home/snapshots/{first_id}/tar",
            ctl.api
        ))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(tar.status(), 200);
    let bytes = tar.bytes().await.unwrap();
    let mut names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(names.contains(&"f10".to_string()), "{names:?}");

    // Over the quota (64 MiB): the save fails, the instance stays stopping with
    // the reason, the files stay on the host; made room, the save goes through.
    exec(
        &four,
        &format!("dd if=/dev/urandom of={WORK}/huge bs=1048576 count=80 2>/dev/null"),
    );
    let (status, _) = ctl
        .request(
            Some(&bob),
            Method::DELETE,
            &format!("/api/v1/instances/{four}"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    wait_for(
        "the save to fail over quota",
        Duration::from_secs(60),
        || async {
            let i = ctl.instance(&bob, &four).await;
            let reason = i["state_reason"].as_str().unwrap_or("");
            i["state"] == "stopping" && reason.contains("save failed") && reason.contains("quota")
        },
    )
    .await;
    let copy = agent
        .state_dir
        .join("volumes/work")
        .join(&four)
        .join("files");
    assert!(copy.join("huge").is_file(), "the files stay on the host");
    std::fs::remove_file(copy.join("huge")).unwrap();
    ctl.wait_instance(&bob, &four, "stopped", Duration::from_secs(120))
        .await;
    let v = volume(&ctl, &bob, "home").await;
    assert_eq!(v["files"], 10, "{v}");

    // Bob asks for his account's deletion: after the grace, his volume goes
    // with the account.
    let (_, vols) = ctl.get("/api/v1/volumes?all=true").await;
    assert!(vols.to_string().contains("\"bob\""), "{vols}");
    let (s, b) = ctl
        .request(
            Some(&bob),
            reqwest::Method::POST,
            "/api/v1/users/bob/deletion",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    wait_for(
        "Bob's account and volume deleted",
        Duration::from_secs(30),
        || {
            let ctl = &ctl;
            async move {
                let (_, vols) = ctl.get("/api/v1/volumes?all=true").await;
                let (_, users) = ctl.get("/api/v1/users").await;
                !vols.to_string().contains("\"bob\"") && !users.to_string().contains("\"bob\"")
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_instance_is_unreachable_then_resumes_or_its_late_save_is_a_conflict() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = ControllerOptions {
        lost_after: "4s",
        ..Default::default()
    };
    let mut ctl = Controller::init(tmp.path(), &opts);
    ctl.start().await;
    let a = start_agent_labelled(&ctl, tmp.path(), "part-a", "site=a").await;
    let _b = start_agent_labelled(&ctl, tmp.path(), "part-b", "site=b").await;
    let mut cleanup = InstanceContainers(vec![]);
    blueprint(&ctl, "nb-a", Some("a"), 5.0, "1000:100").await;
    blueprint(&ctl, "nb-b", Some("b"), 5.0, "1000:100").await;
    let carol = ctl.user("carol", "user").await;
    let pid = a.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };

    let old = launched(&ctl, &carol, "nb-a", "lab").await;
    cleanup.0.push(old.clone());
    ctl.wait_instance(&carol, &old, "running", Duration::from_secs(120))
        .await;
    exec(&old, &format!("echo first > {WORK}/a.txt"));

    // A stall past the lost threshold: unreachable, not failed; it resumes.
    signal("-STOP");
    ctl.wait_instance(&carol, &old, "unreachable", Duration::from_secs(60))
        .await;
    signal("-CONT");
    ctl.wait_instance(&carol, &old, "running", Duration::from_secs(60))
        .await;
    let i = ctl.instance(&carol, &old).await;
    assert_eq!(i["state_reason"], "its host is back", "{i}");

    // Cut off again; the owner relaunches elsewhere: the lease moves.
    signal("-STOP");
    ctl.wait_instance(&carol, &old, "unreachable", Duration::from_secs(60))
        .await;
    let new = launched(&ctl, &carol, "nb-b", "lab").await;
    cleanup.0.push(new.clone());
    ctl.wait_instance(&carol, &new, "running", Duration::from_secs(120))
        .await;
    // The old copy goes on changing while nobody can see it.
    exec(&old, &format!("echo late > {WORK}/a.txt"));
    signal("-CONT");
    ctl.wait_instance(&carol, &old, "stopped", Duration::from_secs(120))
        .await;
    let v = volume(&ctl, &carol, "lab").await;
    let snaps = v["snapshots"].as_array().unwrap();
    let conflict = snaps
        .iter()
        .find(|s| s["status"] == "conflict")
        .unwrap_or_else(|| panic!("a conflict snapshot: {v}"));
    assert_eq!(conflict["head"], false);
    assert_eq!(v["in_use_by"], new.as_str(), "{v}");
    // The conflict's files are there to take.
    let http = reqwest::Client::new();
    let tar = http
        .get(format!(
            "{}/api/v1/volumes/lab/snapshots/{}/tar",
            ctl.api, conflict["id"]
        ))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut found = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == "a.txt" {
            std::io::Read::read_to_string(&mut e, &mut found).unwrap();
        }
    }
    assert_eq!(found, "late\n");
    // The new instance started from the head (nothing was saved before the cut:
    // no checkpoint was due), untouched by the late save.
    assert_eq!(exec(&new, &format!("ls -A {WORK}")), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_container_dies_keeps_its_lease_until_its_files_are_saved() {
    if !require(&[Need::Docker]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(tmp.path(), &ControllerOptions::default());
    ctl.start().await;
    let _agent = start_agent_labelled(&ctl, tmp.path(), "dies", "site=d").await;
    let mut cleanup = InstanceContainers(vec![]);
    blueprint(&ctl, "nb", None, 0.0, "0:0").await;
    let gus = ctl.user("gus", "user").await;
    let one = launched(&ctl, &gus, "nb", "home").await;
    cleanup.0.push(one.clone());
    ctl.wait_instance(&gus, &one, "running", Duration::from_secs(120))
        .await;
    exec(
        &one,
        &format!(
            "dd if=/dev/urandom of={WORK}/big bs=1048576 count=60 2>/dev/null && echo last > {WORK}/last.txt"
        ),
    );
    // The container dies on its own: the instance fails at once, its files are
    // saved after.
    let out = std::process::Command::new("docker")
        .args(["kill", &format!("cairn-{one}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    ctl.wait_instance(&gus, &one, "failed", Duration::from_secs(60))
        .await;
    // A relaunch right away waits for that save (409 volume_in_use), then gets
    // the files it saved, not the older head.
    let two = std::sync::Mutex::new(None::<String>);
    wait_for("the relaunch", Duration::from_secs(60), || async {
        let (status, body) = launch(&ctl, &gus, "nb", "home").await;
        if status == 201 {
            *two.lock().unwrap() = body["id"].as_str().map(str::to_string);
            return true;
        }
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "volume_in_use", "{body}");
        false
    })
    .await;
    let two = two.into_inner().unwrap().unwrap();
    cleanup.0.push(two.clone());
    ctl.wait_instance(&gus, &two, "running", Duration::from_secs(120))
        .await;
    assert_eq!(exec(&two, &format!("cat {WORK}/last.txt")), "last\n");
    let v = volume(&ctl, &gus, "home").await;
    assert!(
        v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "saved"),
        "no conflict: {v}"
    );
    assert_eq!(v["files"], 2, "{v}");
}
