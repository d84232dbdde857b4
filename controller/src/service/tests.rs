//! The rules of every operation at each role's edge: owner, other user, admin,
//! anonymous, disabled account.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cairn_shared::chunks::ChunkId;
use cairn_shared::workload::DatasetSpec;

use super::testing::World;
use super::{Caller, Kind, ServiceError};
use crate::blueprints::BlueprintInput;
use crate::datasets::lookup::{DatasetLookup, LookupError};
use crate::service::join_tokens::CreateToken;
use crate::users::Role;
use cairn_api::instances::InstanceState;

fn kind<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> Kind {
    r.expect_err("expected a refusal").kind
}

fn notebook(name: &str, enabled: bool) -> BlueprintInput {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "image": "example/notebook:1",
        "app": "jupyter",
        "app_port": 8888,
        "memory_mib": 64,
        "pull": "never",
        "max_instances_per_user": 2,
        "enabled": enabled,
    }))
    .unwrap()
}

#[tokio::test]
async fn anonymous_callers_are_refused_everything() {
    let w = World::new().await;
    let s = &w.service;
    let nobody = Caller::anonymous();
    assert_eq!(kind(s.me(&nobody)), Kind::Unauthenticated);
    assert_eq!(kind(s.launch(&nobody, "py").await), Kind::Unauthenticated);
    assert_eq!(kind(s.list_instances(&nobody, true)), Kind::Unauthenticated);
    assert_eq!(kind(s.instance(&nobody, "i-x")), Kind::Unauthenticated);
    assert_eq!(kind(s.list_blueprints(&nobody)), Kind::Unauthenticated);
    assert_eq!(kind(s.list_users(&nobody)), Kind::Unauthenticated);
    assert_eq!(kind(s.list_hosts(&nobody)), Kind::Unauthenticated);
    assert_eq!(kind(s.list_join_tokens(&nobody)), Kind::Unauthenticated);
    assert_eq!(kind(s.list_images(&nobody)), Kind::Unauthenticated);
    assert_eq!(kind(s.logout(&nobody).await), Kind::Unauthenticated);
    assert_eq!(kind(s.metrics(&nobody)), Kind::Unauthenticated);
    // Health is for anyone, without the counts.
    let h = s.health(&nobody).await.unwrap();
    assert_eq!((h.status.as_str(), h.store.as_str()), ("ok", "writable"));
    assert!(h.hosts.is_none() && h.instances.is_none());
    let h = s.health(&w.admin).await.unwrap();
    assert!(h.hosts.is_some() && h.instances.is_some());
    assert!(s.health(&w.alice).await.unwrap().instances.is_none());
}

#[tokio::test]
async fn disabled_accounts_cannot_log_in_and_their_tokens_stop_working() {
    let w = World::new().await;
    let s = &w.service;
    let e = s.login("carol", "password-1", "", None).await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Unauthenticated, "login_failed"));
    // Same answer as a wrong password: the form does not tell which.
    let wrong = s.login("alice", "nope-nope", "", None).await.unwrap_err();
    assert_eq!(wrong.message, e.message);
    let t = s.login("bob", "password-1", "", None).await.unwrap();
    s.set_user_disabled(&w.admin, "bob", true).await.unwrap();
    assert_eq!(kind(s.authenticate(&t.token)), Kind::Unauthenticated);
    s.set_user_disabled(&w.admin, "bob", false).await.unwrap();
    assert!(s.authenticate(&t.token).is_ok());
    // Bounds are checked before anything else.
    let long = "x".repeat(65);
    assert_eq!(kind(s.login(&long, "p", "", None).await), Kind::Invalid);
}

