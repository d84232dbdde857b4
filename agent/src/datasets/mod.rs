//! Datasets on this host: immutable versions of a directory tree, fetched from the
//! controller as chunks, materialised once, and bind-mounted read-only into the
//! containers that ask for them.
//!
//! * [`crate::chunks::fetch`] — manifests and chunks over the link (shared with
//!   image archives).
//! * [`cache`] — materialised versions: single flight per version, one copy per
//!   host, a size limit, pre-fetch, and what heartbeats list as ready.
//! * [`evict`] — the pure choice of which versions leave the cache.

pub mod cache;
pub mod evict;

pub use cache::{DatasetCache, Flight};
