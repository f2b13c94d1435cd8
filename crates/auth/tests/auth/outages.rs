//! A call whose database connection is cut while it runs answers UNAVAILABLE,
//! which standard clients retry; the retry, with the same request id, applies
//! once.

use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl as _;
use keel::auth::v1::RegisterRequest;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_query_cut_off_mid_call_is_unavailable_and_the_retry_applies_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let request = RegisterRequest {
        request_id: "cut-off".into(),
        email: "cut-off@example.com".into(),
        password: "a perfectly fine password".into(),
    };

    // Hold the users table so Register's query waits on the lock...
    let mut holder = suite.auth_db().await?;
    diesel::sql_query("BEGIN").execute(&mut holder).await?;
    diesel::sql_query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await?;
    let mut auth = suite.auth();
    let call = tokio::spawn({
        let request = request.clone();
        async move { auth.register(request).await }
    });

    // ...then end that waiting backend, as a Postgres restart or failover would.
    let mut admin = suite.auth_db().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ended: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock')",
        ))
        .get_result(&mut admin)
        .await?;
        if ended > 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Register never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = call.await?.expect_err("the call lost its connection");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    diesel::sql_query("ROLLBACK").execute(&mut holder).await?;

    // A retrying client (as gRPC's retry policy does for UNAVAILABLE, with
    // backoff) gets the user registered, once.
    let mut attempt = 0;
    let user = loop {
        attempt += 1;
        match suite.auth().register(request.clone()).await {
            Ok(response) => break response.into_inner().user,
            Err(status) if status.code() == Code::Unavailable && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(status) => anyhow::bail!("retry {attempt}: {status:?}"),
        }
    };
    let again = suite.auth().register(request).await?.into_inner().user;
    assert_eq!(user.map(|u| u.id), again.map(|u| u.id));
    let users: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
        "(SELECT count(*) FROM users WHERE email = 'cut-off@example.com')",
    ))
    .get_result(&mut admin)
    .await?;
    assert_eq!(users, 1);
    suite.stop().await
}