#[tokio::test]
async fn users_cannot_do_what_admins_do() {
    let w = World::new().await;
    let s = &w.service;
    let u = &w.alice;
    assert_eq!(
        kind(s.create_blueprint(u, &notebook("py", true)).await),
        Kind::Forbidden
    );
    // A blueprint she cannot see is not found; one she sees but may not change
    // is forbidden.
    assert_eq!(
        kind(s.update_blueprint(u, "py", &notebook("py", true)).await),
        Kind::NotFound
    );
    s.create_blueprint(&w.admin, &notebook("py", true))
        .await
        .unwrap();
    assert_eq!(
        kind(s.update_blueprint(u, "py", &notebook("py", true)).await),
        Kind::Forbidden
    );
    assert_eq!(
        kind(s.set_blueprint_enabled(u, "py", false).await),
        Kind::Forbidden
    );
    assert_eq!(kind(s.refresh_blueprint(u, "py").await), Kind::Forbidden);
    assert_eq!(kind(s.blueprint_revisions(u, "py")), Kind::Forbidden);
    assert_eq!(kind(s.list_users(u)), Kind::Forbidden);
    assert_eq!(
        kind(s.create_user(u, "dave", "password-1", Role::Admin).await),
        Kind::Forbidden
    );
    assert_eq!(
        kind(s.set_user_disabled(u, "bob", true).await),
        Kind::Forbidden
    );
    assert_eq!(kind(s.list_hosts(u)), Kind::Forbidden);
    assert_eq!(kind(s.drain_host(u, "h-x", None).await), Kind::Forbidden);
    assert_eq!(kind(s.autoscaler(u)), Kind::Forbidden);
    let req = CreateToken {
        ttl_secs: 60,
        uses: 1,
        description: String::new(),
    };
    assert_eq!(kind(s.create_join_token(u, &req).await), Kind::Forbidden);
    assert_eq!(kind(s.list_images(u)), Kind::Forbidden);
    assert_eq!(kind(s.remove_image(u, "abc").await), Kind::Forbidden);
    assert_eq!(kind(s.extend(u, "i-x", 60).await), Kind::Forbidden);
    assert_eq!(kind(s.metrics(u)), Kind::Forbidden);
    // The same calls pass for the admin.
    assert!(s.create_join_token(&w.admin, &req).await.is_ok());
    assert!(s.list_users(&w.admin).is_ok());
    let text = s.metrics(&w.admin).unwrap();
    assert!(text.contains("# TYPE cairn_hosts gauge"), "{text}");
}

#[tokio::test]
async fn instances_belong_to_their_owner_and_admins() {
    let w = World::new().await;
    let s = &w.service;
    s.create_blueprint(&w.admin, &notebook("py", true))
        .await
        .unwrap();
    let mine = s.launch(&w.alice, "py").await.unwrap();
    let id = mine.id.to_string();
    assert_eq!(mine.owner, "alice");
    // The owner sees the app's secret; nobody else does.
    assert!(mine.app.token.is_some());
    let seen_by_admin = s.instance(&w.admin, &id).unwrap();
    assert_eq!(seen_by_admin.id, mine.id);
    assert!(seen_by_admin.app.token.is_none());
    // Another user finds nothing, exactly as for an id that does not exist.
    for e in [
        s.instance(&w.bob, &id).unwrap_err(),
        s.stop(&w.bob, &id).await.unwrap_err(),
        s.logs(&w.bob, &id, 10).await.unwrap_err(),
    ] {
        assert_eq!(
            (e.kind, e.message.as_str()),
            (Kind::NotFound, format!("no instance {id}").as_str())
        );
    }
    assert!(s.list_instances(&w.bob, true).unwrap().is_empty());
    assert_eq!(s.list_instances(&w.admin, true).unwrap().len(), 1);
    // No host yet: logs have nowhere to come from.
    let e = s.logs(&w.alice, &id, 10).await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "not_placed"));
    // Limits: two per user of this blueprint.
    s.launch(&w.alice, "py").await.unwrap();
    let e = s.launch(&w.alice, "py").await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "limit_reached"));
    // The owner stops it (queued: at once), and again harmlessly.
    let stopped = s.stop(&w.alice, &id).await.unwrap();
    assert!(stopped.state.is_terminal());
    assert_eq!(stopped.state_reason.as_deref(), Some("stopped by alice"));
    assert!(s.stop(&w.alice, &id).await.unwrap().state.is_terminal());
    // A disabled blueprint cannot be launched, and looks like none to users.
    s.set_blueprint_enabled(&w.admin, "py", false)
        .await
        .unwrap();
    assert_eq!(kind(s.launch(&w.bob, "py").await), Kind::NotFound);
    assert_eq!(kind(s.blueprint(&w.bob, "py")), Kind::NotFound);
    assert!(s.list_blueprints(&w.bob).unwrap().is_empty());
    assert_eq!(s.list_blueprints(&w.admin).unwrap().len(), 1);
}

