//! The guards that keep a login in mid-hash from outrunning a credential
//! change. The race itself needs unlucky timing; the guards it depends on are
//! checked here directly.

use chrono::Utc;
use keel_auth::store::{
    sessions::{self, NewSession},
    users,
};
use keel_testkit::spawn_suite;

#[tokio::test(flavor = "multi_thread")]
async fn a_session_needs_the_password_hash_that_was_verified() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    suite.register("race@example.com", "the first password").await?;
    let mut conn = suite.auth_db().await?;
    let user = users::find_by_email(&mut conn, "race@example.com")
        .await?
        .expect("registered");
    let session = |id| NewSession {
        id,
        user_id: user.id,
        expires_at: Utc::now() + chrono::Duration::days(1),
        user_agent: "test",
        client_address: "127.0.0.1",
    };

    // Verified against the current hash: the session starts.
    assert!(sessions::insert(&mut conn, session(uuid::Uuid::now_v7()), &user.password_hash, &[1; 32]).await?);

    // The password changed after the hash was verified: no session.
    users::set_password_hash(
        &mut conn,
        user.id,
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
    )
    .await?;
    assert!(!sessions::insert(&mut conn, session(uuid::Uuid::now_v7()), &user.password_hash, &[2; 32]).await?);

    // A hash upgrade from the old hash no longer applies either.
    assert!(!users::upgrade_password_hash(&mut conn, user.id, &user.password_hash, "anything").await?);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_user_gets_no_session_even_with_the_right_hash() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    suite.register("off@example.com", "the first password").await?;
    let mut conn = suite.auth_db().await?;
    let user = users::find_by_email(&mut conn, "off@example.com")
        .await?
        .expect("registered");
    users::disable(&mut conn, user.id).await?;

    let started = sessions::insert(
        &mut conn,
        NewSession {
            id: uuid::Uuid::now_v7(),
            user_id: user.id,
            expires_at: Utc::now() + chrono::Duration::days(1),
            user_agent: "test",
            client_address: "127.0.0.1",
        },
        &user.password_hash,
        &[3; 32],
    )
    .await?;
    assert!(!started);
    suite.stop().await
}
