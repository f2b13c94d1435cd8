//! Accounts' EventSink called directly, as a relay would: who may deliver,
//! what a UserRegistered does, and that a redelivered event has no second
//! effect.

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::{
    accounts::v1 as pb,
    events::v1::{
        BalanceChanged, DeliverRequest, Event, OrderShipped, PasswordResetRequested, UserRegistered, event::Payload,
        event_sink_client::EventSinkClient,
    },
};
use keel_accounts::schema::accounts;
use keel_platform::events::processed_events;
use keel_testkit::status::{reason, violated_fields};
use keel_testkit::{Suite, authorized, spawn_suite, suite::TEST_CLIENT_ID};
use tonic::{Code, Status};
use uuid::Uuid;

/// An event envelope from auth.
fn event(id: &str, payload: Payload) -> DeliverRequest {
    event_from("auth", id, payload)
}

/// An event envelope from `source`.
fn event_from(source: &str, id: &str, payload: Payload) -> DeliverRequest {
    DeliverRequest {
        event: Some(Event {
            id: id.into(),
            source: source.into(),
            create_time: Some(std::time::SystemTime::now().into()),
            payload: Some(payload),
            ..Default::default()
        }),
    }
}

fn user_registered(event_id: &str, user_id: &str, email: &str) -> DeliverRequest {
    event(
        event_id,
        Payload::UserRegistered(UserRegistered {
            user_id: user_id.into(),
            email: email.into(),
        }),
    )
}

/// Deliver with `token` (none when empty); returns `duplicate`.
async fn deliver(suite: &Suite, token: &str, request: DeliverRequest) -> Result<bool, Status> {
    let mut sink = EventSinkClient::new(suite.accounts_channel());
    let request = if token.is_empty() {
        tonic::Request::new(request)
    } else {
        authorized(request, token)
    };
    Ok(sink.deliver(request).await?.into_inner().duplicate)
}

/// The stored (email, display name) of an account, if it exists.
async fn stored_account(suite: &Suite, id: Uuid) -> anyhow::Result<Option<(String, String)>> {
    let mut conn = suite.accounts_db().await?;
    let rows: Vec<(String, String)> = accounts::table
        .filter(accounts::id.eq(id))
        .select((accounts::email, accounts::display_name))
        .load(&mut conn)
        .await?;
    Ok(rows.into_iter().next())
}

async fn is_processed(suite: &Suite, event_id: Uuid) -> anyhow::Result<bool> {
    let mut conn = suite.accounts_db().await?;
    let count: i64 = processed_events::table
        .filter(processed_events::event_id.eq(event_id))
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(count == 1)
}

