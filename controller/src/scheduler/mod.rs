//! Placement of instances on hosts.
//!
//! * [`core`] — the deterministic core: filter, score, reserve, queue. No I/O, no
//!   clock; unit-tested as a state machine.
pub mod core;

pub use self::core::{
    Bonus, DataLocality, DatasetNeed, HostSnapshot, Outcome, PoolPolicy, Request, Resources,
    Scheduler, Shortfall, Strategy,
};
