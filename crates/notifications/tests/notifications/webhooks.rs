//! Signed webhooks to a real HTTP receiver: signatures that verify, the
//! same `webhook-id` on every retry, 500s retried until a 200 (delivered
//! once), 410 disabling the endpoint, a receiver that never answers dead-
//! lettered after the schedule, the SSRF guard, rotation, and who may see
//! and delete an endpoint.

use crate::common;

use std::time::Duration;

use common::{Fixture, User, eventually, fixture, fixture_with};
use keel::notifications::v1 as pb;
use keel_testkit::{
    authorized,
    webhook_receiver::{Answer, WebhookReceiver},
};
use tonic::Code;

/// Creates an endpoint for `user`; returns it and its secret.
async fn endpoint(
    f: &Fixture,
    user: &User,
    url: &str,
    event_types: &[&str],
) -> Result<(pb::WebhookEndpoint, String), tonic::Status> {
    let created = f
        .notifications()
        .create_webhook_endpoint(authorized(
            pb::CreateWebhookEndpointRequest {
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: url.into(),
                    event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
                    description: "tests".into(),
                    ..Default::default()
                }),
            },
            &user.token,
        ))
        .await?
        .into_inner();
    Ok((created.webhook_endpoint.unwrap_or_default(), created.signing_secret))
}

