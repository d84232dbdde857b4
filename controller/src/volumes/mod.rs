//! Users' persistent volumes (issue 13): a chain of snapshots per (user, blueprint)
//! or named volume, one writer at a time, never losing a committed copy.
//!
//! * [`core`] — the pure rules: the lease, what a commit becomes (head, conflict,
//!   halted, over quota) and retention.
//! * [`catalog`] — the records in the store, each change one of `core`'s decisions.
//! * [`tar`] — a snapshot streamed out as a tar archive.
//!
//! The agent restores, checkpoints and saves (`agent/src/volumes`); snapshots travel
//! as chunks over the link (`link/volumes.rs`).

pub mod catalog;
pub mod core;
pub mod tar;

pub use catalog::{Acquired, SnapshotRecord, SnapshotStatus, VolumeRecord, Volumes, VolumesError};
