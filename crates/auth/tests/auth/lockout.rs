//! Throttles an attacker cannot turn against a victim: failures from many
//! addresses slow an account down but never lock its owner out, a burst of
//! guesses gets exactly the allowed number of password checks, IPv6
//! neighbours share a limit, a password reset clears the account's failures,
//! and floods of Register, RequestPasswordReset and IssueServiceToken are
//! refused.
//!
//! The suite trusts `x-forwarded-for` from 127.0.0.1, so each test names the
//! client address it speaks for.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::time::Duration;

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::{auth::v1 as pb, events::v1::event::Payload};
use keel_auth::schema::throttle_counters;
use keel_testkit::{
    Suite,
    status::reason,
    suite::{TEST_CLIENT_ID, TEST_CLIENT_SECRET},
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

const PASSWORD: &str = "correct horse battery staple";
const WRONG: &str = "wrong horse battery staple";
const NEW_PASSWORD: &str = "a brand new passphrase";

/// `message` as sent on behalf of the client at `address`.
fn from<T>(address: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", address.parse().expect("an address"));
    request
}

async fn login_from(suite: &Suite, address: &str, email: &str, password: &str) -> Result<pb::LoginResponse, Status> {
    let request = pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    Ok(suite.auth().login(from(address, request)).await?.into_inner())
}

fn retry_delay(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo delay")
}

/// A refusal because the account is slowed down: its delay.
fn delayed(status: &Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "LOGIN_DELAYED");
    retry_delay(status)
}

fn is_wrong_password(status: &Status) -> bool {
    status.code() == Code::Unauthenticated && reason(status) == "INVALID_CREDENTIALS"
}