/// The user's endpoint `id` as ListWebhookEndpoints shows it.
async fn listed(f: &Fixture, user: &User, id: &str) -> anyhow::Result<pb::WebhookEndpoint> {
    f.notifications()
        .list_webhook_endpoints(authorized(pb::ListWebhookEndpointsRequest::default(), &user.token))
        .await?
        .into_inner()
        .webhook_endpoints
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| anyhow::anyhow!("endpoint {id} is not listed"))
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_signed_and_500s_are_retried_with_the_same_id_until_delivered_once() -> anyhow::Result<()> {
    let f = fixture().await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    let (created, secret) = endpoint(&f, &user, &receiver.url("/hooks"), &["balance.changed"]).await?;
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created.user_id, user.id);

    receiver.script(&[Answer::Status(500), Answer::Status(500), Answer::Status(200)]);
    f.deposit(&user, 250).await?;
    let received = receiver.wait_for(3, common::PATIENCE).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received_now = receiver.received();
    assert_eq!(received_now.len(), 3, "two failures and one success, nothing more");
    let id = received[0].header("webhook-id").expect("webhook-id");
    for request in &received {
        assert_eq!(request.header("webhook-id").as_deref(), Some(id.as_str()));
        assert!(request.signed_with(&secret), "every attempt is signed");
        assert_eq!(request.header("content-type").as_deref(), Some("application/json"));
        let body = request.json();
        assert_eq!(body["type"], "balance.changed");
        assert_eq!(body["data"]["delta"]["amountMinor"], "250");
    }
    assert!(!received[0].signed_with("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    assert!(
        f.dead_letters()
            .await?
            .iter()
            .all(|d| d.webhook_endpoint_id != created.id)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_disables_the_endpoint_and_tells_its_owner() -> anyhow::Result<()> {
    let f = fixture().await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    let (created, _) = endpoint(&f, &user, &receiver.url("/gone"), &["balance.changed"]).await?;
    receiver.script(&[Answer::Status(410)]);
    f.deposit(&user, 100).await?;
    let notice = f.inbox_of(&user, "webhook_endpoint.disabled", 1).await?;
    assert!(notice[0].body.contains(&receiver.url("/gone")), "{}", notice[0].body);
    let endpoint = listed(&f, &user, &created.id).await?;
    assert!(endpoint.disable_time.is_some());
    assert!(endpoint.disable_reason.contains("410"));

    // Nothing more is sent to it.
    f.deposit(&user, 100).await?;
    f.inbox_of(&user, "balance.changed", 2).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_never_answers_is_dead_lettered_after_the_schedule() -> anyhow::Result<()> {
    let f = fixture_with(&["--webhook-timeout-ms", "300"]).await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    let (created, _) = endpoint(&f, &user, &receiver.url("/slow"), &["balance.changed"]).await?;
    receiver.script(&[Answer::Hang; 8]);
    f.deposit(&user, 100).await?;
    let dead = eventually("a dead letter", || async {
        Ok(f.dead_letters()
            .await?
            .into_iter()
            .find(|d| d.webhook_endpoint_id == created.id))
    })
    .await?;
    assert_eq!(dead.attempt_count, 8, "the Standard Webhooks schedule has 8 attempts");
    assert_eq!(dead.last_http_status, 0, "no answer");
    assert_eq!(dead.channel, pb::Channel::Webhook as i32);
    assert_eq!(dead.user_id, user.id);
    assert_eq!(receiver.received().len(), 8);
    let payload: serde_json::Value = serde_json::from_str(&dead.payload)?;
    assert_eq!(payload["type"], "balance.changed");

    // Redelivered to a receiver that answers now: delivered, same id.
    f.notifications()
        .redeliver_dead_letter(authorized(
            pb::RedeliverDeadLetterRequest {
                dead_letter_id: dead.id.clone(),
            },
            &f.admin,
        ))
        .await?;
    let received = receiver.wait_for(9, common::PATIENCE).await?;
    assert_eq!(received[8].header("webhook-id"), received[0].header("webhook-id"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_and_private_urls_are_refused_unless_the_setting_allows_them() -> anyhow::Result<()> {
    let f = fixture_with(&[]).await?;
    let strict = fixture_with(&["--webhook-allow-private", "false"]).await?;
    let receiver = WebhookReceiver::start().await?;
    let user = strict.user().await?;
    for url in [
        receiver.url("/hooks"),
        "https://127.0.0.1/hooks".to_owned(),
        "https://localhost/hooks".to_owned(),
        "https://10.1.2.3/hooks".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let refused = endpoint(&strict, &user, &url, &[]).await.expect_err(&url);
        assert_eq!(refused.code(), Code::PermissionDenied, "{url}: {refused:?}");
        assert_eq!(keel_testkit::status::reason(&refused), "WEBHOOK_TARGET_FORBIDDEN");
    }
    // IPv6 literals are not in the URL rule at all.
    for url in ["https://[::1]/hooks", "https://[::ffff:127.0.0.1]/hooks"] {
        let refused = endpoint(&strict, &user, url, &[]).await.expect_err(url);
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}: {refused:?}");
    }
    // The permissive suite takes the receiver's loopback URL.
    let other = f.user().await?;
    endpoint(&f, &other, &receiver.url("/hooks"), &[]).await?;
    assert!(receiver.received().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_signs_beside_the_new_one_during_the_overlap() -> anyhow::Result<()> {
    let f = fixture().await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    let (created, old) = endpoint(&f, &user, &receiver.url("/rotating"), &["balance.changed"]).await?;
    let rotated = f
        .notifications()
        .rotate_webhook_endpoint_secret(authorized(
            pb::RotateWebhookEndpointSecretRequest {
                webhook_endpoint_id: created.id.clone(),
                overlap: None,
            },
            &user.token,
        ))
        .await?
        .into_inner();
    assert_ne!(rotated.signing_secret, old);
    assert!(rotated.previous_secret_expire_time.is_some());
    f.deposit(&user, 100).await?;
    let received = receiver.wait_for(1, common::PATIENCE).await?;
    assert!(received[0].signed_with(&old));
    assert!(received[0].signed_with(&rotated.signing_secret));
    assert_eq!(
        received[0].header("webhook-signature").map(|s| s.split(' ').count()),
        Some(2)
    );

    // Retired at once: only the new one signs.
    f.notifications()
        .rotate_webhook_endpoint_secret(authorized(
            pb::RotateWebhookEndpointSecretRequest {
                webhook_endpoint_id: created.id.clone(),
                overlap: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            },
            &user.token,
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn users_see_and_delete_only_their_own_endpoints_and_admins_see_all() -> anyhow::Result<()> {
    let f = fixture().await?;
    let receiver = WebhookReceiver::start().await?;
    let (alice, bob) = (f.user().await?, f.user().await?);
    let (alices, _) = endpoint(&f, &alice, &receiver.url("/a"), &[]).await?;
    let (bobs, _) = endpoint(&f, &bob, &receiver.url("/b"), &[]).await?;

    let list = |token: String| {
        let mut client = f.notifications();
        async move {
            anyhow::Ok(
                client
                    .list_webhook_endpoints(authorized(pb::ListWebhookEndpointsRequest::default(), &token))
                    .await?
                    .into_inner()
                    .webhook_endpoints
                    .into_iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(list(alice.token.clone()).await?, vec![alices.id.clone()]);
    let all = list(f.admin.clone()).await?;
    assert!(all.contains(&alices.id) && all.contains(&bobs.id));

    let delete = |id: String, token: String| {
        let mut client = f.notifications();
        async move {
            client
                .delete_webhook_endpoint(authorized(
                    pb::DeleteWebhookEndpointRequest {
                        webhook_endpoint_id: id,
                    },
                    &token,
                ))
                .await
        }
    };
    let denied = delete(bobs.id.clone(), alice.token.clone())
        .await
        .expect_err("not hers");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unknown = delete(uuid::Uuid::now_v7().to_string(), alice.token.clone())
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::PermissionDenied, "existence is not revealed");
    let malformed = delete("nope".into(), alice.token.clone()).await.expect_err("malformed");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    delete(alices.id.clone(), alice.token.clone()).await?;
    assert!(list(alice.token.clone()).await?.is_empty());

    // A deleted endpoint receives nothing.
    f.deposit(&alice, 100).await?;
    f.inbox_of(&alice, "balance.changed", 1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().iter().all(|r| r.path != "/a"));

    let bad = endpoint(&f, &alice, &receiver.url("/x"), &["no.such.type"])
        .await
        .expect_err("bad type");
    assert_eq!(bad.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_failing_for_longer_than_allowed_is_disabled_and_its_owner_told() -> anyhow::Result<()> {
    // "For days" is zero seconds here: the first failure is already too long.
    let f = fixture_with(&["--webhook-disable-after-secs", "0"]).await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    let (created, _) = endpoint(&f, &user, &receiver.url("/failing"), &["balance.changed"]).await?;
    receiver.script(&[Answer::Status(500); 8]);
    f.deposit(&user, 100).await?;
    let notice = f.inbox_of(&user, "webhook_endpoint.disabled", 1).await?;
    assert!(notice[0].body.contains(&receiver.url("/failing")), "{}", notice[0].body);
    let endpoint = listed(&f, &user, &created.id).await?;
    assert!(endpoint.disable_time.is_some());
    assert!(
        endpoint.disable_reason.contains("failed"),
        "{}",
        endpoint.disable_reason
    );
    // What was queued for it is dropped: no more attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    Ok(())
}
