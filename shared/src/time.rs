//! Wall-clock time as milliseconds since the Unix epoch.
//!
//! Every state machine in Cairn takes `now` as a plain `u64` of milliseconds so that
//! tests can feed it any clock they like; only the edges of the programs read the
//! real clock, through [`now_ms`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as read from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        // A clock before 1970 is a broken clock; treat it as the epoch rather than panic.
        .unwrap_or(0)
}
