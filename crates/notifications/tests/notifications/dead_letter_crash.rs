//! A crash half-way through dead-lettering: the delivery marked dead, its
//! dead letter not yet written. The test hook stops the workers there as a
//! killed process would; what is left is a live delivery, and after a
//! restart its dead letter, listed. Never a dead delivery no admin can see.

use crate::common;

use common::{Fixture, User, eventually, fixture_with};
use diesel::{ExpressionMethods as _, QueryDsl as _, SelectableHelper as _};
use diesel_async::RunQueryDsl as _;
use keel::notifications::v1 as pb;
use keel_notifications::{
    domain::{Channel, DeliveryState},
    schema::{dead_letters, deliveries},
    store::deliveries::DeliveryRow,
};
use keel_testkit::{
    authorized,
    webhook_receiver::{Answer, WebhookReceiver},
};

/// The user's webhook deliveries.
async fn webhook_deliveries(f: &Fixture, user: &User) -> anyhow::Result<Vec<DeliveryRow>> {
    let mut conn = f.suite.db("notifications").await?;
    Ok(deliveries::table
        .filter(deliveries::user_id.eq(uuid::Uuid::parse_str(&user.id)?))
        .filter(deliveries::channel.eq(Channel::Webhook))
        .select(DeliveryRow::as_select())
        .load(&mut conn)
        .await?)
}

/// Every delivery of the user's is live (pending or finished) or dead with
/// a dead letter an admin sees, never dead without one.
async fn live_or_listed(f: &Fixture, user: &User) -> anyhow::Result<()> {
    let mut conn = f.suite.db("notifications").await?;
    for delivery in webhook_deliveries(f, user).await? {
        let listed: i64 = dead_letters::table
            .filter(dead_letters::delivery_id.eq(delivery.id))
            .filter(dead_letters::redeliver_time.is_null())
            .count()
            .get_result(&mut conn)
            .await?;
        match delivery.state {
            DeliveryState::Dead => {
                anyhow::ensure!(listed == 1, "dead delivery {} has {listed} dead letters", delivery.id)
            }
            _ => anyhow::ensure!(listed == 0, "live delivery {} has {listed} dead letters", delivery.id),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_while_dead_lettering_leaves_a_live_delivery_then_a_listed_dead_letter() -> anyhow::Result<()> {
    let mut f = fixture_with(&["--test-crash-after", "marking-dead"]).await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    let created = f
        .notifications()
        .create_webhook_endpoint(authorized(
            pb::CreateWebhookEndpointRequest {
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: receiver.url("/failing"),
                    event_types: vec!["balance.changed".into()],
                    ..Default::default()
                }),
            },
            &user.token,
        ))
        .await?
        .into_inner()
        .webhook_endpoint
        .unwrap_or_default();
    // Every attempt of the schedule fails, and the one after the restart.
    receiver.script(&[Answer::Status(500); 9]);
    f.deposit(&user, 100).await?;

    // The eighth attempt fails for good: its dead-lettering reaches the
    // hook, and the workers stop there with nothing of it committed.
    receiver.wait_for(8, common::PATIENCE).await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let deliveries = webhook_deliveries(&f, &user).await?;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].state, DeliveryState::Pending, "still live");
    assert_eq!(deliveries[0].attempt_count, 8);
    assert!(
        f.dead_letters()
            .await?
            .iter()
            .all(|d| d.webhook_endpoint_id != created.id)
    );
    live_or_listed(&f, &user).await?;

    // The process is gone; then it starts again, without the hook.
    f.suite.stop_service("notifications").await?;
    live_or_listed(&f, &user).await?;
    f.suite.set_flag("notifications", "--test-crash-after", "never");
    f.suite.start("notifications").await?;

    // Once the lease of the lost attempt ends, the delivery is tried again
    // and, failing, dead-lettered and listed.
    let dead = eventually("the dead letter listed", || async {
        Ok(f.dead_letters()
            .await?
            .into_iter()
            .find(|d| d.webhook_endpoint_id == created.id))
    })
    .await?;
    assert_eq!(dead.attempt_count, 9, "the attempt the crash cut short was made again");
    assert_eq!(dead.last_http_status, 500);
    assert_eq!(receiver.received().len(), 9);
    let deliveries = webhook_deliveries(&f, &user).await?;
    assert_eq!(deliveries[0].state, DeliveryState::Dead);
    live_or_listed(&f, &user).await
}