#[tokio::test]
async fn only_admins_extend_within_bounds() {
    let w = World::new().await;
    let s = &w.service;
    s.create_blueprint(&w.admin, &notebook("py", true))
        .await
        .unwrap();
    let i = s.launch(&w.alice, "py").await.unwrap();
    let id = i.id.to_string();
    assert_eq!(kind(s.extend(&w.alice, &id, 60).await), Kind::Forbidden);
    assert_eq!(kind(s.extend(&w.admin, &id, 0).await), Kind::Invalid);
    assert_eq!(
        kind(s.extend(&w.admin, &id, 30 * 24 * 3600 + 1).await),
        Kind::Invalid
    );
    let longer = s.extend(&w.admin, &id, 3600).await.unwrap();
    assert_eq!(longer.expires_ms, i.expires_ms + 3_600_000);
    assert_eq!(kind(s.extend(&w.admin, "i-nope", 60).await), Kind::NotFound);
}

#[tokio::test]
async fn admins_cannot_disable_themselves() {
    let w = World::new().await;
    let s = &w.service;
    let e = s
        .set_user_disabled(&w.admin, "root", true)
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "self_disable"));
    // Enabling oneself is harmless; another admin may disable them.
    assert!(s.set_user_disabled(&w.admin, "root", false).await.is_ok());
    s.create_user(&w.admin, "ops", "password-1", Role::Admin)
        .await
        .unwrap();
    let t = s.login("ops", "password-1", "", None).await.unwrap();
    let ops = s.authenticate(&t.token).unwrap();
    assert!(
        s.set_user_disabled(&ops, "root", true)
            .await
            .unwrap()
            .disabled
    );
}

#[tokio::test]
async fn tokens_are_their_owners_to_list_and_revoke() {
    let w = World::new().await;
    let s = &w.service;
    let alices = s.list_tokens(&w.alice).unwrap();
    assert!(alices.iter().all(|t| t.user == "alice"));
    let id = alices[0].id.clone();
    assert_eq!(kind(s.revoke_token(&w.bob, &id).await), Kind::NotFound);
    assert!(s.list_tokens(&w.admin).unwrap().len() >= 3);
    s.revoke_token(&w.admin, &id).await.unwrap();
    // The revoked session ends.
    s.logout(&w.bob).await.unwrap();
    assert!(s
        .list_tokens(&w.admin)
        .unwrap()
        .iter()
        .any(|t| t.id == id && t.revoked));
}

#[tokio::test]
async fn join_tokens_are_bounded() {
    let w = World::new().await;
    let s = &w.service;
    for (ttl, uses, desc) in [
        (0, 1, 0),
        (30 * 24 * 3600 + 1, 1, 0),
        (60, 0, 0),
        (60, 100_001, 0),
        (60, 1, 257),
    ] {
        let req = CreateToken {
            ttl_secs: ttl,
            uses,
            description: "d".repeat(desc),
        };
        assert_eq!(
            kind(s.create_join_token(&w.admin, &req).await),
            Kind::Invalid,
            "{req:?}"
        );
    }
    assert_eq!(
        kind(s.revoke_join_token(&w.admin, "zz").await),
        Kind::Invalid
    );
    assert_eq!(
        kind(s.revoke_join_token(&w.admin, "0123abcd").await),
        Kind::NotFound
    );
}

#[tokio::test]
async fn an_archive_in_use_is_not_removed_and_a_missing_one_is_not_found() {
    let w = World::new().await;
    let s = &w.service;
    let e = s
        .remove_image(&w.admin, "0".repeat(64).as_str())
        .await
        .unwrap_err();
    assert_eq!(e.kind, Kind::NotFound);
    assert_eq!(
        kind(s.drain_host(&w.admin, "not-a-host", None).await),
        Kind::Invalid
    );
}

