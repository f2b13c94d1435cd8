//! Accounts forgets the events it applied after the processed events
//! retention, and refuses events older than that (less the clock skew
//! margin), so a redelivery it accepts is always still recognised.

use std::time::{Duration, SystemTime};

use chrono::Utc;
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::events::v1::{DeliverRequest, Event, UserRegistered, event::Payload, event_sink_client::EventSinkClient};
use keel_accounts::schema::accounts;
use keel_platform::events::{
    processed_events,
    retention::{self, CLOCK_SKEW_MARGIN, DEFAULT_PROCESSED_EVENTS_RETENTION},
};
use keel_testkit::status::{metadata, reason, violated_fields};
use keel_testkit::{Suite, authorized, spawn_suite};
use tonic::{Code, Status};
use uuid::Uuid;

/// The oldest event accounts accepts with the default retention.
const HORIZON: Duration = DEFAULT_PROCESSED_EVENTS_RETENTION.saturating_sub(CLOCK_SKEW_MARGIN);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A UserRegistered from auth for `user_id`, created `age` ago (None: with
/// no create_time).
fn user_registered(event_id: Uuid, user_id: Uuid, age: Option<Duration>) -> DeliverRequest {
    DeliverRequest {
        event: Some(Event {
            id: event_id.to_string(),
            source: "auth".into(),
            create_time: age.map(|age| (SystemTime::now() - age).into()),
            payload: Some(Payload::UserRegistered(UserRegistered {
                user_id: user_id.to_string(),
                email: format!("{user_id}@example.com"),
            })),
            ..Default::default()
        }),
    }
}

/// Delivers `request` as auth's relay; returns `duplicate`.
async fn deliver(suite: &Suite, request: DeliverRequest) -> Result<bool, Status> {
    let token = suite
        .auth_relay_token()
        .await
        .map_err(|err| Status::internal(format!("{err:#}")))?;
    let mut sink = EventSinkClient::new(suite.accounts_channel());
    Ok(sink.deliver(authorized(request, &token)).await?.into_inner().duplicate)
}

async fn has_account(suite: &Suite, user_id: Uuid) -> anyhow::Result<bool> {
    let count: i64 = accounts::table
        .filter(accounts::id.eq(user_id))
        .count()
        .get_result(&mut suite.accounts_db().await?)
        .await?;
    Ok(count == 1)
}

/// The ids in accounts' processed_events among `ids`.
async fn processed_among(suite: &Suite, ids: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
    let mut kept: Vec<Uuid> = processed_events::table
        .filter(processed_events::event_id.eq_any(ids))
        .select(processed_events::event_id)
        .load(&mut suite.accounts_db().await?)
        .await?;
    kept.sort();
    Ok(kept)
}

/// Records `event_id` as processed `age` ago.
async fn processed_ago(suite: &Suite, event_id: Uuid, age: Duration) -> anyhow::Result<()> {
    diesel::insert_into(processed_events::table)
        .values((
            processed_events::event_id.eq(event_id),
            processed_events::processed_at.eq(Utc::now() - chrono::Duration::from_std(age)?),
        ))
        .on_conflict(processed_events::event_id)
        .do_update()
        .set(processed_events::processed_at.eq(Utc::now() - chrono::Duration::from_std(age)?))
        .execute(&mut suite.accounts_db().await?)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn processed_events_past_the_retention_are_pruned_and_newer_ones_kept() -> anyhow::Result<()> {
    let mut suite = spawn_suite().await?;
    suite.stop_service("accounts").await?;
    let old: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let young: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    for id in &old {
        processed_ago(
            &suite,
            *id,
            DEFAULT_PROCESSED_EVENTS_RETENTION + Duration::from_secs(60),
        )
        .await?;
    }
    processed_ago(
        &suite,
        young[0],
        DEFAULT_PROCESSED_EVENTS_RETENTION - Duration::from_secs(600),
    )
    .await?;
    processed_ago(&suite, young[1], Duration::ZERO).await?;
    let all: Vec<Uuid> = old.iter().chain(&young).copied().collect();

    // A consuming service prunes as it starts.
    suite.start_accounts().await?;
    let mut kept = Vec::new();
    for _ in 0..100 {
        kept = processed_among(&suite, &all).await?;
        if kept.len() == young.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut expected = young.clone();
    expected.sort();
    assert_eq!(kept, expected, "only the rows past the retention go");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_redelivered_within_the_retention_is_still_a_duplicate() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (event_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());
    // Just inside the horizon: created, and applied, long ago.
    let age = HORIZON - Duration::from_secs(600);
    assert!(!deliver(&suite, user_registered(event_id, user_id, Some(age))).await?);
    assert!(has_account(&suite, user_id).await?);
    processed_ago(&suite, event_id, age).await?;

    // Pruning keeps its row, so the late redelivery changes nothing.
    let pool = keel_platform::db::pool(suite.accounts_database_url(), &Default::default())?;
    retention::prune(&pool, DEFAULT_PROCESSED_EVENTS_RETENTION, retention::PRUNE_BATCH).await?;
    assert_eq!(processed_among(&suite, &[event_id]).await?, [event_id]);
    let accounts_before: i64 = accounts::table
        .count()
        .get_result(&mut suite.accounts_db().await?)
        .await?;
    assert!(
        deliver(&suite, user_registered(event_id, Uuid::now_v7(), Some(age))).await?,
        "a duplicate"
    );
    let accounts_after: i64 = accounts::table
        .count()
        .get_result(&mut suite.accounts_db().await?)
        .await?;
    assert_eq!(accounts_after, accounts_before);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_past_the_horizon_is_refused_and_applies_nothing() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (event_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());
    let age = HORIZON + Duration::from_secs(60);

    let status = deliver(&suite, user_registered(event_id, user_id, Some(age)))
        .await
        .expect_err("too old to be told from a redelivery");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "EVENT_TOO_OLD");
    assert_eq!(metadata(&status, "event_id"), Some(event_id.to_string()));
    let reported: u64 = metadata(&status, "event_age_secs").unwrap_or_default().parse()?;
    assert!(reported >= age.as_secs(), "{reported}");
    assert_eq!(metadata(&status, "max_age_secs"), Some(HORIZON.as_secs().to_string()));
    assert!(!has_account(&suite, user_id).await?);
    assert!(
        processed_among(&suite, &[event_id]).await?.is_empty(),
        "nothing recorded"
    );

    // Even an event applied before: it is refused, not answered as a duplicate
    // it may no longer be known to be.
    let applied = Uuid::now_v7();
    assert!(!deliver(&suite, user_registered(applied, Uuid::now_v7(), Some(DAY))).await?);
    let status = deliver(&suite, user_registered(applied, Uuid::now_v7(), Some(age)))
        .await
        .expect_err("too old");
    assert_eq!(reason(&status), "EVENT_TOO_OLD");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_without_a_create_time_is_invalid() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (event_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());
    let status = deliver(&suite, user_registered(event_id, user_id, None))
        .await
        .expect_err("its age is unknown");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["event.create_time"]);
    assert!(!has_account(&suite, user_id).await?);

    // Created a little in the future (a producer's clock ahead): accepted.
    let ahead = DeliverRequest {
        event: user_registered(event_id, user_id, None).event.map(|event| Event {
            create_time: Some((SystemTime::now() + Duration::from_secs(30)).into()),
            ..event
        }),
    };
    assert!(!deliver(&suite, ahead).await?);
    assert!(has_account(&suite, user_id).await?);
    suite.stop().await
}
