//! Register: input rules, duplicates, idempotency by `request_id` (also under
//! concurrency), and the events it writes to the outbox.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use diesel::QueryDsl as _;
use diesel_async::RunQueryDsl as _;
use keel::{
    auth::v1::{self as pb},
    events::v1::event::Payload,
};
use keel_auth::schema::users;
use keel_platform::events::outbox::outbox;
use keel_testkit::Suite;
use keel_testkit::status::{reason, violated_fields};
use tonic::{Code, Status};

const PASSWORD: &str = "correct horse battery staple";

fn register_request(request_id: &str, email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        request_id: request_id.into(),
        email: email.into(),
        password: password.into(),
    }
}

async fn register(suite: &Suite, request: pb::RegisterRequest) -> Result<pb::User, Status> {
    let response = suite.auth().register(request).await?.into_inner();
    Ok(response.user.expect("a registered user comes back"))
}

async fn user_count(suite: &Suite) -> anyhow::Result<i64> {
    Ok(users::table.count().get_result(&mut suite.auth_db().await?).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn register_creates_an_unverified_user_with_a_normalized_email() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = register(&suite, register_request("r-1", "  Ada.Lovelace@Example.COM ", PASSWORD)).await?;

    assert_eq!(user.email, "ada.lovelace@example.com");
    assert_eq!(user.roles, vec![pb::Role::User as i32]);
    assert!(!user.email_verified);
    assert!(!user.disabled);
    assert!(uuid::Uuid::parse_str(&user.id).is_ok(), "id {:?} is a UUID", user.id);
    assert!(user.create_time.is_some());
    // The normalized address is the one that signs in.
    suite.login("ADA.lovelace@example.com", PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_email_is_invalid_argument_on_the_email_field() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    for bad in ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com"] {
        let status = register(&suite, register_request("", bad, PASSWORD))
            .await
            .expect_err("a malformed email is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        assert_eq!(violated_fields(&status), vec!["email"], "{bad:?}");
        assert_eq!(reason(&status), "INVALID_ARGUMENT");
    }
    assert_eq!(user_count(&suite).await?, 0);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn password_shorter_than_8_characters_is_invalid_argument() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let status = register(&suite, register_request("", "short@example.com", "1234567"))
        .await
        .expect_err("a 7-character password is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["password"]);
    assert_eq!(user_count(&suite).await?, 0);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_field_is_reported_at_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let status = register(&suite, register_request("", "not-an-email", "short"))
        .await
        .expect_err("both fields are bad");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["email", "password"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn long_passphrase_is_accepted() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let passphrase = "correct horse battery staple, and then some more words".repeat(2);
    assert!(passphrase.len() >= 64);
    register(&suite, register_request("", "phrase@example.com", &passphrase)).await?;
    suite.login("phrase@example.com", &passphrase).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn password_longer_than_1024_bytes_is_invalid_argument() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    register(&suite, register_request("", "max@example.com", &"x".repeat(1024))).await?;
    let status = register(&suite, register_request("", "huge@example.com", &"x".repeat(1025)))
        .await
        .expect_err("1025 bytes are refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["password"]);
    assert_eq!(user_count(&suite).await?, 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn registered_email_is_already_exists_email_taken() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    register(&suite, register_request("first", "taken@example.com", PASSWORD)).await?;
    // Another request id, and another spelling of the same address.
    let status = register(
        &suite,
        register_request("second", " TAKEN@example.com", "another password"),
    )
    .await
    .expect_err("the email is taken");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "EMAIL_TAKEN");
    assert_eq!(user_count(&suite).await?, 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_with_the_same_request_id_returns_the_first_user() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let first = register(&suite, register_request("retry-me", "retry@example.com", PASSWORD)).await?;
    let again = register(&suite, register_request("retry-me", "retry@example.com", PASSWORD)).await?;
    assert_eq!(again.id, first.id);
    assert_eq!(again.email, first.email);
    assert_eq!(user_count(&suite).await?, 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn same_request_id_with_another_email_is_failed_precondition() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    register(&suite, register_request("reused", "one@example.com", PASSWORD)).await?;
    let status = register(&suite, register_request("reused", "two@example.com", PASSWORD))
        .await
        .expect_err("the key belongs to another registration");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    assert_eq!(user_count(&suite).await?, 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_retries_with_one_request_id_create_one_user() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let calls = (0..8).map(|_| {
        let mut auth = suite.auth();
        tokio::spawn(async move {
            auth.register(register_request("burst", "burst@example.com", PASSWORD))
                .await
                .map(|response| response.into_inner().user.expect("a user").id)
        })
    });
    let ids = futures::future::join_all(calls)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

    assert_eq!(ids.len(), 8);
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "every retry returns the first user: {ids:?}"
    );
    assert_eq!(user_count(&suite).await?, 1);
    assert_eq!(suite.auth_events(Some("user.registered")).await?.len(), 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn register_writes_registered_and_verification_events_to_the_outbox() -> anyhow::Result<()> {
    // With its consumers down the relay cannot deliver (and so clear) the event.
    let suite = keel_testkit::spawn_suite_with_options(keel_testkit::SuiteOptions {
        withheld: vec!["accounts", "notifications"],
        ..Default::default()
    })
    .await?;
    let user = register(&suite, register_request("events", "Events@Example.com", PASSWORD)).await?;

    let registered = suite.auth_events(Some("user.registered")).await?;
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].source, "auth");
    let Some(Payload::UserRegistered(payload)) = &registered[0].payload else {
        anyhow::bail!("expected UserRegistered, got {:?}", registered[0].payload);
    };
    assert_eq!(payload.user_id, user.id);
    assert_eq!(payload.email, "events@example.com");

    let verification = suite.auth_events(Some("user.email_verification_requested")).await?;
    assert_eq!(verification.len(), 1);
    let Some(Payload::EmailVerificationRequested(payload)) = &verification[0].payload else {
        anyhow::bail!("expected EmailVerificationRequested, got {:?}", verification[0].payload);
    };
    assert_eq!(payload.user_id, user.id);
    assert_eq!(payload.email, "events@example.com");
    // The token is sealed for the service that mails it, and opens there.
    let sealed = payload.sealed_token.as_ref().expect("a sealed token");
    let token = suite.open_token(verification[0].payload.as_ref().expect("a payload"))?;
    assert!(!token.is_empty());
    assert!(
        !sealed.sealed.windows(token.len()).any(|w| w == token.as_bytes()),
        "not in the clear"
    );
    assert!(payload.expire_time.is_some());

    // Nothing else was written.
    let total: i64 = outbox::table.count().get_result(&mut suite.auth_db().await?).await?;
    assert_eq!(total, 2);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_registrations_write_no_events() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    register(&suite, register_request("a", "dup@example.com", PASSWORD)).await?;
    register(&suite, register_request("b", "dup@example.com", PASSWORD))
        .await
        .expect_err("duplicate");
    register(&suite, register_request("a", "dup@example.com", PASSWORD)).await?;
    assert_eq!(suite.auth_events(Some("user.registered")).await?.len(), 1);
    assert_eq!(
        suite
            .auth_events(Some("user.email_verification_requested"))
            .await?
            .len(),
        1
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookalike_of_a_registered_email_is_already_exists() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    register(&suite, register_request("admin", "admin@example.com", PASSWORD)).await?;

    for lookalike in [
        "\u{0430}dmin@example.com", // Cyrillic а
        "\u{03b1}dmin@example.com", // Greek α
        "adm\u{0456}n@ex\u{0430}mple.com",
    ] {
        let status = register(&suite, register_request(lookalike, lookalike, PASSWORD))
            .await
            .expect_err("an address an administrator could not tell from admin@");
        // The answer a plain duplicate gets: nothing more is revealed.
        assert_eq!(status.code(), Code::AlreadyExists, "{lookalike}: {status:?}");
        assert_eq!(reason(&status), "EMAIL_TAKEN");
    }
    assert_eq!(user_count(&suite).await?, 1);
    assert_eq!(suite.auth_events(Some("user.registered")).await?.len(), 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lookalike_registrations_create_one_user() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let emails = ["race@example.com", "r\u{0430}ce@example.com", "rac\u{0435}@example.com"];
    let calls = emails.map(|email| {
        let mut auth = suite.auth();
        tokio::spawn(async move { auth.register(register_request(email, email, PASSWORD)).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut created = 0;
    for result in results {
        match result? {
            Ok(_) => created += 1,
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(
        created, 1,
        "one of the lookalikes wins; the unique skeleton refuses the others"
    );
    assert_eq!(user_count(&suite).await?, 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compatible_form_of_an_email_is_normalized() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    // Fullwidth letters and at sign (NFKC: the same address).
    let fullwidth = "ａｄａ＠example.com";
    let user = register(&suite, register_request("fullwidth", fullwidth, PASSWORD)).await?;
    assert_eq!(user.email, "ada@example.com");

    suite.login("ada@example.com", PASSWORD).await?;
    suite.login(fullwidth, PASSWORD).await?;
    let status = register(&suite, register_request("plain", "ada@example.com", PASSWORD))
        .await
        .expect_err("the same address");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(user_count(&suite).await?, 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn users_stored_before_skeletons_get_one_when_auth_starts() -> anyhow::Result<()> {
    use diesel::ExpressionMethods as _;
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let legacy = uuid::Uuid::now_v7();
    let mut conn = suite.auth_db().await?;
    // A row as an older auth wrote it: no skeleton, and an address that
    // predates NFKC normalization.
    diesel::insert_into(users::table)
        .values((
            users::id.eq(legacy),
            users::email.eq("ｌegacy@example.com"),
            users::password_hash.eq("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaA"),
        ))
        .execute(&mut conn)
        .await?;

    // Building auth (as every start does) fills it in.
    suite
        .create_user("someone@example.com", PASSWORD, &[keel_platform::Role::User])
        .await?;
    let (email, skeleton): (String, Option<String>) = users::table
        .find(legacy)
        .select((users::email, users::email_skeleton))
        .first(&mut conn)
        .await?;
    assert_eq!(email, "legacy@example.com", "normalized");
    assert!(skeleton.is_some());

    let status = register(
        &suite,
        register_request("lookalike", "\u{04cf}egacy@example.com", PASSWORD),
    )
    .await
    .expect_err("looks like the legacy user's address");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    suite.stop().await
}