/// A dataset catalogue for the service tests: `course-data` with versions
/// 1..=latest (latest starts at 2); nothing else.
fn course_data(latest: Arc<AtomicU32>) -> Arc<dyn DatasetLookup> {
    Arc::new(move |name: &str, version: Option<u32>| {
        if name != "course-data" {
            return Err(LookupError::NoDataset(name.into()));
        }
        let latest = latest.load(Ordering::SeqCst);
        let v = version.unwrap_or(latest);
        if !(1..=latest).contains(&v) {
            return Err(LookupError::NoVersion {
                name: name.into(),
                version: v,
            });
        }
        Ok(DatasetSpec {
            name: name.into(),
            version: v,
            manifest: ChunkId([v as u8; 32]),
            bytes: 1000 * u64::from(v),
        })
    })
}

fn with_dataset(name: &str, dataset: &str, version: serde_json::Value) -> BlueprintInput {
    let mut b = serde_json::to_value(notebook(name, true)).unwrap();
    b["datasets"] =
        serde_json::json!([{"name": dataset, "version": version, "path": "/data/course"}]);
    serde_json::from_value(b).unwrap()
}

/// (field, message) of a refusal's field errors.
fn field_errors(e: ServiceError) -> Vec<(String, String)> {
    assert_eq!(e.kind, Kind::Invalid, "{e:?}");
    e.fields.into_iter().map(|f| (f.field, f.message)).collect()
}

#[tokio::test]
async fn a_blueprint_naming_a_missing_dataset_is_not_saved() {
    let w = World::new().await;
    let s = &w.service;
    // The controller's own (empty) catalogue answers.
    let e = s
        .create_blueprint(
            &w.admin,
            &with_dataset("py", "course-data", "latest".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        field_errors(e),
        vec![(
            "datasets[0].name".into(),
            "no dataset \"course-data\"".into()
        )]
    );

    s.app
        .instances
        .set_dataset_lookup(course_data(Arc::new(AtomicU32::new(2))));
    let e = s
        .create_blueprint(&w.admin, &with_dataset("py", "nope", "latest".into()))
        .await
        .unwrap_err();
    assert_eq!(
        field_errors(e),
        vec![("datasets[0].name".into(), "no dataset \"nope\"".into())]
    );
    let e = s
        .create_blueprint(&w.admin, &with_dataset("py", "course-data", 9.into()))
        .await
        .unwrap_err();
    assert_eq!(
        field_errors(e),
        vec![(
            "datasets[0].version".into(),
            "dataset \"course-data\" has no version 9".into()
        )]
    );
    // Reported with the input's other problems.
    let mut both = with_dataset("py", "nope", "latest".into());
    both.memory_mib = Some(1);
    let f = field_errors(s.create_blueprint(&w.admin, &both).await.unwrap_err());
    let fields: Vec<&str> = f.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, vec!["memory_mib", "datasets[0].name"]);
    assert_eq!(kind(s.blueprint(&w.admin, "py")), Kind::NotFound);

    // An existing dataset saves; an edit to a missing one saves nothing.
    let r = s
        .create_blueprint(&w.admin, &with_dataset("py", "course-data", 1.into()))
        .await
        .unwrap();
    assert_eq!(r.spec.datasets[0].reference(), "course-data@1");
    let e = s
        .update_blueprint(&w.admin, "py", &with_dataset("py", "gone", "latest".into()))
        .await
        .unwrap_err();
    assert_eq!(field_errors(e)[0].0, "datasets[0].name");
    assert_eq!(s.blueprint(&w.admin, "py").unwrap().revision, 1);
}

