//! No usable secret at rest: whoever holds a copy of the databases (a backup)
//! finds no one-time token that ResetPassword or VerifyEmail accepts, and no
//! signing key without the key-encryption key, which lives in the
//! environment.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl as _;
use keel::auth::v1::{self as pb};
use keel_auth::{
    keys::{self, KeyRing, NewKey},
    store::signing_keys,
};
use keel_platform::{config::PoolConfig, db::SecretBytes, sealing::SealingKey};
use keel_testkit::{Suite, status::reason};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    text: String,
}

/// Every row of every table in every database of the suite, as Postgres
/// writes them out (what a dump holds), with `bytea` values decoded back to
/// their bytes.
async fn everything_stored(suite: &Suite) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut rows = Vec::new();
    for name in suite.service_names() {
        let mut conn = suite.db(name).await?;
        let tables: Vec<Row> = diesel::sql_query(
            "SELECT quote_ident(table_name) AS text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .load(&mut conn)
        .await?;
        assert!(tables.len() > 2, "{name}'s tables are found");
        for table in tables {
            let dumped: Vec<Row> = diesel::sql_query(format!("SELECT t::text AS text FROM {} t", table.text))
                .load(&mut conn)
                .await?;
            for row in dumped {
                rows.extend(decoded_bytea(&row.text));
                rows.push(row.text.into_bytes());
            }
        }
    }
    Ok(rows)
}

/// The bytes of each `\x...` (bytea hex) value in a row's text.
fn decoded_bytea(row: &str) -> Vec<Vec<u8>> {
    row.split("\\\\x")
        .skip(1)
        .map(|rest| {
            let hex: Vec<u8> = rest.bytes().take_while(u8::is_ascii_hexdigit).collect();
            hex.chunks_exact(2)
                .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
                .collect()
        })
        .collect()
}

/// Everything in `rows` shaped like a one-time token: 43 characters of the
/// base64url alphabet (32 random bytes).
fn token_shaped(rows: &[Vec<u8>]) -> BTreeSet<String> {
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let mut found = BTreeSet::new();
    for row in rows {
        for run in row.split(|b| !alphabet(b)).filter(|run| run.len() >= 43) {
            for window in run.windows(43) {
                found.insert(String::from_utf8_lossy(window).into_owned());
            }
        }
    }
    found
}

