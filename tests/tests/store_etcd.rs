//! The etcd store engine against a real etcd (Debian's `etcd-server`): the same
//! conformance suite as sled, TLS with client certificates, a foreign writer fenced
//! off, an unreachable cluster reported, and a site moved from sled to etcd with
//! `store export` / `store import`.
//!
//! The end-to-end tests of enrolment, launches and controller restarts run on etcd
//! too: `CAIRN_TEST_STORE=etcd cargo test -p cairn-tests --test link --test instances
//! --test instances_recovery` (README's test command and CI do).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_controller::config::EtcdConfig;
use cairn_controller::store::{conformance, etcd::EtcdEngine, Store, Tree};
use cairn_tests::cluster::{Controller, ControllerOptions};
use cairn_tests::etcd::Etcd;
use cairn_tests::require::{require, Need};

fn config(etcd: &Etcd, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig {
        endpoints: vec![etcd.url.clone()],
        prefix: prefix.into(),
        timeout_secs: 5,
        ..Default::default()
    };
    if let Some(tls) = &etcd.tls {
        c.ca_file = Some(tls.ca.clone());
        c.cert_file = Some(tls.client_cert.clone());
        c.key_file = Some(tls.client_key.clone());
    }
    c
}

fn open(c: &EtcdConfig) -> Store {
    let engine = EtcdEngine::open(c).unwrap_or_else(|e| panic!("opening etcd: {e}"));
    Store::with_engine(Arc::new(engine)).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_store_conformance_suite() {
    if !require(&[Need::Etcd]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&tmp.path().join("etcd"));
    let c = config(&etcd, "/conformance/");
    let started = Instant::now();
    conformance::run(|| open(&c)).await;
    eprintln!("etcd conformance: {:.2} s", started.elapsed().as_secs_f64());
    // Nothing leaked outside the prefix, and the prefix holds only the schema stamp
    // and the probe (the suite removes what it wrote).
    let other = open(&config(&etcd, "/other/"));
    assert!(other.all::<u32>(Tree::Hosts).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_writer_is_fenced_off_and_nothing_is_overwritten() {
    if !require(&[Need::Etcd]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&tmp.path().join("etcd"));
    let c = config(&etcd, "/fence/");
    let a = open(&c);
    a.put(Tree::Blueprints, "bp", &1u32).unwrap();
    a.flush().await.unwrap();
    let (_, seen) = a
        .get_versioned::<u32>(Tree::Blueprints, "bp")
        .unwrap()
        .unwrap();

    // Another process writes the same key behind A's back.
    let b = open(&c);
    b.put(Tree::Blueprints, "bp", &2u32).unwrap();
    b.flush().await.unwrap();

    // A's check passes against its own view, but etcd's compare refuses it at flush:
    // B's write stands, and A takes no more writes.
    a.transaction()
        .expect(Tree::Blueprints, "bp", Some(seen))
        .put(Tree::Blueprints, "bp", &3u32)
        .unwrap()
        .commit()
        .unwrap();
    let e = a.flush().await.unwrap_err().to_string();
    assert!(e.contains("another writer"), "{e}");
    let e = a
        .put(Tree::Blueprints, "other", &4u32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("restart the controller"), "{e}");
    drop((a, b));
    let fresh = open(&c);
    assert_eq!(fresh.get::<u32>(Tree::Blueprints, "bp").unwrap(), Some(2));
    assert_eq!(fresh.get::<u32>(Tree::Blueprints, "other").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_clear_error_when_etcd_is_away() {
    if !require(&[Need::Etcd]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start_tls(&tmp.path().join("etcd"));
    let c = config(&etcd, "/tls/");
    {
        let s = open(&c);
        s.put(Tree::Users, "ann", &"over TLS".to_string()).unwrap();
        s.flush().await.unwrap();
    }
    assert_eq!(
        open(&c)
            .get::<String>(Tree::Users, "ann")
            .unwrap()
            .as_deref(),
        Some("over TLS")
    );
    // Without the client certificate the server refuses the connection.
    let mut no_client = c.clone();
    no_client.cert_file = None;
    no_client.key_file = None;
    let e = EtcdEngine::open(&no_client).unwrap_err().to_string();
    assert!(e.contains("etcd"), "{e}");

    // A cluster that is not there: an error naming it, within the timeout.
    let away = EtcdConfig {
        endpoints: vec![format!(
            "http://127.0.0.1:{}",
            cairn_tests::cluster::free_tcp_port()
        )],
        timeout_secs: 2,
        ..Default::default()
    };
    let started = Instant::now();
    let e = EtcdEngine::open(&away).unwrap_err().to_string();
    assert!(e.contains(&away.endpoints[0]), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// A site on sled moves to etcd: stop, export, point `[store]` at etcd, import, start;
/// users, blueprints and join tokens are all there, and the controller runs on etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_moves_from_sled_to_etcd_with_export_and_import() {
    if !require(&[Need::Etcd]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::init(
        tmp.path(),
        &ControllerOptions {
            etcd: false,
            ..Default::default()
        },
    );
    ctl.start().await;
    let ann = ctl.user("ann", "user").await;
    let bp = ctl
        .blueprint(serde_json::json!({
            "name": "moved", "image": "busybox:latest", "pull": "never", "app": "http",
            "app_port": 8080, "memory_mib": 32, "cpus": 0.1, "max_lifetime_secs": 600,
        }))
        .await;
    let token = ctl.token("1h", 3);
    let (code, before) = ctl.get("/api/v1/blueprints").await;
    assert_eq!(code, 200, "{before}");
    assert!(ctl.terminate().success());

    let dump = tmp.path().join("dump.jsonl");
    let out = ctl.cli(&["store", "export", "--out", dump.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("from the sled store"), "{said}");

    let etcd = Etcd::start(&tmp.path().join("etcd"));
    ctl.append_config(&etcd.store_toml("/moved/"));
    let out = ctl.cli(&["store", "import", "--in", dump.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("into the etcd store"), "{said}");
    // A second import refuses: the store is no longer empty.
    let out = ctl.cli(&["store", "import", "--in", dump.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("import only into an empty store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The sled directory goes away: whatever the controller reads now is etcd's.
    std::fs::rename(ctl.dir.join("state"), tmp.path().join("old-state")).unwrap();
    ctl.etcd = Some(etcd);
    ctl.start().await;
    assert!(
        ctl.log_text().contains("etcd store loaded"),
        "{}",
        ctl.log_text()
    );
    let (code, after) = ctl.get("/api/v1/blueprints").await;
    assert_eq!(code, 200);
    assert_eq!(after, before, "the same blueprints");
    assert_eq!(bp["name"], "moved");
    let (code, me) = ctl.get_with("/api/v1/me", Some(&ann)).await;
    assert_eq!(code, 200, "ann's API token still works: {me}");
    assert_eq!(me["user"], "ann", "{me}");
    // The join token made on sled enrols an agent against the controller on etcd.
    let agent = cairn_tests::cluster::Agent::new(tmp.path(), "a1");
    let host = agent.join_ok(&ctl, &token, &[]);
    assert!(!host.is_empty());
}
