//! Users' persistent volumes (issue 13): a chain of snapshots per (user, blueprint)
//! or named volume, one writer at a time, never losing a committed copy.
//!
//! * [`core`] — the pure rules: the lease, what a commit becomes (head, conflict,
//!   halted, over quota) and retention. The catalogue, the agent's save and restore
//!   and the doors build on it.

pub mod core;
