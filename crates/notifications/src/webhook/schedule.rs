//! When a webhook delivery is attempted: the Standard Webhooks example
//! schedule, spanning about 27 and a half hours, with jitter so that retries of many
//! deliveries that failed together (a receiver's outage) do not arrive
//! together.

use std::time::Duration;

use rand::Rng as _;

use crate::config::WebhookConfig;

/// The delay before each attempt, the first one immediate: 8 attempts in
/// all.
pub const DELAYS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How many attempts a delivery gets.
pub const MAX_ATTEMPTS: u32 = DELAYS.len() as u32;

/// The most a receiver's `Retry-After` may push the next attempt back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How far each delay is moved at random, either way (a fraction of it).
pub const JITTER: f64 = 0.1;

/// The largest scale accepted: beyond it the last delays would exceed what
/// a `Duration` holds long before anyone wants them.
const MAX_SCALE: f64 = 1_000.0;

/// The retry schedule, scaled by `webhook_retry_scale` (tests shrink hours
/// to seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    scale: f64,
}

impl From<&WebhookConfig> for Schedule {
    /// A scale that is negative or not a number is taken as 1 (the real
    /// schedule); one above 1000 as 1000.
    fn from(config: &WebhookConfig) -> Self {
        Self::scaled(config.webhook_retry_scale)
    }
}

impl Schedule {
    /// The schedule with every delay multiplied by `scale` (see
    /// [`Schedule::from`] for the bounds).
    pub fn scaled(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale >= 0.0 {
            scale.min(MAX_SCALE)
        } else {
            1.0
        };
        Self { scale }
    }

    /// How long to wait before the next attempt once `attempts_made`
    /// attempts were made: zero before the first, `None` once all
    /// [`MAX_ATTEMPTS`] were made. A receiver's `Retry-After` is honoured as
    /// a lower bound, up to [`MAX_RETRY_AFTER`] (it is the receiver's own
    /// clock, so it is not scaled).
    pub fn delay_after(&self, attempts_made: u32, retry_after: Option<Duration>) -> Option<Duration> {
        self.delay_with_jitter(attempts_made, retry_after, rand::rng().random_range(-JITTER..=JITTER))
    }

    /// [`Schedule::delay_after`] with the jitter given: a fraction in
    /// `-JITTER..=JITTER`.
    fn delay_with_jitter(&self, attempts_made: u32, retry_after: Option<Duration>, jitter: f64) -> Option<Duration> {
        let base = *DELAYS.get(usize::try_from(attempts_made).ok()?)?;
        let factor = self.scale * (1.0 + jitter.clamp(-JITTER, JITTER));
        // The bounds on scale and jitter keep this finite and non-negative;
        // the fallback only keeps it panic-free.
        let delay = Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base);
        Some(match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scale: f64) -> WebhookConfig {
        WebhookConfig {
            webhook_allow_private: false,
            webhook_timeout_ms: 15_000,
            webhook_retry_scale: scale,
            webhook_disable_after_secs: 432_000,
        }
    }

    const HOUR: u64 = 3600;

    #[test]
    fn eight_attempts_on_the_standard_schedule() {
        let schedule = Schedule::from(&config(1.0));
        let expected = [0, 5, 300, 1800, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR];
        for (made, secs) in expected.into_iter().enumerate() {
            let made = made as u32;
            assert_eq!(
                schedule.delay_with_jitter(made, None, 0.0),
                Some(Duration::from_secs(secs)),
                "after {made}"
            );
        }
        assert_eq!(schedule.delay_after(MAX_ATTEMPTS, None), None);
        assert_eq!(schedule.delay_after(u32::MAX, None), None);
        assert_eq!(MAX_ATTEMPTS, 8);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_never_delays_the_first_attempt() {
        let schedule = Schedule::from(&config(1.0));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            assert_eq!(schedule.delay_after(0, None), Some(Duration::ZERO));
            let Some(delay) = schedule.delay_after(2, None) else {
                panic!("a third attempt is scheduled");
            };
            assert!(
                delay >= Duration::from_secs(270) && delay <= Duration::from_secs(330),
                "{delay:?}"
            );
            seen.insert(delay);
        }
        assert!(seen.len() > 1, "the delays vary");
        assert_eq!(
            schedule.delay_with_jitter(1, None, 5.0),
            Some(Duration::from_millis(5_500))
        );
        assert_eq!(
            schedule.delay_with_jitter(1, None, -5.0),
            Some(Duration::from_millis(4_500))
        );
    }

    #[test]
    fn the_scale_shrinks_the_schedule() {
        let schedule = Schedule::from(&config(0.001));
        assert_eq!(schedule.delay_with_jitter(1, None, 0.0), Some(Duration::from_millis(5)));
        assert_eq!(schedule.delay_with_jitter(7, None, 0.0), Some(Duration::from_secs(36)));
        assert_eq!(Schedule::from(&config(0.0)).delay_after(7, None), Some(Duration::ZERO));
        for odd in [f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(Schedule::from(&config(odd)), Schedule::scaled(1.0), "{odd}");
        }
        assert!(Schedule::from(&config(1e300)).delay_after(7, None).is_some());
    }

    #[test]
    fn retry_after_is_a_lower_bound_capped_at_a_day() {
        let schedule = Schedule::from(&config(1.0));
        let asked = Some(Duration::from_secs(120));
        assert_eq!(
            schedule.delay_with_jitter(1, asked, 0.0),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            schedule.delay_with_jitter(3, asked, 0.0),
            Some(Duration::from_secs(1800))
        );
        let huge = Some(Duration::from_secs(365 * 24 * HOUR));
        assert_eq!(schedule.delay_with_jitter(1, huge, 0.0), Some(MAX_RETRY_AFTER));
        assert_eq!(schedule.delay_after(MAX_ATTEMPTS, asked), None, "no attempts left");
    }
}
