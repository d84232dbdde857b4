//! What the Cairn controller and agent must agree on.
//!
//! * [`protocol`] — the messages of the controller↔agent link and its version.
//! * [`framing`] — length-prefixed postcard frames with a hard size limit.
//! * [`identity`] — the private CA, certificates, and the rustls/quinn configs built on them.
//! * [`ids`] — validated identifiers (hosts, join tokens).
//! * [`resources`] — host facts and capacity reported by agents.
//! * [`process`] — logging set-up and shutdown signals for the binaries.
//! * [`backoff`] — reconnect back-off with jitter, as a pure state machine.
//! * [`fsutil`] — atomic, private file writes for keys and configs.
//! * [`workload`] — desired instances and instance reports on the link.
//! * [`images`] — image sources, pre-pull sets, registry credentials and pull progress.
//! * [`reference`] — image references (`[REGISTRY/]REPO[:TAG][@DIGEST]`), parsed and
//!   normalised as Docker does.
//! * [`chunks`] — content-defined chunks named by BLAKE3 and the manifests that list
//!   them: the one way Cairn stores and moves bytes. The parts that touch files
//!   (chunker, scans, trees, chunk directories) need the `chunks` feature.
//! * [`validate`] — bounds checks every input crosses before it is trusted.
//!
//! `identity`, `framing` and the quinn helpers of `protocol` need the `link` feature
//! (on by default), `process` the `process` feature: without them the crate is plain
//! data with no QUIC/TLS dependency, for the REST API model and the CLI. The
//! `schema` feature derives OpenAPI schemas for the types the REST API shows.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod chunks;
#[cfg(feature = "link")]
pub mod framing;
pub mod fsutil;
#[cfg(feature = "link")]
pub mod identity;
pub mod ids;
pub mod images;
#[cfg(feature = "process")]
pub mod process;
pub mod protocol;
pub mod reference;
pub mod resources;
pub mod time;
pub mod validate;
pub mod workload;