/// `(subject, hits)` of every login counter of `email`.
async fn counters_of(suite: &Suite, email: &str) -> anyhow::Result<Vec<(String, i32)>> {
    Ok(throttle_counters::table
        .filter(throttle_counters::account.eq(email))
        .select((throttle_counters::subject, throttle_counters::hits))
        .order(throttle_counters::subject)
        .load(&mut suite.auth_db().await?)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_from_many_addresses_slow_the_owner_down_but_never_lock_them_out() -> anyhow::Result<()> {
    let max_delay = Duration::from_millis(400);
    let suite =
        keel_testkit::spawn_suite_holding_events(&["--login-slowdown-base-ms", "50", "--login-slowdown-max-ms", "400"])
            .await?;
    let victim = "victim@example.com";
    suite.register(victim, PASSWORD).await?;

    // Forty addresses guess five times each, as fast as they can. Once the
    // account has ten failures, every address must wait its turn.
    let (mut checked, mut held_back) = (0, 0);
    for i in 1..=40 {
        for _ in 0..5 {
            let status = login_from(&suite, &format!("203.0.113.{i}"), victim, WRONG)
                .await
                .expect_err("wrong");
            if is_wrong_password(&status) {
                checked += 1;
            } else {
                assert!(delayed(&status) <= max_delay, "{status:?}");
                held_back += 1;
            }
        }
    }
    assert!(checked >= 10, "the first ten guesses are checked ({checked})");
    assert!(held_back >= 150, "most guesses waited instead ({held_back} of 200)");

    // A patient attacker waits for each turn: each one is longer than the
    // last, up to the cap.
    let mut delays = Vec::new();
    for i in 1..=6 {
        let address = format!("198.51.100.{i}");
        let delay = delayed(&login_from(&suite, &address, victim, WRONG).await.expect_err("slowed"));
        delays.push(delay);
        tokio::time::sleep(delay).await;
        let status = login_from(&suite, &address, victim, WRONG).await.expect_err("wrong");
        assert!(is_wrong_password(&status), "its turn came: {status:?}");
    }
    assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]), "{delays:?}");
    assert!(delays.iter().all(|delay| *delay <= max_delay), "{delays:?}");
    assert_eq!(delays.last(), Some(&max_delay), "{delays:?}");

    // The owner, from their own address: held back once, for no more than
    // the cap, while the attack goes on from addresses of its own...
    let home = "192.0.2.10";
    let wait = delayed(&login_from(&suite, home, victim, PASSWORD).await.expect_err("slowed"));
    assert!(wait <= max_delay, "{wait:?}");
    for i in 7..=20 {
        login_from(&suite, &format!("198.51.100.{i}"), victim, WRONG)
            .await
            .expect_err("wrong");
    }
    tokio::time::sleep(wait).await;
    // ...and then signed in: the attackers could not take the owner's turn.
    let signed_in = login_from(&suite, home, victim, PASSWORD).await?;
    assert!(signed_in.tokens.is_some());
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_parallel_guesses_from_one_address_get_five_password_checks() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let email = "burst@example.com";
    suite.register(email, PASSWORD).await?;

    let calls = (0..40).map(|_| {
        let mut auth = suite.auth();
        tokio::spawn(async move {
            let request = pb::LoginRequest {
                email: email.into(),
                password: WRONG.into(),
            };
            auth.login(from("203.0.113.9", request)).await.map(drop)
        })
    });
    let outcomes = futures::future::join_all(calls)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

    // An INVALID_CREDENTIALS answer comes only from a password check.
    let (mut checked, mut refused) = (0, 0);
    for outcome in outcomes {
        let status = outcome.expect_err("wrong password");
        if is_wrong_password(&status) {
            checked += 1;
        } else {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(reason(&status), "TOO_MANY_ATTEMPTS");
            assert!(retry_delay(&status) <= Duration::from_secs(15 * 60));
            refused += 1;
        }
    }
    assert_eq!((checked, refused), (5, 35));
    // The counters say the same: five failures, for the address at this
    // account and for the account.
    assert_eq!(
        counters_of(&suite, email).await?,
        vec![
            ("login:account:burst@example.com".to_owned(), 5),
            ("login:pair:203.0.113.9 burst@example.com".to_owned(), 5),
        ]
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_neighbours_in_one_64_share_a_limit() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let email = "six@example.com";
    suite.register(email, PASSWORD).await?;
    for _ in 0..5 {
        let status = login_from(&suite, "2001:db8:1:2::a", email, WRONG)
            .await
            .expect_err("wrong");
        assert!(is_wrong_password(&status), "{status:?}");
    }

    // Another address of the same /64 is the same client.
    let status = login_from(&suite, "2001:db8:1:2:ffff:ffff:ffff:ffff", email, PASSWORD)
        .await
        .expect_err("the /64 is locked out of the account");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "TOO_MANY_ATTEMPTS");
    // The next /64 is someone else.
    login_from(&suite, "2001:db8:1:3::a", email, PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_clears_the_account_failures() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let email = "reset@example.com";
    suite.register(email, PASSWORD).await?;
    // The owner's own address is locked out of the account, and the account
    // is slowed down by failures from two more.
    for address in ["192.0.2.10", "203.0.113.1", "203.0.113.2"] {
        for _ in 0..5 {
            login_from(&suite, address, email, WRONG).await.expect_err("wrong");
        }
    }
    let status = login_from(&suite, "192.0.2.10", email, PASSWORD)
        .await
        .expect_err("locked out");
    assert_eq!(reason(&status), "TOO_MANY_ATTEMPTS");

    let request = pb::RequestPasswordResetRequest { email: email.into() };
    suite.auth().request_password_reset(from("192.0.2.10", request)).await?;
    let token = suite
        .auth_events(None)
        .await?
        .into_iter()
        .find_map(|event| {
            event
                .payload
                .filter(|p| matches!(p, Payload::PasswordResetRequested(_)))
        })
        .map(|payload| suite.open_token(&payload))
        .expect("a reset event")?;
    let request = pb::ResetPasswordRequest {
        token,
        new_password: NEW_PASSWORD.into(),
    };
    suite.auth().reset_password(from("192.0.2.10", request)).await?;

    assert_eq!(counters_of(&suite, email).await?, vec![]);
    // Neither locked out nor slowed down: in at the first try.
    login_from(&suite, "192.0.2.10", email, NEW_PASSWORD).await?;
    login_from(&suite, "198.51.100.1", email, NEW_PASSWORD).await?;
    suite.stop().await
}

