//! Instances: personal environments launched from blueprints.
//!
//! * [`state`] — the lifecycle state machine and what time makes due (pure).
//! * [`books`] — the scheduler's books: reservations, queue, per-host and
//!   per-owner indexes.
//! * [`desired`] — blueprint to container: what a host is asked to run (pure).
//! * [`sync`] — what each host was sent, and its next desired-state update.
//! * [`prepull`] — which images each host should hold before a launch.
//!   (Datasets' lookup and pre-fetch plan live in [`crate::datasets`].)
//! * [`manager`] — the shell: one path for changes (apply → persist → sync hosts).

pub mod books;
pub mod desired;
pub mod manager;
pub mod prepull;
pub mod state;
pub mod sync;

pub use desired::base_url;
pub use manager::{Admission, Instances, LaunchError, QuotaCheck};
pub use state::{Instance, InstanceState};
