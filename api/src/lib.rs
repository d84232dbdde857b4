//! The JSON types of Cairn's REST API (`/api/v1`, `/healthz`), in one place for the
//! controller that serves them and the CLI that reads them.
//!
//! Every type derives `serde` with exactly the shape the controller answers with (the
//! controller also stores several of them in its database, so a shape change is a
//! data migration), and `utoipa::ToSchema`, so the controller can describe the API as
//! OpenAPI from the same definitions. Enums are real enums, never strings.
//!
//! * [`error`] — the error body `{"error": {"code", "message", "fields"}}`.
//! * [`health`] — `GET /healthz`.
//! * [`users`] — roles, accounts, the caller (`/me`), new accounts.
//! * [`session`] — login, and one's API tokens.
//! * [`join_tokens`] — tokens hosts enrol with.
//! * [`instances`] — the instance lifecycle states and the instance view.
//! * [`groups`] — groups, roles, quotas, join codes, usage, the audit log.
//! * [`blueprints`] — blueprint input, the validated spec, records and revisions.
//! * [`hosts`] — liveness, pool standing, and the host view.
//! * [`images`] — uploaded image archives and resumable uploads.
//! * [`datasets`] — datasets, their versions, and the chunk upload's bodies.
//! * [`volumes`] — users' persistent volumes and their snapshots.
//! * [`autoscaler`] — what the queue waits for and the autoscaler's decisions.
//! * [`openapi`] — all of the above as OpenAPI components.
//!
//! Reading is tolerant where it matters for an older client: unknown fields are
//! ignored (no type here denies them except request bodies, which the controller
//! checks strictly).
#![forbid(unsafe_code)]

pub mod autoscaler;
pub mod blueprints;
pub mod datasets;
pub mod error;
pub mod groups;
pub mod health;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod join_tokens;
pub mod openapi;
pub mod session;
pub mod users;
pub mod volumes;

/// The shared types that appear in API answers, for users of this crate that do not
/// depend on `cairn-shared` themselves.
pub use cairn_shared::ids::{HostId, InstanceId};
pub use cairn_shared::images::{ImageSource, PullPhase, PullProgress};
pub use cairn_shared::resources::{
    Capacity, ContainerInfo, DiskUsage, DockerFacts, HostFacts, ImageInfo, RuntimeFacts,
};