fn assert_too_many_requests(status: &Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "TOO_MANY_REQUESTS");
    let delay = retry_delay(status);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(3600),
        "{delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_register_flood_from_one_address_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&["--register-limit", "3"]).await?;
    let register = |address: &'static str, email: String| {
        let mut auth = suite.auth();
        async move {
            let request = pb::RegisterRequest {
                email,
                password: PASSWORD.into(),
                request_id: String::new(),
            };
            auth.register(from(address, request)).await.map(drop)
        }
    };
    for i in 0..3 {
        register("203.0.113.5", format!("flood-{i}@example.com")).await?;
    }
    let status = register("203.0.113.5", "flood-3@example.com".into())
        .await
        .expect_err("over the limit");
    assert_too_many_requests(&status);
    // Refused before any hashing: the user does not exist.
    login_from(&suite, "198.51.100.1", "flood-3@example.com", PASSWORD)
        .await
        .expect_err("not registered");
    // Others are not held back.
    register("203.0.113.6", "flood-3@example.com".into()).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn password_reset_floods_are_refused_per_email_and_per_address() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&["--password-reset-limit-per-address", "8"]).await?;
    let known = "mailbox@example.com";
    suite.register(known, PASSWORD).await?;
    let request_reset = |address: String, email: &str| {
        let mut auth = suite.auth();
        let request = pb::RequestPasswordResetRequest { email: email.into() };
        async move { auth.request_password_reset(from(&address, request)).await.map(drop) }
    };

    // Five mails to one inbox per hour, whoever asks, and the same answers
    // for an email nobody registered.
    for email in [known, "nobody@example.com"] {
        for i in 1..=5 {
            request_reset(format!("203.0.113.{i}"), email).await?;
        }
        let status = request_reset("203.0.113.6".into(), email)
            .await
            .expect_err("over the limit");
        assert_too_many_requests(&status);
    }
    let mails = suite
        .auth_events(None)
        .await?
        .into_iter()
        .filter(|event| matches!(event.payload, Some(Payload::PasswordResetRequested(_))))
        .count();
    assert_eq!(mails, 5);

    // One address may ask for eight emails' resets, then waits.
    for i in 0..8 {
        request_reset("198.51.100.9".into(), &format!("someone-{i}@example.com")).await?;
    }
    let status = request_reset("198.51.100.9".into(), "someone-8@example.com")
        .await
        .expect_err("over the limit");
    assert_too_many_requests(&status);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn service_token_floods_are_refused_without_starving_the_real_client() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&["--service-token-limit", "3"]).await?;
    let issue = |address: &'static str, client_id: &str, secret: &str| {
        let mut auth = suite.auth();
        let request = pb::IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: secret.into(),
            scopes: Vec::new(),
        };
        async move { auth.issue_service_token(from(address, request)).await.map(drop) }
    };

    // Someone guessing the secret of a known client from elsewhere...
    for _ in 0..3 {
        let status = issue("203.0.113.7", TEST_CLIENT_ID, "a guessed secret, wrong")
            .await
            .expect_err("wrong secret");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_too_many_requests(
        &issue("203.0.113.7", TEST_CLIENT_ID, TEST_CLIENT_SECRET)
            .await
            .expect_err("over the limit"),
    );
    // ...or any unknown ids from there, which share one count...
    for i in 0..3 {
        issue("203.0.113.8", &format!("made-up-{i}"), "whatever secret it is")
            .await
            .expect_err("unknown client");
    }
    assert_too_many_requests(
        &issue("203.0.113.8", "made-up-3", "whatever secret it is")
            .await
            .expect_err("over the limit"),
    );

    // ...does not use up the real client's calls, which are limited too.
    for _ in 0..3 {
        issue("192.0.2.20", TEST_CLIENT_ID, TEST_CLIENT_SECRET).await?;
    }
    assert_too_many_requests(
        &issue("192.0.2.20", TEST_CLIENT_ID, TEST_CLIENT_SECRET)
            .await
            .expect_err("over the limit"),
    );
    suite.stop().await
}
