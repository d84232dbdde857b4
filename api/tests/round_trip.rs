//! Every view of the API read from JSON as the controller writes it and written back
//! unchanged: a renamed field, a changed enum spelling or tagging, a field that
//! starts or stops being skipped when empty, all fail here before they break the
//! CLI, the web UI's scripts or records already in a controller's store.
#![allow(clippy::unwrap_used)]

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use cairn_api::autoscaler::AutoscalerView;
use cairn_api::blueprints::{
    BlueprintInput, BlueprintRecord, Prepull, PullPolicy, Refreshed, Revision, Strategy,
};
use cairn_api::error::{ErrorBody, OffsetConflict};
use cairn_api::health::Health;
use cairn_api::hosts::{Drain, HostView, Standing};
use cairn_api::images::ImageRecord;
use cairn_api::instances::{Extend, InstanceState, InstanceView, Launch};
use cairn_api::join_tokens::{CreateToken, CreatedTokenView, JoinTokenView};
use cairn_api::session::{ApiTokenView, Login, LoginResponse};
use cairn_api::users::{Expiry, NewUser, Principal, Registration, Role, User};

/// Reads `v` as a `T` and writes it back; the two must be the same JSON.
fn round_trip<T: Serialize + DeserializeOwned>(v: Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{} does not read {v}: {e}", std::any::type_name::<T>()));
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        v,
        "{} changed on the way back",
        std::any::type_name::<T>()
    );
    t
}

fn spec() -> Value {
    json!({"name":"python","description":"Python course","image":"jupyter/base-notebook:2024-01-01",
        "command":["start-notebook.sh","--debug"],"env":{"COURSE":"intro"},"app":"jupyter","app_port":8888,
        "memory_mib":512,"cpus":1.5,"max_lifetime_secs":3600,"max_instances_per_user":1,
        "priority":-5,"placement":{"zone":"a"},"strategy":"spread","pull":"registry","prepull":{"hosts":2},
        "datasets":[{"name":"course-data","path":"/data/course"},{"name":"exam","version":3,"path":"/data/exam"}],
        "resolved":{"reference":"127.0.0.1:5000/course/python@sha256:ab","source":"Registry","resolved_ms":7},
        "group":"course-a","cost":2.5,"idle_timeout_secs":3600,
        "enabled":true})
}

fn record() -> Value {
    let mut r = spec();
    let m = r.as_object_mut().unwrap();
    m.insert("revision".into(), json!(2));
    m.insert("created_ms".into(), json!(1));
    m.insert("updated_ms".into(), json!(5));
    r
}

