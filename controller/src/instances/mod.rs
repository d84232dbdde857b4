//! Instances: personal environments launched from blueprints.
//!
//! * [`state`] — the lifecycle state machine (pure, clock-free).
//! * [`manager`] — launches, placement, desired state per host, reports, lifetimes.

pub mod manager;
pub mod state;

pub use manager::{Instances, LaunchError};
pub use state::{Instance, InstanceState};
