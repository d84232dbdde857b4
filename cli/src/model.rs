//! The API's JSON shapes as the CLI reads them.
//!
//! Parsing is lenient on purpose: apart from the few fields a command cannot work
//! without, everything has a default, and unknown fields are ignored, so a controller
//! that adds or drops a field does not break the CLI.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Principal {
    /// `None` for the controller's bootstrap admin token.
    pub user: Option<String>,
    pub role: String,
    pub token_id: Option<String>,
}

/// `POST /api/v1/login`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    #[serde(default)]
    pub token_id: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub expires_ms: u64,
}

/// An account, `GET /api/v1/users`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct User {
    pub name: String,
    pub role: String,
    pub disabled: bool,
    pub created_ms: u64,
}

/// A pushed image archive, `GET /api/v1/images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Image {
    /// BLAKE3 of the archive, hex.
    pub archive: String,
    pub size_bytes: u64,
    /// `sha256:...`, the id Docker gives the image.
    pub image_id: String,
    pub tags: Vec<String>,
    pub uploaded_ms: u64,
    pub uploaded_by: String,
}

/// An image upload, `POST|PATCH|GET /api/v1/images/uploads[/ID]`; `done` with the
/// image when the archive is already on the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Upload {
    pub id: Option<String>,
    pub blake3: String,
    pub size_bytes: u64,
    pub offset: u64,
    pub done: bool,
    pub image: Option<Image>,
}

/// A blueprint (`GET /api/v1/blueprints[/NAME]`), or the spec of one revision.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Blueprint {
    pub name: String,
    pub revision: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub description: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub app: String,
    pub app_port: Option<u64>,
    pub memory_mib: Option<u64>,
    pub cpus: Option<f64>,
    pub max_lifetime_secs: Option<u64>,
    pub max_instances_per_user: Option<u64>,
    pub placement: BTreeMap<String, String>,
    pub enabled: bool,
    /// `registry` or `never`; empty from controllers before image resolution.
    pub pull: String,
    /// `"all"`, `"none"` or `{"hosts": N}`.
    pub prepull: serde_json::Value,
    /// What instances run, as resolved when the blueprint was saved.
    pub resolved: Option<ResolvedImage>,
}

/// A blueprint's image as the controller resolved it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ResolvedImage {
    /// `REGISTRY/REPO@sha256:…`, `sha256:…` (an uploaded image) or the name as
    /// written (`pull = "never"`).
    pub reference: String,
    /// `"Registry"`, `"Host"` or `{"Controller": {...}}`.
    pub source: serde_json::Value,
    pub resolved_ms: u64,
}

/// `POST /api/v1/blueprints/NAME/refresh`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Refreshed {
    pub changed: bool,
    pub blueprint: Blueprint,
}

impl Default for Blueprint {
    fn default() -> Self {
        Blueprint {
            name: String::new(),
            revision: 0,
            created_ms: 0,
            updated_ms: 0,
            description: String::new(),
            image: String::new(),
            command: None,
            env: BTreeMap::new(),
            app: String::new(),
            app_port: None,
            memory_mib: None,
            cpus: None,
            max_lifetime_secs: None,
            max_instances_per_user: None,
            placement: BTreeMap::new(),
            // A blueprint that does not say is one users can see, so enabled.
            enabled: true,
            pull: String::new(),
            prepull: serde_json::Value::Null,
            resolved: None,
        }
    }
}

/// One saved revision, `GET /api/v1/blueprints/NAME/revisions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Revision {
    pub revision: u32,
    pub saved_ms: u64,
    pub spec: Blueprint,
}

/// What a host can hold and how busy it is.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
}

/// A host, `GET /api/v1/hosts`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Host {
    pub id: String,
    pub hostname: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub last_seen_ms: u64,
    pub connected: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: Option<Capacity>,
    #[serde(default)]
    pub pool: Option<HostPool>,
    /// Image pulls under way or recently failed.
    #[serde(default)]
    pub pulls: Vec<HostPull>,
}

