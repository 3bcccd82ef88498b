//! The retry rule and backoff schedule shared by every network fetcher.

use std::time::Duration;

/// Whether an HTTP status is worth retrying: 5xx except 501 (not implemented),
/// 505 (version not supported) and 511 (network authentication required).
pub fn is_retryable_status(code: u16) -> bool {
    (500..600).contains(&code) && !matches!(code, 501 | 505 | 511)
}

/// Exponential backoff with jitter (Istio's defaults: 5 attempts, initial
/// 500 ms, factor 1.5, randomisation 0.5, cap 60 s).
///
/// The schedule is pure: the caller supplies the random number, and
/// [`Backoff::delay_within`] clamps a delay to the time left before the deadline
/// so a backoff never sleeps past it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt, before jitter.
    pub initial: Duration,
    /// Growth factor per attempt (at least 1.0).
    pub multiplier: f64,
    /// Jitter: a delay `d` becomes a value in `[d*(1-r), d*(1+r)]`.
    pub randomization: f64,
    /// Upper bound of one delay.
    pub max_interval: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial: Duration::from_millis(500),
            multiplier: 1.5,
            randomization: 0.5,
            max_interval: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The same schedule with `n` attempts in all (at least 1 is made).
    #[must_use]
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The same schedule with another delay before the second attempt.
    #[must_use]
    pub fn with_initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// The same schedule with another growth factor (at least 1.0 is used).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The same schedule with another jitter (clamped to `[0, 1]`).
    #[must_use]
    pub fn with_randomization(mut self, randomization: f64) -> Self {
        self.randomization = randomization;
        self
    }

    /// The same schedule with another cap on one delay.
    #[must_use]
    pub fn with_max_interval(mut self, max_interval: Duration) -> Self {
        self.max_interval = max_interval;
        self
    }

    /// The delay after failed attempt number `attempt` (1-based), given a
    /// uniform random number `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let base = base.min(self.max_interval.as_secs_f64());
        let r = self.randomization.clamp(0.0, 1.0);
        let jittered = base * (1.0 - r + 2.0 * r * unit.clamp(0.0, 1.0));
        Duration::from_secs_f64(jittered.min(self.max_interval.as_secs_f64()).max(0.0))
    }

    /// [`Backoff::delay`] clamped to `remaining`, or `None` when no time is left
    /// for another attempt.
    pub fn delay_within(&self, attempt: u32, unit: f64, remaining: Duration) -> Option<Duration> {
        if attempt >= self.max_attempts || remaining.is_zero() {
            return None;
        }
        let d = self.delay(attempt, unit);
        (d < remaining).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_rule() {
        for c in [500, 502, 503, 504, 599] {
            assert!(is_retryable_status(c), "{c}");
        }
        for c in [200, 301, 400, 401, 404, 429, 501, 505, 511] {
            assert!(!is_retryable_status(c), "{c}");
        }
    }

    #[test]
    fn default_schedule() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(500));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(750));
        assert_eq!(b.delay(100, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay_within(5, 0.5, Duration::from_secs(100)), None);
        assert_eq!(b.delay_within(1, 0.5, Duration::from_millis(100)), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn delays_stay_in_bounds(attempt in 1u32..40, unit in 0.0f64..1.0, rem_ms in 0u64..120_000) {
            let b = Backoff::default();
            let d = b.delay(attempt, unit);
            prop_assert!(d <= b.max_interval);
            prop_assert!(d >= Duration::from_millis(250));
            if let Some(d) = b.delay_within(attempt, unit, Duration::from_millis(rem_ms)) {
                prop_assert!(d < Duration::from_millis(rem_ms));
            }
        }
    }
}
