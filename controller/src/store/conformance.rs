//! The store conformance suite: what every engine behind [`super::Store`] must do,
//! written once and run against each engine (sled in this crate's unit tests, etcd
//! in the tests crate, which starts a real etcd server).
//!
//! `open` must return a store over the same, initially empty, state each time it is
//! called; the suite drops a store and opens it again to check what survived.
//! It is a test suite: it panics on the first thing that does not hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Op, Store, StoreError, Tree, Txn};

/// Runs every check; panics with a message naming the first that fails.
pub async fn run(open: impl Fn() -> Store) {
    basics(&open());
    scans(&open());
    transactions(&open());
    durable_across_reopen(&open).await;
    many_keys_and_large_values(&open).await;
    concurrent_writers(&open).await;
    undecodable_records(&open());
}

fn basics(s: &Store) {
    assert_eq!(s.get::<u32>(Tree::Hosts, "missing").unwrap(), None);
    s.put(Tree::Hosts, "h1", &1u32).unwrap();
    s.put(Tree::Users, "h1", &"another tree".to_string())
        .unwrap();
    assert_eq!(s.get::<u32>(Tree::Hosts, "h1").unwrap(), Some(1));
    s.put(Tree::Hosts, "h1", &2u32).unwrap();
    assert_eq!(
        s.get::<u32>(Tree::Hosts, "h1").unwrap(),
        Some(2),
        "overwrite"
    );
    s.remove(Tree::Hosts, "h1").unwrap();
    assert_eq!(s.get::<u32>(Tree::Hosts, "h1").unwrap(), None, "removed");
    assert_eq!(
        s.get::<String>(Tree::Users, "h1").unwrap().as_deref(),
        Some("another tree"),
        "trees are separate"
    );
    s.remove(Tree::Users, "h1").unwrap();
    s.remove(Tree::Users, "never-there").unwrap();
}

fn scans(s: &Store) {
    for k in ["a/2", "a/1", "ab", "b", "a/é ü", "a"] {
        s.put(Tree::Volumes, k, &k.to_string()).unwrap();
    }
    let under_a: Vec<String> = s.scan_prefix(Tree::Volumes, "a/").unwrap();
    assert_eq!(under_a, ["a/1", "a/2", "a/é ü"], "prefix scan in key order");
    let all: Vec<String> = s.all(Tree::Volumes).unwrap();
    assert_eq!(all, ["a", "a/1", "a/2", "a/é ü", "ab", "b"]);
    assert_eq!(
        s.keys(Tree::Volumes, "a").unwrap(),
        ["a", "a/1", "a/2", "a/é ü", "ab"]
    );
    let last: Vec<String> = s.last(Tree::Volumes, 2).unwrap();
    assert_eq!(last, ["b", "ab"], "last: greatest key first");
    assert!(s
        .scan_prefix::<String>(Tree::Volumes, "c")
        .unwrap()
        .is_empty());
    assert!(
        s.all::<String>(Tree::Groups).unwrap().is_empty(),
        "empty tree"
    );
    for k in ["a/2", "a/1", "ab", "b", "a/é ü", "a"] {
        s.remove(Tree::Volumes, k).unwrap();
    }
    assert!(s.all::<String>(Tree::Volumes).unwrap().is_empty());
}

fn conflict_on(e: StoreError, tree: &str, key: &str) {
    match e {
        StoreError::Conflict { tree: t, key: k } => {
            assert_eq!((t, k.as_str()), (tree, key), "the conflict names its key")
        }
        other => panic!("expected a conflict on {tree}/{key}, got {other}"),
    }
}

fn transactions(s: &Store) {
    // Create-if-absent across two trees.
    s.transaction()
        .expect(Tree::Blueprints, "bp", None)
        .put(Tree::Blueprints, "bp", &1u32)
        .unwrap()
        .put(Tree::BlueprintRevisions, "bp/1", &"r1".to_string())
        .unwrap()
        .commit()
        .unwrap();
    // A second create of the same name fails and writes nothing, in either tree.
    let e = s
        .transaction()
        .expect(Tree::Blueprints, "bp", None)
        .put(Tree::Blueprints, "bp", &9u32)
        .unwrap()
        .put(Tree::BlueprintRevisions, "bp/9", &"r9".to_string())
        .unwrap()
        .commit()
        .unwrap_err();
    conflict_on(e, "blueprints", "bp");
    assert_eq!(s.get::<u32>(Tree::Blueprints, "bp").unwrap(), Some(1));
    assert_eq!(
        s.get::<String>(Tree::BlueprintRevisions, "bp/9").unwrap(),
        None
    );
    // Compare-on-version: the version read lets one writer in, the stale one fails.
    let (v, version) = s
        .get_versioned::<u32>(Tree::Blueprints, "bp")
        .unwrap()
        .unwrap();
    assert_eq!(v, 1);
    s.transaction()
        .expect(Tree::Blueprints, "bp", Some(version))
        .put(Tree::Blueprints, "bp", &2u32)
        .unwrap()
        .put(Tree::BlueprintRevisions, "bp/2", &"r2".to_string())
        .unwrap()
        .commit()
        .unwrap();
    let e = s
        .transaction()
        .expect(Tree::Blueprints, "bp", Some(version))
        .put(Tree::Blueprints, "bp", &3u32)
        .unwrap()
        .commit()
        .unwrap_err();
    conflict_on(e, "blueprints", "bp");
    assert_eq!(s.get::<u32>(Tree::Blueprints, "bp").unwrap(), Some(2));
    // A version check on an absent key fails; deletes in a transaction apply together.
    let e = s
        .transaction()
        .expect(Tree::Blueprints, "nothing", Some(version))
        .commit()
        .unwrap_err();
    conflict_on(e, "blueprints", "nothing");
    let (_, now) = s
        .get_versioned::<u32>(Tree::Blueprints, "bp")
        .unwrap()
        .unwrap();
    s.transaction()
        .expect(Tree::Blueprints, "bp", Some(now))
        .remove(Tree::Blueprints, "bp")
        .remove(Tree::BlueprintRevisions, "bp/1")
        .remove(Tree::BlueprintRevisions, "bp/2")
        .commit()
        .unwrap();
    assert_eq!(s.get::<u32>(Tree::Blueprints, "bp").unwrap(), None);
    assert!(s
        .all::<String>(Tree::BlueprintRevisions)
        .unwrap()
        .is_empty());
    // An empty transaction is fine.
    s.transaction().commit().unwrap();
}

