//! The test OpenStack and its hypervisor harness, end to end: a server created as the
//! unprivileged `cairn` user over plain HTTP goes ACTIVE on Nova's fake driver, the
//! hypervisor's boot callback gets it with its exact user_data, and deleting it drops
//! the callback's handle and makes Nova answer 404. Prints the measurements.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_tests::openstack::{
    base64_encode, Hypervisor, OpenStack, Server, COMPUTE_HOST, COMPUTE_URL, FLAVOR_ID, IMAGE_AGENT,
};
use cairn_tests::require::{require, Need};

/// Counts its drops: stands in for a VM the test "booted".
struct FakeVm(Arc<AtomicUsize>);

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_cairn_user_boots_on_the_harness_and_goes_away_when_deleted() {
    if !require(&[Need::Docker, Need::OpenStack]) {
        return;
    }
    let os = OpenStack::start().await.expect("start the test OpenStack");
    let mem = os.memory().expect("the container's memory");
    eprintln!(
        "openstack: ready {:.1} s after docker run; {} processes, RSS {} MiB, PSS {} MiB",
        os.ready_after.as_secs_f64(),
        mem.processes,
        mem.rss_bytes >> 20,
        mem.pss_bytes >> 20
    );
    let yaml = os.clouds_yaml();
    assert!(
        yaml.contains("cairn-test:") && yaml.contains("username: \"cairn\""),
        "{yaml}"
    );

    let seen: Arc<Mutex<Vec<Server>>> = Arc::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let hv = {
        let (seen, dropped) = (seen.clone(), dropped.clone());
        Hypervisor::start(
            &os,
            Box::new(move |s: &Server| {
                seen.lock().unwrap().push(s.clone());
                Ok(Box::new(FakeVm(dropped.clone())))
            }),
        )
    };

    // As the controller will: a token of `cairn`, then POST /servers with user_data.
    let http = reqwest::Client::new();
    let token = os.user_token().await.expect("a token of the cairn user");
    let image = os
        .image_id(IMAGE_AGENT)
        .await
        .expect("the agent image's id");
    let user_data = "#cloud-config\nwrite_files:\n- path: /etc/cairn/agent.toml\n  content: |\n    enrol = \"tok-€-1\"\n";
    let body = serde_json::json!({"server": {
        "name": "cairn-harness-1",
        "imageRef": image,
        "flavorRef": FLAVOR_ID,
        "networks": "none",
        "user_data": base64_encode(user_data.as_bytes()),
        "metadata": {"cairn-host": "h-1"},
    }});
    let posted = Instant::now();
    let posted_at = SystemTime::now();
    let resp = http
        .post(format!("{COMPUTE_URL}/servers"))
        .header("X-Auth-Token", &token)
        .header("OpenStack-API-Version", "compute 2.37")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let created: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{created}");
    let id = created["server"]["id"].as_str().unwrap().to_string();

    let times = hv
        .wait_booted(&id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nOpenStack log:\n{}", os.log_tail()));
    let booted_after = posted.elapsed();
    let active_after = times
        .active_seen
        .duration_since(posted_at)
        .unwrap_or_default();
    eprintln!(
        "openstack: POST /servers -> ACTIVE seen {:.2} s, VM booted {:.2} s",
        active_after.as_secs_f64(),
        booted_after.as_secs_f64(),
    );
    assert!(
        times.launched_at.is_some() && times.created.is_some(),
        "{times:?}"
    );
    assert_eq!(hv.booted(), vec![id.clone()]);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "booted once");
        let s = &seen[0];
        assert_eq!(s.id, id);
        assert_eq!(s.name, "cairn-harness-1");
        assert_eq!(s.status, "ACTIVE");
        assert_eq!(
            s.user_data.as_deref(),
            Some(user_data),
            "the exact user_data"
        );
        assert_eq!(s.user_data_raw.as_deref(), Some(user_data.as_bytes()));
        assert_eq!(s.image_name, IMAGE_AGENT);
        assert_eq!(
            s.metadata.get("cairn-host").map(String::as_str),
            Some("h-1")
        );
        assert_eq!(s.host.as_deref(), Some(COMPUTE_HOST));
    }
    let listed = os.servers().await.unwrap();
    assert!(listed.iter().any(|s| s.id == id), "{listed:?}");
    let one = os
        .server(&id)
        .await
        .unwrap()
        .expect("Nova knows the server");
    assert_eq!(one.user_data.as_deref(), Some(user_data));
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    let same = hv.with_vm(&id, |vm: &FakeVm| Ok(Arc::ptr_eq(&vm.0, &dropped)));
    assert!(same.unwrap(), "the handle the callback returned");
    assert!(
        hv.with_vm(&id, |_: &String| Ok(())).is_err(),
        "not a String"
    );

    // Delete as the user; the handle is dropped and Nova forgets the server.
    let deleted = Instant::now();
    let resp = http
        .delete(format!("{COMPUTE_URL}/servers/{id}"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    hv.wait_gone(&id, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the VM handle was dropped"
    );
    assert!(hv.booted().is_empty());
    // The user sees 404 once Nova has finished (the fake driver destroys at once).
    loop {
        let code = http
            .get(format!("{COMPUTE_URL}/servers/{id}"))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .unwrap()
            .status();
        if code == 404 {
            break;
        }
        assert_eq!(code, 200);
        assert!(
            deleted.elapsed() < Duration::from_secs(60),
            "server {id} still there 60 s after delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(os.server(&id).await.unwrap().is_none());
    eprintln!(
        "openstack: DELETE -> 404 {:.2} s; {} polls; memory now PSS {} MiB",
        deleted.elapsed().as_secs_f64(),
        hv.polls(),
        os.memory().map(|m| m.pss_bytes >> 20).unwrap_or(0)
    );
    assert!(hv.failures().is_empty());
    drop(hv);
    drop(os);
}
