//! Exponential backoff with jitter: the one delay rule of every retry loop
//! (sink writes, dead letters, binlog reconnects).

use std::time::Duration;

/// Delay before attempt `n`: doubles from `initial` up to `max`, then a
/// random point in its upper half ("equal jitter"), so that many consumers
/// retrying together spread out but none retries immediately.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff between `initial` and `max`.
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Backoff { initial, max }
    }

    /// The delay before retry number `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.ceiling(attempt);
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The upper bound of `delay(attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_stays_within_bounds_and_jitters() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        let delays: Vec<_> = (0..50).map(|_| b.delay(4)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(400) && *d <= Duration::from_millis(800)));
        assert!(delays.iter().any(|d| *d != delays[0]), "no jitter");
    }
}