#[tokio::test]
async fn an_instance_keeps_the_dataset_version_it_was_launched_with() {
    let w = World::new().await;
    let s = &w.service;
    let latest = Arc::new(AtomicU32::new(2));
    s.app
        .instances
        .set_dataset_lookup(course_data(latest.clone()));
    s.create_blueprint(
        &w.admin,
        &with_dataset("py", "course-data", "latest".into()),
    )
    .await
    .unwrap();
    let first = s.launch(&w.alice, "py").await.unwrap();
    let shown: Vec<String> = first.datasets.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown, vec!["course-data@2 \u{2192} /data/course"]);
    assert_eq!(first.datasets[0].manifest, ChunkId([2; 32]).to_hex());

    // A new version is pushed: the running instance keeps 2, a new launch gets 3.
    latest.store(3, Ordering::SeqCst);
    let again = s.instance(&w.alice, first.id.as_str()).unwrap();
    assert_eq!(again.datasets[0].version, 2);
    let second = s.launch(&w.alice, "py").await.unwrap();
    assert_eq!(second.datasets[0].version, 3);

    // What the host is asked to mount is the record's, not today's latest.
    let record = s.app.instances.get(&first.id).unwrap();
    let spec = s.app.blueprints.get("py").unwrap().unwrap().spec;
    let desired = crate::instances::desired::desired_of(&record, &spec, 1000);
    assert_eq!(
        desired
            .datasets
            .iter()
            .map(|m| (m.dataset.version, m.path.as_str()))
            .collect::<Vec<_>>(),
        vec![(2, "/data/course")]
    );

    // The dataset vanishes from the catalogue: launches say so, nothing is queued.
    latest.store(0, Ordering::SeqCst);
    let e = s.launch(&w.bob, "py").await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "dataset_missing"));
    assert!(s.list_instances(&w.bob, false).unwrap().is_empty());
}

/// The real catalogue end to end in the service: push, save a blueprint naming the
/// dataset, launch, push again, launch again.
#[tokio::test]
async fn launches_mount_pushed_versions_from_the_catalogue() {
    use cairn_shared::chunks::manifest::{Entry, EntryKind, Manifest};
    use cairn_shared::chunks::{ChunkRef, DEFAULT_PARAMS};

    let w = World::new().await;
    let s = &w.service;
    let push = |text: &'static [u8]| {
        let s = s.clone();
        let admin = w.admin.clone();
        async move {
            let mut pack = vec![];
            crate::chunks::pack::push_frame(&mut pack, ChunkId::of(text), text);
            s.store_pack(&admin, pack.into()).await.unwrap();
            let m = Manifest::new(
                DEFAULT_PARAMS,
                vec![Entry {
                    path: "notes.txt".into(),
                    size: text.len() as u64,
                    kind: EntryKind::File {
                        chunks: vec![ChunkRef {
                            id: ChunkId::of(text),
                            len: text.len() as u32,
                        }],
                    },
                    mode: 0o644,
                    mtime_ns: 0,
                }],
            )
            .encode();
            s.commit_dataset(&admin, "course-data", &m).await.unwrap()
        }
    };
    let v1 = push(b"week one").await.version;
    s.create_blueprint(
        &w.admin,
        &with_dataset("py", "course-data", "latest".into()),
    )
    .await
    .unwrap();
    let first = s.launch(&w.alice, "py").await.unwrap();
    let d = &first.datasets[0];
    assert_eq!(
        (d.name.as_str(), d.version, d.path.as_str(), d.bytes),
        ("course-data", 1, "/data/course", 8)
    );
    assert_eq!(
        d.manifest,
        s.app
            .datasets
            .resolve("course-data", Some(1))
            .unwrap()
            .manifest
            .to_hex()
    );
    assert_eq!(v1.version, 1);

    push(b"week two!").await;
    assert_eq!(
        s.instance(&w.alice, first.id.as_str()).unwrap().datasets[0].version,
        1
    );
    let second = s.launch(&w.alice, "py").await.unwrap();
    assert_eq!(
        (second.datasets[0].version, second.datasets[0].bytes),
        (2, 9)
    );

    // In use: nothing that mounts it, or an enabled blueprint naming it, may lose it.
    let e = s
        .remove_dataset(&w.admin, "course-data", Some(1))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "dataset_in_use"));
    assert!(
        e.message
            .starts_with("dataset course-data@1 is in use by instance ")
            && e.message.contains(first.id.as_str())
            && !e.message.contains(second.id.as_str())
            && !e.message.contains("blueprint py"),
        "{e:?}"
    );
    s.stop(&w.alice, first.id.as_str()).await.unwrap();
    let gone = s
        .remove_dataset(&w.admin, "course-data", Some(1))
        .await
        .unwrap();
    assert_eq!(gone[0].version, 1);
    let e = s
        .remove_dataset(&w.admin, "course-data", None)
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "dataset_in_use"));
    assert!(
        e.message.contains(second.id.as_str()) && e.message.contains("blueprint py"),
        "{e:?}"
    );
    s.stop(&w.alice, second.id.as_str()).await.unwrap();
    s.set_blueprint_enabled(&w.admin, "py", false)
        .await
        .unwrap();
    s.remove_dataset(&w.admin, "course-data", None)
        .await
        .unwrap();
    // Re-enabled, the blueprint names a dataset that is gone: launches say why.
    s.set_blueprint_enabled(&w.admin, "py", true).await.unwrap();
    let e = s.launch(&w.bob, "py").await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "dataset_missing"));
    assert!(e.message.contains("no dataset \"course-data\""), "{e:?}");
}

