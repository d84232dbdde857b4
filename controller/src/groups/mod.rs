//! Courses and groups (issue 14): owners, managers and members, join codes, quotas,
//! credits and idle culling.
//!
//! * [`core`] — the pure rules: who may do what to a group, join codes, quota
//!   checks with the numbers, usage and credits, idle warnings and stops.
//! * [`ledger`] — what ended runs spent, per group and member, once they have
//!   left memory.
//! * [`catalog`] — the stored groups, with the copy in memory permission checks
//!   read.
//! * [`reconcile`] — the periodic pass that stops instances whose membership
//!   ended and those idle past their timeout.

pub mod catalog;
pub mod core;
pub mod ledger;
pub mod reconcile;

pub use catalog::{GroupRecord, Groups, GroupsError};
