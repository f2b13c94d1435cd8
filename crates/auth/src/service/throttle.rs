//! The throttles in front of password checks (Login, ChangePassword) and of
//! the calls that cost a hash, a signature or a mail (Register,
//! RequestPasswordReset, IssueServiceToken).
//!
//! Logins are counted per client address, per account and address, and per
//! account. The first two have hard limits; the account only slows down, so
//! failures sent from elsewhere can delay its owner by a bounded time but
//! never lock them out.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration as StdDuration,
};

use anyhow::Context as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel_platform::Error;

use super::Auth;
use crate::store::{self, CounterKey, CounterRow, CounterUpdate};

/// How failed logins are limited.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    /// Failures allowed per account and client address within the window;
    /// further attempts from there are refused until it ends.
    pub max_failures: i32,
    /// Failures allowed per client address across accounts (password
    /// spraying) within the window.
    pub max_address_failures: i32,
    /// Failures of an account, from all addresses, before each address must
    /// wait between its attempts at it.
    pub slowdown_after: i32,
    /// The first wait; it doubles with every further failure...
    pub slowdown_base: StdDuration,
    /// ...up to this.
    pub slowdown_max: StdDuration,
    /// The counting window.
    pub window: StdDuration,
}

impl LoginThrottle {
    /// How long an address must wait before each attempt at an account with
    /// `failures` failures in the window: nothing below `slowdown_after`, then
    /// `slowdown_base` doubling per failure, at most `slowdown_max`.
    pub fn delay(&self, failures: i32) -> Option<StdDuration> {
        let beyond = u32::try_from(failures.checked_sub(self.slowdown_after)?).ok()?;
        let factor = 1_u32 << beyond.min(20);
        Some(
            self.slowdown_base
                .checked_mul(factor)
                .map_or(self.slowdown_max, |delay| delay.min(self.slowdown_max)),
        )
    }
}

/// Limits on calls per window that cost a hash, a signature or a mail.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Register calls per client address.
    pub register_per_address: i32,
    /// RequestPasswordReset calls per email (mails to one inbox).
    pub reset_per_email: i32,
    /// RequestPasswordReset calls per client address.
    pub reset_per_address: i32,
    /// IssueServiceToken calls per client id and address.
    pub service_token_per_client: i32,
    /// The counting window.
    pub window: StdDuration,
}

/// The key of a client address: IPv4 as is, IPv6 by its /64, which is what
/// one customer is usually given (any address in it is theirs to use).
pub(crate) fn address_key(address: Option<IpAddr>) -> String {
    match address {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let network = Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64));
            format!("{network}/64")
        }
        None => "unknown".into(),
    }
}

/// The counters one login attempt touches.
#[derive(Debug, Clone)]
pub(crate) struct LoginSubjects {
    email: String,
    address: String,
    pair: String,
    account: String,
}

impl LoginSubjects {
    /// For `email` (normalized; known or not, so throttling reveals nothing)
    /// from `address`.
    pub(crate) fn new(email: &str, address: Option<IpAddr>) -> Self {
        let address = address_key(address);
        LoginSubjects {
            email: email.to_owned(),
            pair: format!("login:pair:{address} {email}"),
            address: format!("login:address:{address}"),
            account: format!("login:account:{email}"),
        }
    }

    fn keys(&self) -> [CounterKey<'_>; 3] {
        [
            CounterKey {
                subject: &self.address,
                account: None,
            },
            CounterKey {
                subject: &self.pair,
                account: Some(&self.email),
            },
            CounterKey {
                subject: &self.account,
                account: Some(&self.email),
            },
        ]
    }
}

impl Auth {
    /// Admits a password check for `subjects`, counting it as a failure in
    /// advance (so checks sent at once cannot all pass), or refuses it with
    /// RESOURCE_EXHAUSTED and a RetryInfo delay. Decided under the counters'
    /// row locks, so the count is exact however many attempts race.
    pub(super) async fn admit_login(
        &self,
        conn: &mut AsyncPgConnection,
        subjects: &LoginSubjects,
    ) -> Result<(), Error> {
        let throttle = self.login_throttle;
        let window = chrono_duration(throttle.window)?;
        let decision = conn
            .transaction::<_, Error, _>(async |conn| {
                let rows = store::lock_counters(conn, &subjects.keys(), throttle.window.as_secs_f64()).await?;
                let row = |subject: &str| {
                    rows.iter()
                        .find(|row| row.subject == subject)
                        .with_context(|| format!("throttle counter {subject} was not locked"))
                };
                let (address, pair, account) = (row(&subjects.address)?, row(&subjects.pair)?, row(&subjects.account)?);
                let now = pair.now;
                let live = |row: &CounterRow| if row.window_start + window > now { row.hits } else { 0 };

                for (row, limit) in [(address, throttle.max_address_failures), (pair, throttle.max_failures)] {
                    if live(row) >= limit {
                        // A refused attempt changes nothing: it does not extend the lock.
                        return Ok(Err(too_many_attempts(row.window_start + window - now)));
                    }
                }

                // A slowed-down account makes each address wait its own turn,
                // so an attacker's attempts cannot use up its owner's.
                let mut not_before = pair.not_before.filter(|at| *at + window > now);
                if let Some(delay) = throttle.delay(live(account)) {
                    match not_before {
                        Some(at) if at <= now => not_before = None,
                        Some(at) => return Ok(Err(login_delayed(at - now))),
                        None => {
                            let at = now + chrono_duration(delay)?;
                            let ticket = CounterUpdate {
                                subject: pair.subject.clone(),
                                hits: pair.hits,
                                window_start: pair.window_start,
                                not_before: Some(at),
                                expires_at: (pair.window_start + window).max(at + window),
                            };
                            store::save_counters(conn, &[ticket]).await?;
                            return Ok(Err(login_delayed(at - now)));
                        }
                    }
                }

                let counted: Vec<CounterUpdate> = [address, pair, account]
                    .into_iter()
                    .map(|row| {
                        let window_start = if live(row) > 0 { row.window_start } else { now };
                        let not_before = if row.subject == pair.subject { not_before } else { None };
                        CounterUpdate {
                            subject: row.subject.clone(),
                            hits: live(row).saturating_add(1),
                            window_start,
                            not_before,
                            expires_at: not_before
                                .map_or(window_start + window, |at| (window_start + window).max(at + window)),
                        }
                    })
                    .collect();
                store::save_counters(conn, &counted).await?;
                Ok(Ok(()))
            })
            .await?;
        // Refusals commit too: a new turn to wait for must be kept.
        decision
    }

