//! The host registry: which hosts exist, whether each is reachable, and what it last
//! reported.
//!
//! * [`state`] — the pure liveness state machine (`joining → active ⇄ unreachable →
//!   lost`), fed events and `now`, with no I/O and no clock.
//! * [`pool`] — the pure standing state machine: open, draining, drained, removed,
//!   quarantined after repeated launch failures.
//! * [`registry`] — the in-memory table of hosts, their live connections, and
//!   persistence to the store.

pub mod pool;
pub mod registry;
pub mod state;

pub use registry::{HostRecord, HostView, Registry};
pub use state::{HostState, Thresholds};
