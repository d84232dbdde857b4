//! Reconnect back-off: exponential growth with "full jitter".
//!
//! Pure and clock-free: the caller asks for the next delay and sleeps itself. Full
//! jitter (a uniform delay between zero and the exponential cap) spreads out a
//! thousand agents that all lost the controller at the same instant, so they do not
//! come back as one thundering herd.

use std::time::Duration;

use rand::Rng;

/// Exponential back-off with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay to wait: uniform in `[ceiling/2, ceiling]`, then the ceiling doubles.
    ///
    /// Half of the ceiling is kept as a floor so a flapping link still backs off.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        let low = ms / 2;
        Duration::from_millis(rng.random_range(low..=ms.max(low)))
    }

    /// Called after a connection that worked: the next failure starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn grows_exponentially_to_the_cap_with_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut ceilings = vec![];
        for _ in 0..10 {
            let c = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d <= c && d >= c / 2, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(&ceilings[..7], &[100, 200, 400, 800, 1600, 3200, 5000]);
        assert_eq!(ceilings[9], 5000);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_agents() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> = (0..100)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
                b.next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
    }
}
