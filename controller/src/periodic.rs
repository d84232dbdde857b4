//! The one loop every periodic pass of the controller runs in: a tick every
//! `period` (a late tick delays the next rather than bunching them), the pass
//! fed the wall-clock `now`, until shutdown.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `pass(now_ms)` every `period`, the first after `first`, until `shutdown`.
pub async fn every<F, Fut>(
    period: Duration,
    first: Duration,
    shutdown: CancellationToken,
    mut pass: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        pass(cairn_shared::time::now_ms()).await;
    }
}