async fn durable_across_reopen(open: &impl Fn() -> Store) {
    {
        let s = open();
        s.put(Tree::Instances, "i-1", &"one".to_string()).unwrap();
        s.put(Tree::Instances, "i-2", &"two".to_string()).unwrap();
        s.put(Tree::Instances, "i-3", &"three".to_string()).unwrap();
        s.remove(Tree::Instances, "i-2").unwrap();
        s.transaction()
            .expect(Tree::Instances, "i-4", None)
            .put(Tree::Instances, "i-4", &"four".to_string())
            .unwrap()
            .commit()
            .unwrap();
        s.flush().await.unwrap();
        s.probe_write(7).await.unwrap();
    }
    let s = open();
    let all: Vec<String> = s.all(Tree::Instances).unwrap();
    assert_eq!(all, ["one", "three", "four"], "what was flushed survives");
    for k in ["i-1", "i-3", "i-4"] {
        s.remove(Tree::Instances, k).unwrap();
    }
    s.flush().await.unwrap();
    drop(s);
    assert!(open().all::<String>(Tree::Instances).unwrap().is_empty());
}

async fn many_keys_and_large_values(open: &impl Fn() -> Store) {
    const N: usize = 3000;
    {
        let s = open();
        for i in 0..N {
            s.put(Tree::Audit, &format!("{i:06}"), &i).unwrap();
        }
        // One transaction of many keys, and a record of 512 KiB.
        let mut t = s.transaction();
        for i in 0..300 {
            t = t.put(Tree::Datasets, &format!("d{i:04}"), &i).unwrap();
        }
        t.commit().unwrap();
        s.put(Tree::Images, "big", &"x".repeat(512 << 10)).unwrap();
        s.flush().await.unwrap();
    }
    let s = open();
    let all: Vec<usize> = s.all(Tree::Audit).unwrap();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "{N} keys, in order");
    let last: Vec<usize> = s.last(Tree::Audit, 3).unwrap();
    assert_eq!(last, [N - 1, N - 2, N - 3]);
    assert_eq!(s.all::<usize>(Tree::Datasets).unwrap().len(), 300);
    assert_eq!(
        s.get::<String>(Tree::Images, "big")
            .unwrap()
            .map(|v| v.len()),
        Some(512 << 10)
    );
    let mut t = s.transaction();
    for i in 0..N {
        t = t.remove(Tree::Audit, &format!("{i:06}"));
    }
    for i in 0..300 {
        t = t.remove(Tree::Datasets, &format!("d{i:04}"));
    }
    t.remove(Tree::Images, "big").commit().unwrap();
    s.flush().await.unwrap();
    drop(s);
    let s = open();
    assert!(s.all::<usize>(Tree::Audit).unwrap().is_empty());
    assert!(s.all::<usize>(Tree::Datasets).unwrap().is_empty());
}

async fn concurrent_writers(open: &impl Fn() -> Store) {
    {
        let s = open();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let s = s.clone();
            tasks.spawn(async move {
                s.put(Tree::Hosts, &format!("c{i:02}"), &i)?;
                s.put(Tree::Hosts, &format!("c{i:02}"), &(i + 1000))?;
                s.flush().await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task").expect("write and flush");
        }
    }
    let s = open();
    let all: Vec<u32> = s.all(Tree::Hosts).unwrap();
    assert_eq!(all, (1000..1064).collect::<Vec<_>>());
    let mut t = s.transaction();
    for i in 0..64 {
        t = t.remove(Tree::Hosts, &format!("c{i:02}"));
    }
    t.commit().unwrap();
    s.flush().await.unwrap();
}

fn undecodable_records(s: &Store) {
    s.put(Tree::Groups, "good", &1u32).unwrap();
    s.engine()
        .commit(Txn {
            checks: vec![],
            ops: vec![Op::Put {
                tree: "groups",
                key: b"bad".to_vec(),
                value: b"\x00not a record".to_vec(),
            }],
        })
        .unwrap();
    assert_eq!(
        s.all::<u32>(Tree::Groups).unwrap(),
        [1],
        "skipped in listings"
    );
    let e = s.get::<u32>(Tree::Groups, "bad").unwrap_err().to_string();
    assert!(e.contains("groups/bad"), "named by its key: {e}");
    s.remove(Tree::Groups, "bad").unwrap();
    s.remove(Tree::Groups, "good").unwrap();
}