    /// After a successful password check: the attempt was no failure, and
    /// the account's failures (and this address's at it) are forgotten.
    pub(super) async fn login_succeeded(
        &self,
        conn: &mut AsyncPgConnection,
        subjects: &LoginSubjects,
    ) -> Result<(), Error> {
        // One row per statement: each holds a single row lock, so none can
        // deadlock with an admission holding several.
        store::delete_counter(conn, &subjects.pair).await?;
        store::delete_counter(conn, &subjects.account).await?;
        store::decrement_counter(conn, &subjects.address).await?;
        Ok(())
    }

    /// Counts a call against each `(subject, limit)`, refusing it with
    /// RESOURCE_EXHAUSTED and a RetryInfo delay when any is over its limit.
    pub(super) async fn limit_calls(
        &self,
        conn: &mut AsyncPgConnection,
        limits: &[(String, i32)],
    ) -> Result<(), Error> {
        let window = chrono_duration(self.call_limits.window)?;
        let subjects: Vec<&str> = limits.iter().map(|(subject, _)| subject.as_str()).collect();
        let rows = store::count_calls(conn, &subjects, self.call_limits.window.as_secs_f64()).await?;
        let wait = rows
            .iter()
            .filter(|row| {
                limits
                    .iter()
                    .any(|(subject, limit)| *subject == row.subject && row.hits > *limit)
            })
            .map(|row| row.window_start + window - row.now)
            .max();
        match wait {
            Some(wait) => {
                let wait = retry_delay(wait);
                Err(Error::too_many(
                    "TOO_MANY_REQUESTS",
                    format!("too many requests; retry in {} s", whole_seconds(wait)),
                    wait,
                ))
            }
            None => Ok(()),
        }
    }

    /// Clears every login counter of `email` (after a password reset, the
    /// owner is back in control).
    pub(super) async fn clear_login_failures(conn: &mut AsyncPgConnection, email: &str) -> Result<(), Error> {
        store::clear_account_counters(conn, email).await?;
        Ok(())
    }

    /// Deletes counters whose windows have passed.
    pub async fn prune_throttle_counters(&self) -> anyhow::Result<usize> {
        let mut conn = self
            .pool
            .get()
            .await
            .context("a connection to prune throttle counters")?;
        store::delete_expired_counters(&mut conn)
            .await
            .context("deleting expired throttle counters")
    }
}

fn too_many_attempts(wait: chrono::Duration) -> Error {
    let wait = retry_delay(wait);
    Error::too_many(
        "TOO_MANY_ATTEMPTS",
        format!("too many failed logins; retry in {} s", whole_seconds(wait)),
        wait,
    )
}

fn login_delayed(wait: chrono::Duration) -> Error {
    let wait = retry_delay(wait);
    Error::too_many(
        "LOGIN_DELAYED",
        format!(
            "this account has had many failed logins: wait {} ms before trying again",
            wait.as_millis()
        ),
        wait,
    )
}

/// A RetryInfo delay: never zero, so a client does wait.
fn retry_delay(wait: chrono::Duration) -> StdDuration {
    wait.to_std().unwrap_or_default().max(StdDuration::from_millis(1))
}

fn whole_seconds(wait: StdDuration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

fn chrono_duration(duration: StdDuration) -> Result<chrono::Duration, Error> {
    Ok(chrono::Duration::from_std(duration).context("a throttle duration out of range")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle {
            max_failures: 5,
            max_address_failures: 20,
            slowdown_after: 10,
            slowdown_base: StdDuration::from_secs(1),
            slowdown_max: StdDuration::from_secs(30),
            window: StdDuration::from_secs(900),
        }
    }

    #[test]
    fn the_delay_doubles_from_the_threshold_up_to_the_cap() {
        let t = throttle();
        assert_eq!(t.delay(9), None);
        assert_eq!(t.delay(10), Some(StdDuration::from_secs(1)));
        assert_eq!(t.delay(11), Some(StdDuration::from_secs(2)));
        assert_eq!(t.delay(14), Some(StdDuration::from_secs(16)));
        assert_eq!(t.delay(15), Some(StdDuration::from_secs(30)));
        assert_eq!(t.delay(i32::MAX), Some(StdDuration::from_secs(30)));
    }

    #[test]
    fn ipv6_addresses_are_keyed_by_their_64() {
        let key = |ip: &str| address_key(Some(ip.parse().expect("an address")));
        assert_eq!(key("2001:db8:1:2::a"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::a"), key("2001:db8:1:2::a"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(address_key(None), "unknown");
    }
}