async fn account_count(suite: &Suite) -> anyhow::Result<i64> {
    let mut conn = suite.accounts_db().await?;
    Ok(accounts::table.count().get_result(&mut conn).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn deliver_without_a_token_is_unauthenticated() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let user_id = Uuid::now_v7();

    let status = deliver(
        &suite,
        "",
        user_registered(&Uuid::now_v7().to_string(), &user_id.to_string(), "a@example.com"),
    )
    .await
    .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(stored_account(&suite, user_id).await?, None);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn deliver_with_a_user_token_is_denied() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let user_id = Uuid::now_v7();

    let status = deliver(
        &suite,
        &admin.access_token,
        user_registered(&Uuid::now_v7().to_string(), &user_id.to_string(), "a@example.com"),
    )
    .await
    .expect_err("even an admin is not a relay");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "SCOPE_REQUIRED");
    assert_eq!(stored_account(&suite, user_id).await?, None);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn deliver_without_the_deliver_scope_is_denied() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite
        .service_token(&["accounts.deposit", "accounts.debit", "accounts.refund"])
        .await?;
    let user_id = Uuid::now_v7();

    let status = deliver(
        &suite,
        &token,
        user_registered(&Uuid::now_v7().to_string(), &user_id.to_string(), "a@example.com"),
    )
    .await
    .expect_err("no events.deliver scope");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "SCOPE_REQUIRED");
    assert_eq!(stored_account(&suite, user_id).await?, None);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_cannot_deliver_another_services_events() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    // The test client holds events.deliver, but it is not auth.
    let token = suite.service_token(&["events.deliver"]).await?;
    let user_id = Uuid::now_v7();

    let status = deliver(
        &suite,
        &token,
        user_registered(&Uuid::now_v7().to_string(), &user_id.to_string(), "forged@example.com"),
    )
    .await
    .expect_err("a forged UserRegistered");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "EVENT_SOURCE_MISMATCH");
    assert_eq!(stored_account(&suite, user_id).await?, None);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_cannot_announce_a_user_under_its_own_name() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    // The test client holds events.deliver and names itself as the source,
    // so the token and the source agree; but only auth produces UserRegistered.
    let token = suite.service_token(&["events.deliver"]).await?;
    let (event_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());
    let forged = event_from(
        TEST_CLIENT_ID,
        &event_id.to_string(),
        Payload::UserRegistered(UserRegistered {
            user_id: user_id.to_string(),
            email: "forged@example.com".into(),
        }),
    );
    let accounts_before = account_count(&suite).await?;

    let status = deliver(&suite, &token, forged)
        .await
        .expect_err("a forged UserRegistered");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "EVENT_SOURCE_NOT_OWNER");
    assert_eq!(stored_account(&suite, user_id).await?, None);
    assert_eq!(account_count(&suite).await?, accounts_before);
    assert!(!is_processed(&suite, event_id).await?, "nothing was applied");

    // Auth, its producer, still delivers it.
    let token = suite.auth_relay_token().await?;
    let genuine = user_registered(&event_id.to_string(), &user_id.to_string(), "real@example.com");
    assert!(!deliver(&suite, &token, genuine).await?);
    assert_eq!(
        stored_account(&suite, user_id).await?,
        Some(("real@example.com".into(), String::new()))
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_cannot_deliver_an_event_type_another_service_owns() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    // BalanceChanged is accounts' own; OrderShipped has no registered producer.
    let balance = event(
        &Uuid::now_v7().to_string(),
        Payload::BalanceChanged(BalanceChanged::default()),
    );
    let shipped = event(
        &Uuid::now_v7().to_string(),
        Payload::OrderShipped(OrderShipped::default()),
    );
    for request in [balance, shipped] {
        let status = deliver(&suite, &token, request)
            .await
            .expect_err("not auth's event type");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "EVENT_SOURCE_NOT_OWNER");
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn user_registered_creates_the_account() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    let (event_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());

    let duplicate = deliver(
        &suite,
        &token,
        user_registered(&event_id.to_string(), &user_id.to_string(), "new@example.com"),
    )
    .await?;
    assert!(!duplicate);
    assert_eq!(
        stored_account(&suite, user_id).await?,
        Some(("new@example.com".into(), String::new()))
    );
    assert!(is_processed(&suite, event_id).await?);

    // The account is a real one: an admin reads it over the API.
    let (_, admin) = suite.signed_in_admin().await?;
    let account = suite
        .accounts()
        .get_account(authorized(
            pb::GetAccountRequest {
                account_id: user_id.to_string(),
            },
            &admin.access_token,
        ))
        .await?
        .into_inner()
        .account
        .unwrap_or_default();
    assert_eq!(account.email, "new@example.com");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_event_is_a_duplicate_and_changes_nothing() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    let (event_id, user_id) = (Uuid::now_v7().to_string(), Uuid::now_v7());
    let first = user_registered(&event_id, &user_id.to_string(), "first@example.com");
    assert!(!deliver(&suite, &token, first.clone()).await?);
    let accounts_before = account_count(&suite).await?;

    assert!(deliver(&suite, &token, first).await?, "the same event again");
    // The event id alone decides: a redelivery is never applied again, even
    // if its payload differed.
    let other_user = Uuid::now_v7();
    let altered = user_registered(&event_id, &other_user.to_string(), "second@example.com");
    assert!(deliver(&suite, &token, altered).await?);

    assert_eq!(account_count(&suite).await?, accounts_before);
    assert_eq!(stored_account(&suite, other_user).await?, None);
    assert_eq!(
        stored_account(&suite, user_id).await?,
        Some(("first@example.com".into(), String::new()))
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_with_a_malformed_id_is_invalid() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    let user_id = Uuid::now_v7();

    for event_id in ["not-a-uuid", ""] {
        let status = deliver(
            &suite,
            &token,
            user_registered(event_id, &user_id.to_string(), "a@example.com"),
        )
        .await
        .expect_err("the event id is the idempotency key");
        assert_eq!(status.code(), Code::InvalidArgument, "{event_id:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["event.id"]);
    }
    assert_eq!(stored_account(&suite, user_id).await?, None);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_registered_with_a_malformed_user_id_is_invalid_and_not_recorded() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    let event_id = Uuid::now_v7();

    let status = deliver(
        &suite,
        &token,
        user_registered(&event_id.to_string(), "not-a-uuid", "a@example.com"),
    )
    .await
    .expect_err("not a user id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["event.user_registered.user_id"]);
    assert!(
        !is_processed(&suite, event_id).await?,
        "a failed delivery is not recorded"
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_without_a_payload_is_invalid() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;

    let mut request = event(
        &Uuid::now_v7().to_string(),
        Payload::OrderShipped(OrderShipped::default()),
    );
    if let Some(event) = request.event.as_mut() {
        event.payload = None;
    }
    let status = deliver(&suite, &token, request).await.expect_err("no payload");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["event.payload"]);
    let status = deliver(&suite, &token, DeliverRequest { event: None })
        .await
        .expect_err("no event");
    assert_eq!(violated_fields(&status), ["event"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_irrelevant_event_is_accepted_and_recorded() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    let event_id = Uuid::now_v7();
    // Auth's own, but nothing accounts acts on.
    let reset = event(
        &event_id.to_string(),
        Payload::PasswordResetRequested(PasswordResetRequested {
            user_id: Uuid::now_v7().to_string(),
            email: "someone@example.com".into(),
            ..Default::default()
        }),
    );
    let accounts_before = account_count(&suite).await?;

    assert!(!deliver(&suite, &token, reset.clone()).await?);
    assert!(is_processed(&suite, event_id).await?);
    assert!(
        deliver(&suite, &token, reset).await?,
        "recorded, so a redelivery is a duplicate"
    );
    assert_eq!(account_count(&suite).await?, accounts_before);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn user_registered_fills_in_the_email_of_an_account_created_on_first_access() -> anyhow::Result<()> {
    let (suite, user, tokens) = keel_testkit::spawn_suite_with_withheld_registration().await?;
    let get_me = || {
        let mut accounts = suite.accounts();
        let token = tokens.access_token.clone();
        async move {
            let request = pb::GetAccountRequest {
                account_id: "me".into(),
            };
            let response = accounts.get_account(authorized(request, &token)).await?;
            anyhow::Ok(response.into_inner().account.unwrap_or_default())
        }
    };
    let first = get_me().await?;
    assert_eq!(first.email, "", "created on first access, before the event");

    // The event the relay would have delivered.
    let token = suite.auth_relay_token().await?;
    let duplicate = deliver(
        &suite,
        &token,
        user_registered(&Uuid::now_v7().to_string(), &user.id, &user.email),
    )
    .await?;
    assert!(!duplicate);
    let after = get_me().await?;
    assert_eq!(after.email, user.email);
    assert_eq!(after.create_time, first.create_time, "the same account");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn user_registered_never_overwrites_a_known_email() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    let user_id = Uuid::now_v7().to_string();
    deliver(
        &suite,
        &token,
        user_registered(&Uuid::now_v7().to_string(), &user_id, "first@example.com"),
    )
    .await?;

    // A different event for the same user (a replayed outbox, say).
    let duplicate = deliver(
        &suite,
        &token,
        user_registered(&Uuid::now_v7().to_string(), &user_id, "other@example.com"),
    )
    .await?;
    assert!(!duplicate, "a new event id");
    assert_eq!(
        stored_account(&suite, Uuid::parse_str(&user_id)?).await?,
        Some(("first@example.com".into(), String::new()))
    );
    suite.stop().await
}