/// Retention on a simulated clock: an ended instance stays for `keep_ended_days`
/// (30) and then leaves memory and the store; a live one stays; API tokens go when
/// they expire, join tokens a day after.
#[tokio::test]
async fn retention_forgets_what_is_past_keeping_and_nothing_else() {
    use crate::store::Tree;
    let w = World::new().await;
    let s = &w.service;
    s.create_blueprint(&w.admin, &notebook("py", true))
        .await
        .unwrap();
    let ended = s.launch(&w.alice, "py").await.unwrap().id.to_string();
    let live = s.launch(&w.alice, "py").await.unwrap().id.to_string();
    s.stop(&w.alice, &ended).await.unwrap();
    let t0 = cairn_shared::time::now_ms();
    let join = crate::service::join_tokens::CreateToken {
        ttl_secs: 3600,
        uses: 1,
        description: "retention".into(),
    };
    s.create_join_token(&w.admin, &join).await.unwrap();
    let day = 24 * 3600 * 1000;

    // Ended, it left memory at once, and is read from the store: alone, in its
    // owner's list (history and all) and in the counts.
    let ended_id = cairn_shared::ids::InstanceId::parse(&ended).unwrap();
    assert!(s.app.instances.matching(|i| i.id == ended_id).is_empty());
    let shown = s.instance(&w.alice, &ended).unwrap();
    assert_eq!(shown.state, InstanceState::Stopped);
    assert!(shown.transitions.len() >= 2, "{shown:?}");
    let mut mine: Vec<String> = s
        .list_instances(&w.alice, false)
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    mine.sort();
    let mut both = vec![live.clone(), ended.clone()];
    both.sort();
    assert_eq!(mine, both);
    let everyone = s.list_instances(&w.admin, true).unwrap();
    assert!(everyone.iter().any(|i| i.id.to_string() == ended));
    assert_eq!(
        s.app
            .instances
            .count_by_state()
            .get(&InstanceState::Stopped),
        Some(&1)
    );
    // Stopping it again is harmless and answers with what it was.
    assert_eq!(
        s.stop(&w.alice, &ended).await.unwrap().state,
        InstanceState::Stopped
    );

    let swept = crate::retention::sweep(&s.app, t0 + 29 * day).await;
    assert_eq!(swept.instances, 0, "kept for 30 days");
    assert_eq!(swept.join_tokens, 1, "a day past its hour");
    assert!(s.instance(&w.admin, &ended).is_ok());

    let swept = crate::retention::sweep(&s.app, t0 + 31 * day).await;
    assert_eq!(swept.instances, 1, "{swept:?}");
    let e = s.instance(&w.admin, &ended).unwrap_err();
    assert_eq!(e.kind, Kind::NotFound);
    assert!(s
        .app
        .store
        .get::<serde_json::Value>(Tree::Instances, &ended)
        .unwrap()
        .is_none());
    assert!(s.instance(&w.admin, &live).is_ok(), "live instances stay");
    assert_eq!(s.list_instances(&w.alice, false).unwrap().len(), 1);
    assert!(s
        .app
        .store
        .keys(Tree::InstanceOwners, "alice/")
        .unwrap()
        .iter()
        .all(|k| !k.ends_with(&ended)));
    assert_eq!(
        s.app
            .instances
            .count_by_state()
            .get(&InstanceState::Stopped),
        None
    );
    // Every login token of the world is 31 days old: expired, deleted.
    assert!(swept.api_tokens >= 3, "{swept:?}");
    assert!(s.app.api_tokens.list_for(None).unwrap().is_empty());
    // Nothing left to do.
    assert_eq!(
        crate::retention::sweep(&s.app, t0 + 31 * day).await,
        crate::retention::Swept::default()
    );
}
