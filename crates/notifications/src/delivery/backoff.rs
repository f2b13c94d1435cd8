//! How long a mail waits before its next attempt: doubling from a base, with
//! jitter so a server's outage does not bring every retry back at once.

use std::time::Duration;

use rand::Rng as _;

/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The delay after the `attempts_made`-th failed attempt (1 for the first):
/// `base * 2^(attempts_made - 1)`, capped at an hour, then between 80 % and
/// 120 % of that.
pub fn email_delay(base: Duration, attempts_made: i32) -> Duration {
    let doublings = u32::try_from(attempts_made.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let nominal = base.saturating_mul(2u32.saturating_pow(doublings)).min(MAX_DELAY);
    nominal.mul_f64(rand::rng().random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_stops_at_an_hour() {
        let base = Duration::from_secs(5);
        for (attempt, nominal) in [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0)] {
            let delay = email_delay(base, attempt).as_secs_f64();
            assert!((nominal * 0.8..=nominal * 1.2).contains(&delay), "{attempt}: {delay}");
        }
        assert!(email_delay(base, 40) <= MAX_DELAY.mul_f64(1.2));
    }
}