/// The text of the password-reset mail to `address`, once it is written.
async fn wait_for_reset_mail(suite: &keel_testkit::Suite, address: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reset = suite
            .mail_to(address)?
            .into_iter()
            .filter_map(|mail| mail.text_body())
            .find(|text| text.contains("ResetPassword") || text.contains("resetPassword"));
        if let Some(text) = reset {
            return Ok(text);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no reset mail to {address}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_reset_request_no_table_holds_a_token_that_reset_password_or_verify_email_accepts() -> anyhow::Result<()>
{
    // Notifications runs: its tables (the deliveries that carry the event
    // to the mail) are scanned too.
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("victim@example.com", PASSWORD).await?;
    let request = pb::RequestPasswordResetRequest {
        email: "victim@example.com".into(),
    };
    suite.auth().request_password_reset(request).await?;
    // Once the reset mail is written, everything that carried it has stored
    // what it keeps.
    let reset_mail = wait_for_reset_mail(&suite, "victim@example.com").await?;

    let stored = everything_stored(&suite).await?;
    let candidates = token_shaped(&stored);
    assert!(
        !candidates.is_empty(),
        "the scan sees token-shaped values (hashes, ids)"
    );
    println!(
        "tried {} token-shaped values found in {} stored rows",
        candidates.len(),
        stored.len()
    );
    for candidate in &candidates {
        let reset = pb::ResetPasswordRequest {
            token: candidate.clone(),
            new_password: "the attacker's password".into(),
        };
        let status = suite
            .auth()
            .reset_password(reset)
            .await
            .expect_err("no stored token resets");
        // Unknown (UNAUTHENTICATED), or not even shaped like a token.
        assert!(
            [
                (Code::Unauthenticated, "INVALID_TOKEN"),
                (Code::InvalidArgument, "INVALID_ARGUMENT")
            ]
            .contains(&(status.code(), reason(&status).as_str())),
            "{status:?}"
        );
        let verify = pb::VerifyEmailRequest {
            token: candidate.clone(),
        };
        let status = suite
            .auth()
            .verify_email(verify)
            .await
            .expect_err("no stored token verifies");
        assert!(
            [Code::Unauthenticated, Code::InvalidArgument].contains(&status.code()),
            "{status:?}"
        );
    }

    // The mailed token exists and works: only the mail carries it.
    let mut mailed: Vec<String> = reset_mail
        .split_whitespace()
        .map(|word| word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_'))
        .filter(|word| word.len() == 43)
        .map(str::to_owned)
        .collect();
    // The mail shows it, then the call to send it in.
    mailed.sort();
    mailed.dedup();
    assert_eq!(mailed.len(), 1, "{reset_mail}");
    assert!(!candidates.contains(&mailed[0]), "the token itself is stored nowhere");
    let reset = pb::ResetPasswordRequest {
        token: mailed[0].clone(),
        new_password: "the owner's new password".into(),
    };
    suite.auth().reset_password(reset).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_token_has_expired_is_deleted_delivered_or_not() -> anyhow::Result<()> {
    let mut suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("expiring@example.com", PASSWORD).await?;
    let request = pb::RequestPasswordResetRequest {
        email: "expiring@example.com".into(),
    };
    suite.auth().request_password_reset(request).await?;
    // Auth (and its relay) down; the reset token's time passes.
    suite.stop_service("auth").await?;
    let mut conn = suite.db("auth").await?;
    let expired = diesel::sql_query(
        "UPDATE outbox SET discard_after = now() - interval '1 second' \
         WHERE event_type = 'user.password_reset_requested'",
    )
    .execute(&mut conn)
    .await?;
    assert_eq!(expired, 1);
    let kept: Vec<Row> = diesel::sql_query("SELECT event_type AS text FROM outbox ORDER BY event_type")
        .load(&mut conn)
        .await?;
    assert_eq!(kept.len(), 3);

    // The relay prunes as it starts.
    suite.start("auth").await?;
    let mut left = Vec::new();
    for _ in 0..100 {
        left = diesel::sql_query("SELECT event_type AS text FROM outbox ORDER BY event_type")
            .load::<Row>(&mut conn)
            .await?
            .into_iter()
            .map(|row| row.text)
            .collect();
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        vec!["user.email_verification_requested", "user.registered"],
        "only the expired one goes"
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_are_sealed_and_useless_without_the_key_encryption_key() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let kek = suite
        .auth_config()
        .key_encryption_key
        .clone()
        .expect("the suite runs auth with a key-encryption key");
    let mut conn = suite.auth_db().await?;
    let stored = signing_keys::newest(&mut conn, i64::MAX).await?;
    assert_eq!(stored.len(), 1);
    let key = &stored[0];
    assert_eq!(key.sealed_with.as_deref(), Some(kek.id()));
    let plain = keys::open_private_key(key, Some(&kek))?;
    let sealed = key
        .private_key
        .as_ref()
        .map(SecretBytes::expose)
        .expect("a private key");
    assert!(
        !sealed.windows(32).any(|w| plain.windows(32).any(|p| p == w)),
        "no part of the key is stored in the clear"
    );

    // Auth refuses to start without the key-encryption key, or with another.
    let (issuer, audience) = (
        &suite.auth_config().service.tokens.token_issuer,
        &suite.auth_config().service.tokens.token_audience,
    );
    let pool = keel_platform::db::pool(suite.auth_database_url(), &PoolConfig::default())?;
    let refused = KeyRing::load(&pool, issuer, audience, None).await.expect_err("no kek");
    assert!(
        format!("{refused:#}").contains("set KEEL_AUTH_KEY_ENCRYPTION_KEY"),
        "{refused:#}"
    );
    let (other, _) = SealingKey::generate()?;
    let refused = KeyRing::load(&pool, issuer, audience, Some(other))
        .await
        .expect_err("another kek");
    assert!(
        format!("{refused:#}").contains("KEEL_AUTH_KEY_ENCRYPTION_KEY is"),
        "{refused:#}"
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_encryption_key_seals_the_keys_stored_before_it() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let kek = suite.auth_config().key_encryption_key.clone();
    let mut conn = suite.auth_db().await?;
    // A key written by an auth that ran without one.
    let plain = NewKey::generate(None)?;
    signing_keys::insert(&mut conn, &plain).await?;
    let pool = keel_platform::db::pool(suite.auth_database_url(), &PoolConfig::default())?;
    let tokens = &suite.auth_config().service.tokens;
    KeyRing::load(&pool, &tokens.token_issuer, &tokens.token_audience, kek.clone()).await?;

    let stored = signing_keys::newest(&mut conn, i64::MAX).await?;
    assert_eq!(stored.len(), 2);
    for key in &stored {
        assert_eq!(
            key.sealed_with.as_deref(),
            kek.as_ref().map(SealingKey::id),
            "{}",
            key.kid
        );
    }
    let sealed = stored.iter().find(|k| k.kid == plain.kid).expect("the plain key");
    assert_ne!(
        sealed.private_key.as_ref().map(SecretBytes::expose),
        Some(plain.private_key.expose())
    );
    assert_eq!(
        keys::open_private_key(sealed, kek.as_ref())?,
        plain.private_key.expose()
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_private_key_is_deleted_once_every_token_it_signed_has_expired() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let kek = suite.auth_config().key_encryption_key.clone();
    let tokens = &suite.auth_config().service.tokens;
    let pool = keel_platform::db::pool(suite.auth_database_url(), &PoolConfig::default())?;
    let mut conn = suite.auth_db().await?;
    let first = signing_keys::newest(&mut conn, 1).await?.remove(0);
    let second = NewKey::generate(kek.as_ref())?;
    signing_keys::insert(&mut conn, &second).await?;
    let private_keys = async |conn: &mut diesel_async::AsyncPgConnection| -> anyhow::Result<Vec<(String, bool)>> {
        let keys = signing_keys::newest(conn, i64::MAX).await?;
        Ok(keys.into_iter().map(|k| (k.kid, k.private_key.is_some())).collect())
    };
    let backdate = async |conn: &mut diesel_async::AsyncPgConnection, kid: &str, minutes: i32| {
        diesel::sql_query("UPDATE signing_keys SET created_at = now() - make_interval(mins => $2) WHERE kid = $1")
            .bind::<Text, _>(kid)
            .bind::<diesel::sql_types::Integer, _>(minutes)
            .execute(conn)
            .await
    };
    backdate(&mut conn, &first.kid, 60).await?;

    // The second key has signed for a while, but tokens the first signed may
    // still be live: both private keys stay.
    backdate(&mut conn, &second.kid, 10).await?;
    let ring = KeyRing::load(&pool, &tokens.token_issuer, &tokens.token_audience, kek.clone()).await?;
    assert_eq!(
        private_keys(&mut conn).await?,
        vec![(second.kid.clone(), true), (first.kid.clone(), true)]
    );

    // Past the first key's last token: its private key goes, the public key
    // is still published, and the second key signs.
    backdate(&mut conn, &second.kid, 17).await?;
    ring.reload(&pool).await?;
    assert_eq!(
        private_keys(&mut conn).await?,
        vec![(second.kid.clone(), true), (first.kid.clone(), false)]
    );
    let kids: Vec<String> = ring.jwks().await.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec![second.kid.clone(), first.kid.clone()]);
    let roles = keel_auth::domain::Roles::from_names(&["user".into()]);
    let (signed, _) = ring
        .user_token(uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), &roles)
        .await?;
    assert_eq!(
        jsonwebtoken::decode_header(&signed)?.kid.as_deref(),
        Some(second.kid.as_str())
    );
    suite.stop().await
}
