//! The throttles in front of password checks (Login, ChangePassword), of
//! second-factor codes (VerifySecondFactor, ConfirmTotp, DisableTotp) and of
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
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Auth;
use crate::store::throttle_counters::{self, CounterKey, CounterRow, CounterUpdate};

/// How often throttle counters whose windows have passed are deleted.
const PRUNE_INTERVAL: StdDuration = StdDuration::from_secs(60);

/// The key of a client address: IPv4 as is, IPv6 by its /64, which is what
/// one customer is usually given (any address in it is theirs to use).
pub(super) fn address_key(address: Option<IpAddr>) -> String {
    match address {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let network = Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64));
            format!("{network}/64")
        }
        None => "unknown".into(),
    }
}

/// The counters one login attempt (or one second-factor code) touches.
#[derive(Debug, Clone)]
pub(super) struct LoginSubjects {
    /// Whose counters they are (the `account` column): the email for
    /// passwords, so a password reset clears them.
    owner: String,
    address: String,
    pair: String,
    account: String,
}

impl LoginSubjects {
    /// For `email` (normalized; known or not, so throttling reveals nothing)
    /// from `address`.
    pub(super) fn new(email: &str, address: Option<IpAddr>) -> Self {
        let address = address_key(address);
        LoginSubjects {
            owner: email.to_owned(),
            pair: format!("login:pair:{address} {email}"),
            address: format!("login:address:{address}"),
            account: format!("login:account:{email}"),
        }
    }

    /// For second-factor codes of `user_id` from `address`: the same limits
    /// as passwords, counted apart (a right password does not clear them,
    /// nor does a password reset, which proves only the mailbox).
    pub(super) fn second_factor(user_id: Uuid, address: Option<IpAddr>) -> Self {
        let address = address_key(address);
        LoginSubjects {
            owner: format!("user:{user_id}"),
            pair: format!("second_factor:pair:{address} {user_id}"),
            address: format!("second_factor:address:{address}"),
            account: format!("second_factor:account:{user_id}"),
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
                account: Some(&self.owner),
            },
            CounterKey {
                subject: &self.account,
                account: Some(&self.owner),
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
                let rows = throttle_counters::lock(conn, &subjects.keys(), throttle.window.as_secs_f64()).await?;
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
                            throttle_counters::save(conn, &[ticket]).await?;
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
                throttle_counters::save(conn, &counted).await?;
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
        throttle_counters::delete(conn, &subjects.pair).await?;
        throttle_counters::delete(conn, &subjects.account).await?;
        throttle_counters::decrement(conn, &subjects.address).await?;
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
        let rows = throttle_counters::count_calls(conn, &subjects, self.call_limits.window.as_secs_f64()).await?;
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
        throttle_counters::clear_account(conn, email).await?;
        Ok(())
    }

    /// Deletes counters whose windows have passed.
    pub async fn prune_throttle_counters(&self) -> anyhow::Result<usize> {
        let mut conn = self
            .pool
            .get()
            .await
            .context("a connection to prune throttle counters")?;
        throttle_counters::delete_expired(&mut conn)
            .await
            .context("deleting expired throttle counters")
    }
}

/// Deletes expired throttle counters, and provider sign-ins and codes
/// never finished, every minute until `shutdown`.
pub async fn prune(auth: Auth, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = auth.prune_throttle_counters().await {
            tracing::warn!(error = format!("{err:#}"), "pruning throttle counters failed");
        }
        if let Err(err) = auth.prune_provider_sign_ins().await {
            tracing::warn!(error = format!("{err:#}"), "pruning expired provider sign-ins failed");
        }
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