/// One image pull on a host, as far as the table needs it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HostPull {
    pub reference: String,
    /// `"Queued"`, `"Pulling"`, `"Loading"`, `{"Retrying": …}` or `{"Failed": …}`.
    pub phase: serde_json::Value,
}

impl HostPull {
    pub fn failed(&self) -> bool {
        self.phase.get("Failed").is_some()
    }
}

/// A host's standing in the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HostPool {
    pub standing: HostStanding,
    pub consecutive_failures: u32,
    pub last_failure: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HostStanding {
    pub state: String,
}

impl Host {
    /// `open`, `draining`, `quarantined`...
    pub fn standing(&self) -> String {
        self.pool
            .as_ref()
            .map(|p| p.standing.state.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "open".into())
    }
}

/// One step in an instance's life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Transition {
    pub state: String,
    pub at_ms: u64,
    pub reason: Option<String>,
}

/// How to reach the app inside an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AppAccess {
    /// `jupyter`, `rstudio`, `http`; null when the blueprint revision is gone.
    pub kind: Option<String>,
    /// Usually a path on the controller (`/i/ID/`); may be absolute.
    pub url: Option<String>,
    pub token: Option<String>,
    pub password: Option<String>,
}

/// An instance, `/api/v1/instances`. Only `id` and `state` are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Instance {
    pub id: String,
    pub state: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub blueprint: Option<String>,
    #[serde(default)]
    pub revision: Option<u32>,
    #[serde(default)]
    pub state_reason: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub created_ms: Option<u64>,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// The controller's own count of the seconds left (0 once past), immune to a
    /// skewed local clock; preferred over `expires_ms` when present.
    #[serde(default)]
    pub time_left_secs: Option<u64>,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    #[serde(default)]
    pub app: Option<AppAccess>,
}

impl Instance {
    /// Whether the instance is done for: it will not become `running` any more.
    pub fn is_over(&self) -> bool {
        matches!(self.state.as_str(), "stopping" | "stopped" | "failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instances_parse_leniently() {
        let full = json!({"id":"i-0123456789abcdef","owner":"alice","blueprint":"python","revision":2,
            "state":"running","state_reason":null,"host":"h-1","created_ms":123,"expires_ms":456,
            "transitions":[{"state":"queued","at_ms":1,"reason":"launched"}],
            "app":{"kind":"jupyter","url":"/i/i-0123456789abcdef/","token":"t","password":null},
            "something_new": [1, 2]});
        let i: Instance = serde_json::from_value(full).unwrap();
        assert_eq!(i.owner.as_deref(), Some("alice"));
        assert_eq!(i.transitions[0].reason.as_deref(), Some("launched"));
        assert_eq!(i.app.unwrap().token.as_deref(), Some("t"));

        let no_kind: Instance = serde_json::from_value(
            json!({"id":"i-1","state":"queued","app":{"kind":null,"url":"/i/i-1/"},"time_left_secs":5}),
        )
        .unwrap();
        assert_eq!(no_kind.app.unwrap().kind, None);
        assert_eq!(no_kind.time_left_secs, Some(5));

        let bare: Instance = serde_json::from_value(json!({"id":"i-1","state":"queued"})).unwrap();
        assert_eq!(bare.host, None);
        assert!(bare.transitions.is_empty());
        assert!(serde_json::from_value::<Instance>(json!({"state":"queued"})).is_err());
    }

    #[test]
    fn blueprint_records_and_revisions_parse() {
        let rec = json!({"revision":2,"created_ms":1,"updated_ms":2,"name":"python","description":"d",
            "image":"img:1","command":null,"env":{},"app":"http","app_port":8080,"memory_mib":64,
            "cpus":1.0,"max_lifetime_secs":3600,"max_instances_per_user":1,"placement":{"zone":"a"},
            "enabled":false});
        let b: Blueprint = serde_json::from_value(rec.clone()).unwrap();
        assert_eq!((b.revision, b.enabled, b.memory_mib), (2, false, Some(64)));
        let r: Revision =
            serde_json::from_value(json!({"revision": 2, "saved_ms": 5, "spec": rec})).unwrap();
        assert_eq!(r.spec.placement["zone"], "a");
    }
}
