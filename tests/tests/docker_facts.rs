//! The agent's Docker facts come from a real Docker Engine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use cairn_agent::facts::{FactsSource, HostFactsSource};
use cairn_shared::resources::RuntimeFacts;
use cairn_shared::validate::Validate;
use cairn_tests::docker::{docker, ContainerGuard};
use cairn_tests::images::busybox_image;
use cairn_tests::require::{require, Need};

#[tokio::test]
async fn facts_list_labelled_containers_and_images_from_the_engine() {
    if !require(&[Need::Docker]) {
        return;
    }
    let image = busybox_image();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let instance = format!("test-{}-{nonce:08x}", std::process::id());
    // Guards first, by name: a `docker run` that fails after creating the container
    // still leaves nothing behind.
    let labelled_name = format!("cairn-facts-{instance}");
    let unlabelled_name = format!("cairn-facts-plain-{instance}");
    let _guard = ContainerGuard(labelled_name.clone());
    let _guard2 = ContainerGuard(unlabelled_name.clone());
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &labelled_name,
        "--label",
        &format!("cairn.instance={instance}"),
        "--label",
        "cairn.owner=alice",
        "--label",
        "other=ignored",
        &image,
        "sleep",
        "300",
    ]);
    let unlabelled = docker(&[
        "run",
        "-d",
        "--name",
        &unlabelled_name,
        &image,
        "sleep",
        "300",
    ]);

    let tmp = tempfile::tempdir().unwrap();
    let facts = HostFactsSource::new(Default::default(), PathBuf::from(tmp.path())).await;
    let RuntimeFacts::Docker(d) = facts.runtime().await else {
        panic!("Docker should be available")
    };
    RuntimeFacts::Docker(d.clone()).validate().unwrap();
    assert!(!d.engine_version.is_empty());
    assert!(!d.data_root.is_empty());
    let c = d
        .containers
        .iter()
        .find(|c| c.id == id)
        .expect("labelled container listed");
    assert_eq!(c.name, labelled_name);
    assert_eq!(c.image, image);
    assert_eq!(c.state, "running");
    assert_eq!(c.labels.get("cairn.instance"), Some(&instance));
    assert_eq!(
        c.labels.get("cairn.owner").map(String::as_str),
        Some("alice")
    );
    assert!(
        !c.labels.contains_key("other"),
        "only cairn.* labels are reported"
    );
    assert!(
        d.containers.iter().all(|c| c.id != unlabelled),
        "unlabelled containers are not reported"
    );
    assert!(
        d.images.iter().any(|i| i.tags.contains(&image)),
        "{image} not in {:?}",
        d.images
    );
    assert!(d.image_count as usize >= d.images.len());

    let cap = facts.capacity().await;
    assert!(cap.cpus > 0 && cap.memory_total_bytes > 0);
    assert!(
        cap.docker_disk.is_some_and(|x| x.total_bytes > 0),
        "{cap:?}"
    );
    assert!(cap.state_disk.is_some_and(|x| x.total_bytes > 0), "{cap:?}");
    cap.validate().unwrap();
}