#[test]
fn instances() {
    let i: InstanceView = round_trip(
        json!({"id":"i-0123456789abcdef","owner":"alice","blueprint":"python",
        "revision":2,"state":"running","state_reason":null,"host":"h-0123456789abcdef",
        "address":"172.18.0.2:8888","created_ms":1000,"expires_ms":3_601_000,"time_left_secs":3599,
        "transitions":[{"state":"queued","at_ms":1000,"reason":null},
                       {"state":"scheduled","at_ms":1001,"reason":"placed on h-0123456789abcdef"},
                       {"state":"running","at_ms":9000,"reason":null}],
        "app":{"kind":"jupyter","url":"/i/i-0123456789abcdef/","token":"tok"},
        "datasets":[{"name":"course-data","version":4,"path":"/data/course","bytes":1024,
                     "manifest":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"}]}),
    );
    assert_eq!(i.state, InstanceState::Running);
    assert_eq!(i.transitions[1].state, InstanceState::Scheduled);
    // Queued, with its place in the queue; another user's, so no secrets; its
    // blueprint revision gone, so no kind.
    let q: InstanceView = round_trip(
        json!({"id":"i-fedcba9876543210","owner":"bob","blueprint":"gone",
        "revision":1,"state":"queued","state_reason":"waiting for capacity","host":null,"address":null,
        "created_ms":1,"expires_ms":2,"time_left_secs":0,"transitions":[],
        "app":{"kind":null,"url":"/i/i-fedcba9876543210/"},"queue_position":1,"datasets":[]}),
    );
    assert_eq!(q.queue_position, Some(1));
    round_trip::<Launch>(json!({"blueprint":"python"}));
    round_trip::<Extend>(json!({"seconds":3600}));
    for (s, word) in [
        (InstanceState::Preparing, "preparing"),
        (InstanceState::Stopping, "stopping"),
        (InstanceState::Failed, "failed"),
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(word));
        assert_eq!(s.to_string(), word);
    }
}

#[test]
fn request_bodies_refuse_unknown_fields() {
    assert!(serde_json::from_value::<Launch>(json!({"blueprint":"x","extra":1})).is_err());
    assert!(serde_json::from_value::<BlueprintInput>(json!({"nmae":"x"})).is_err());
    assert!(serde_json::from_value::<Drain>(json!({"deadline":1})).is_err());
}

#[test]
fn blueprints() {
    let r: BlueprintRecord = round_trip(record());
    assert_eq!(r.spec.strategy, Some(Strategy::Spread));
    assert_eq!(r.spec.prepull, Prepull::Hosts(2));
    assert_eq!(r.spec.run_image(), "127.0.0.1:5000/course/python@sha256:ab");
    assert_eq!((r.spec.group(), r.spec.cost), ("course-a", 2.5));
    // Stored before image resolution: no strategy, pull, prepull, resolution or priority.
    let old: BlueprintRecord = serde_json::from_value(json!({"revision":1,"created_ms":1,"updated_ms":1,
        "name":"r","description":"","image":"rocker/rstudio:4","command":null,"env":{},"app":"rstudio",
        "app_port":8787,"memory_mib":1024,"cpus":1.0,"max_lifetime_secs":3600,
        "max_instances_per_user":1,"placement":{},"enabled":false}))
    .unwrap();
    assert_eq!(
        (old.spec.group(), old.spec.cost, old.spec.idle_timeout_secs),
        ("everyone", 1.0, None),
        "a record older than groups belongs to everyone and costs 1 an hour"
    );
    assert_eq!(
        (old.spec.pull, old.spec.prepull, old.spec.priority),
        (PullPolicy::Registry, Prepull::All, 0)
    );
    assert_eq!(
        serde_json::to_value(&old).unwrap()["prepull"],
        json!("all"),
        "written back with the defaults"
    );
    let uploaded = json!({"reference":"sha256:cd","source":{"Controller":{"archive":"3f".repeat(32),"size_bytes":10}},
        "resolved_ms":3});
    let mut never = spec();
    never["pull"] = json!("never");
    never["prepull"] = json!("none");
    never["resolved"] = uploaded;
    never.as_object_mut().unwrap().remove("strategy");
    round_trip::<Revision>(json!({"revision":3,"saved_ms":9,"spec":never}));
    round_trip::<Refreshed>(json!({"changed":true,"blueprint":record()}));
    let input: BlueprintInput = round_trip(json!({"name":"python","description":null,
        "image":"img:1","command":null,"env":null,"app":"http","app_port":8080,"memory_mib":64,
        "cpus":null,"max_lifetime_secs":null,"max_instances_per_user":null,"priority":null,"placement":null,
        "strategy":"binpack","pull":null,"prepull":"all",
        "datasets":[{"name":"course-data","version":"latest","path":"/data"},{"name":"exam","version":3,"path":"/exam"}],
        "enabled":null}));
    assert_eq!(input.app.as_deref(), Some("http"));
}

#[test]
fn hosts() {
    let pull = |phase: Value| {
        json!({"reference":"r/a@sha256:1","phase":phase,"attempt":2,"layers_done":1,"layers_total":4,
            "bytes_done":70,"bytes_total":200,"prepull":true})
    };
    let h: HostView = round_trip(
        json!({"id":"h-0123456789abcdef","hostname":"node1","state":"active",
        "state_since_ms":10,"state_reason":"hello accepted","last_seen_ms":99,"connected":true,
        "enrolled_ms":1,"launch_queue":3,"labels":{"gpu":"true"},
        "facts":{"hostname":"node1","os":"Debian GNU/Linux 13","kernel":"6.12.0","arch":"x86_64",
                 "agent_version":"0.1.0","labels":{"gpu":"true"}},
        "capacity":{"cpus":2,"memory_total_bytes":8_000_000_000u64,"memory_available_bytes":4_000_000_000u64,
                    "load_average":[0.5,0.25,0.125],"docker_disk":{"total_bytes":100,"free_bytes":50},
                    "state_disk":null},
        "runtime":{"Docker":{"engine_version":"28.1","api_version":"1.49","data_root":"/var/lib/docker",
                   "images":[{"id":"sha256:ab","tags":["busybox:1"],"repo_digests":[],"size_bytes":5,
                              "created_unix":1}],
                   "image_count":1,
                   "containers":[{"id":"c1","name":"cairn-i-0123456789abcdef","image":"busybox:1",
                                  "state":"running","labels":{"cairn.instance":"i-0123456789abcdef"}}]}},
        "isolation":"enforced",
        "cert_not_after_unix":1_900_000_000,"remote_addr":"127.0.0.1:40000",
        "transitions":[{"at_ms":10,"from":"joining","to":"active","reason":"hello accepted"}],
        "pool":{"standing":{"state":"draining","deadline_ms":500},"consecutive_failures":1,
                "quarantines":0,"last_failure":"disk full"},
        "pool_history":[{"at_ms":20,"from":"open","to":"draining","reason":"drain requested"}],
        "pulls":[pull(json!("Pulling")),
                 pull(json!({"Retrying":{"error":"timeout","retry_in_ms":1000}})),
                 pull(json!({"Failed":{"error":"unreachable"}}))],
        "datasets":["af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"]}),
    );
    assert_eq!(h.pool.standing.as_str(), "draining");
    assert_eq!(h.failed_pulls(), 1);
    assert_eq!(h.launch_queue, 3);
    let lost: HostView = round_trip(
        json!({"id":"h-fedcba9876543210","hostname":"node2","state":"lost",
        "state_since_ms":0,"state_reason":null,"last_seen_ms":0,"connected":false,"enrolled_ms":0,"launch_queue":0,
        "labels":{},"facts":null,"capacity":null,"runtime":{"Unavailable":{"error":"no engine"}},
        "isolation":{"failed":{"error":"iptables: permission denied"}},
        "cert_not_after_unix":0,"remote_addr":null,"transitions":[],
        "pool":{"standing":{"state":"quarantined","until_ms":5},"consecutive_failures":3,
                "quarantines":1,"last_failure":null},
        "pool_history":[],"pulls":[],"datasets":[]}),
    );
    assert_eq!(lost.pool.standing, Standing::Quarantined { until_ms: 5 });
    // A record from before the pool existed reads as open.
    let bare: cairn_api::hosts::PoolState = serde_json::from_value(json!({})).unwrap();
    assert!(bare.open());
    round_trip::<Drain>(json!({"deadline_secs":3600}));
    round_trip::<Drain>(json!({"deadline_secs":null}));
}

#[test]
fn users_and_sessions() {
    let users: Vec<User> = round_trip(json!([
        {"name":"alice","role":"user","disabled":false,"created_ms":1,"pending":false},
        {"name":"sam","role":"user","disabled":false,"created_ms":3,"email":"sam@uni.example",
         "pending":true,"pending_group":"course-a","expires_ms":9,"delete_after_ms":10},
        {"name":"root","role":"admin","disabled":true,"created_ms":2,"pending":false}]));
    assert_eq!(users[2].role, Role::Admin);
    assert_eq!(users[1].pending_group.as_deref(), Some("course-a"));
    round_trip::<Registration>(
        json!({"name":"sam","email":"sam@uni.example","password":"pw","code":"ABCDE12345"}),
    );
    round_trip::<Expiry>(json!({"expires_ms":null}));
    let me: Principal = round_trip(json!({"user":null,"role":"admin","token_id":null}));
    assert_eq!((me.name(), me.is_admin()), ("admin", true));
    round_trip::<Principal>(json!({"user":"alice","role":"user","token_id":"0123abcd"}));
    round_trip::<NewUser>(json!({"name":"bob","password":"secret-enough","role":"user"}));
    let defaulted: NewUser =
        serde_json::from_value(json!({"name":"bob","password":"secret-enough"})).unwrap();
    assert_eq!(defaulted.role, Role::User);
    round_trip::<Login>(json!({"user":"alice","password":"pw","description":"cli on laptop"}));
    round_trip::<LoginResponse>(
        json!({"token":"cairn_secret","token_id":"0123abcd","user":"alice",
        "role":"user","expires_ms":99}),
    );
    round_trip::<Vec<ApiTokenView>>(json!([{"id":"0123abcd","user":"alice","description":"cli",
        "created_ms":1,"expires_ms":2,"revoked":false}]));
}

#[test]
fn join_tokens() {
    round_trip::<CreateToken>(json!({"ttl_secs":600,"uses":3,"description":"rack 4"}));
    let d: CreateToken = serde_json::from_value(json!({})).unwrap();
    assert_eq!((d.ttl_secs, d.uses, d.description.as_str()), (3600, 1, ""));
    round_trip::<CreatedTokenView>(json!({"token":"cjt_secret","id":"0a1b2c3d","expires_ms":5,
        "uses":1,"ca_sha256":"ab".repeat(32)}));
    round_trip::<Vec<JoinTokenView>>(json!([{"id":"0a1b2c3d","description":"","created_ms":1,
        "expires_ms":2,"max_uses":2,"uses":1,"used_by":["h-0123456789abcdef"]}]));
}

#[test]
fn images() {
    let rec = json!({"archive":"3f".repeat(32),"manifest":"4e".repeat(32),"size_bytes":5_242_880,
        "image_id":format!("sha256:{}", "ab".repeat(32)),
        "tags":["course/python:1"],"uploaded_ms":40_000,"uploaded_by":"admin"});
    let r: ImageRecord = round_trip(rec);
    assert_eq!(r.manifest, "4e".repeat(32));
}

#[test]
fn errors_health_and_autoscaler() {
    round_trip::<ErrorBody>(json!({"error":{"code":"invalid_blueprint",
        "message":"invalid blueprint: name: required","fields":[{"field":"name","message":"required"}]}}));
    round_trip::<ErrorBody>(json!({"error":{"code":"not_found","message":"no instance i-1"}}));
    round_trip::<OffsetConflict>(json!({"error":{"code":"offset_mismatch",
        "message":"the upload is at byte 4, not 0"},"offset":4}));
    round_trip::<Health>(json!({"status":"ok","version":"0.1.0","store":"writable",
        "hosts":{"active":2},"instances":{"queued":1,"running":3}}));
    // What anyone sees: no counts.
    round_trip::<Health>(json!({"status":"ok","version":"0.1.0","store":"writable"}));
    round_trip::<ErrorBody>(json!({"error":{"code":"login_throttled",
        "message":"too many failed logins for this account; try again in 2 s","retry_after_secs":2}}));
    round_trip::<AutoscalerView>(json!({"waiting":{"(no matching pool)":{"waiting":2,
        "memory_bytes":1_073_741_824u64,"millicpus":2000}},
        "decisions":[{"at_ms":5,"pool":"default","action":"create","host":null,"count":2,
                      "reason":"2 requests wait","outcome":"ok"},
                     {"at_ms":4,"pool":"default","action":"drain","host":"h-0123456789abcdef",
                      "count":null,"reason":"idle for 10m","outcome":"ok"},
                     {"at_ms":3,"pool":"cloud","action":"failed","host":null,"count":null,
                      "reason":"a created server did not become a host",
                      "outcome":"server cairn-cloud-1 went into ERROR; deleted"}],
        "servers":[{"pool":"cloud","id":"6f1c","name":"cairn-cloud-2","phase":"joining",
                    "status":"ACTIVE","created_ms":1,"active_ms":2,"joined_ms":null,
                    "deadline_ms":600_001,"host":null}],
        "providers":{"cloud":{"provider":"openstack","failures_in_a_row":1,"failures":1,
                     "last_error":"server cairn-cloud-1 went into ERROR; deleted",
                     "backoff_until_ms":30_003}}}));
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_components_are_complete() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(cairn_api::openapi::ApiModel::openapi()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "InstanceView",
        "HostView",
        "HostTransition",
        "Transition",
        "BlueprintRecord",
        "ErrorBody",
        "Capacity",
        "PullProgress",
        "HostId",
    ] {
        assert!(
            schemas.contains_key(name),
            "{name} missing from {:?}",
            schemas.keys()
        );
    }
    let mut all = vec![];
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(schemas.contains_key(name), "{r} points nowhere");
    }
}

#[test]
fn volumes() {
    use cairn_api::volumes::{SetHead, VolumeView};
    let input: BlueprintInput = round_trip(json!({"name":"nb","description":null,
        "image":"img:1","command":null,"env":null,"app":"jupyter","app_port":8888,"memory_mib":512,
        "cpus":null,"max_lifetime_secs":null,"max_instances_per_user":null,"priority":null,"placement":null,
        "strategy":null,"pull":null,"prepull":null,"datasets":null,
        "volume":{"path":"/home/jovyan/work","checkpoint_minutes":2.5,"owner":"1000:100"},
        "enabled":null}));
    assert_eq!(input.volume.and_then(|v| v.checkpoint_minutes), Some(2.5));
    let v: VolumeView = round_trip(json!({"owner":"alice","name":"work","created_ms":1,
    "generation":2,"bytes":10,"files":3,"in_use_by":"i-0123456789abcdef","attention":1,
    "snapshots":[
        {"id":1,"status":"saved","head":true,"generation":2,"bytes":10,"files":3,
         "created_ms":2,"by":"i-0123456789abcdef","manifest":"ab".repeat(32)},
        {"id":2,"status":"conflict","head":false,"generation":1,"reason":"instance i-1 no longer holds the volume's lease",
         "bytes":12,"files":4,"created_ms":3,"by":"i-1","manifest":"cd".repeat(32)}
    ]}));
    assert_eq!(v.snapshots.len(), 2);
    round_trip::<SetHead>(json!({"snapshot":1}));
}
