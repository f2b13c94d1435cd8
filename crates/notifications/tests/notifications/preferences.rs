//! Preferences: defaults, updates by field mask with etags, validation, who
//! may change whose, and the fan-out honouring them.

use crate::common;

use std::time::Duration;

use common::fixture;
use keel::notifications::v1::{self as pb, Channel};
use keel_testkit::{authorized, webhook_receiver::WebhookReceiver};
use tonic::Code;

fn update(
    user_id: &str,
    etag: &str,
    defaults: &[Channel],
    overrides: &[(&str, &[Channel])],
    mask: &[&str],
) -> pb::UpdatePreferencesRequest {
    pb::UpdatePreferencesRequest {
        preferences: Some(pb::Preferences {
            user_id: user_id.into(),
            default_channels: defaults.iter().map(|c| *c as i32).collect(),
            event_types: overrides
                .iter()
                .map(|(t, cs)| pb::EventTypeChannels {
                    event_type: (*t).into(),
                    channels: cs.iter().map(|c| *c as i32).collect(),
                })
                .collect(),
            etag: etag.into(),
            update_time: None,
        }),
        update_mask: (!mask.is_empty()).then(|| prost_types::FieldMask {
            paths: mask.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn preferences_default_to_every_channel_and_change_by_mask_and_etag() -> anyhow::Result<()> {
    let f = fixture().await?;
    let user = f.user().await?;
    let mut client = f.notifications();
    let defaults = client
        .get_preferences(authorized(
            pb::GetPreferencesRequest { user_id: "me".into() },
            &user.token,
        ))
        .await?
        .into_inner()
        .preferences
        .expect("preferences");
    assert_eq!(defaults.user_id, user.id);
    assert_eq!(defaults.default_channels.len(), 3);
    assert!(defaults.event_types.is_empty());
    assert!(defaults.update_time.is_none());

    let updated = client
        .update_preferences(authorized(
            update(
                "me",
                &defaults.etag,
                &[],
                &[("balance.changed", &[Channel::InApp])],
                &["event_types"],
            ),
            &user.token,
        ))
        .await?
        .into_inner()
        .preferences
        .expect("preferences");
    assert_eq!(updated.default_channels.len(), 3, "not in the mask, unchanged");
    assert_eq!(updated.event_types.len(), 1);
    assert_ne!(updated.etag, defaults.etag);
    assert!(updated.update_time.is_some());

    // The old etag no longer matches.
    let stale = client
        .update_preferences(authorized(
            update("me", &defaults.etag, &[Channel::Email], &[], &["default_channels"]),
            &user.token,
        ))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);

    for bad in [
        update("me", "", &[Channel::Unspecified], &[], &["default_channels"]),
        update("me", "", &[Channel::Email, Channel::Email], &[], &["default_channels"]),
        update("me", "", &[], &[("no.such.type", &[])], &["event_types"]),
        update("me", "", &[], &[], &["etag"]),
        update("not-an-id", "", &[], &[], &[]),
    ] {
        let refused = client
            .update_preferences(authorized(bad.clone(), &user.token))
            .await
            .expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument, "{bad:?}");
    }

    // An event type listed twice takes its last entry.
    let twice = client
        .update_preferences(authorized(
            update(
                "me",
                "",
                &[],
                &[("order.paid", &[]), ("order.paid", &[Channel::InApp])],
                &["event_types"],
            ),
            &user.token,
        ))
        .await?
        .into_inner()
        .preferences
        .expect("preferences");
    assert_eq!(twice.event_types.len(), 1);
    assert_eq!(twice.event_types[0].channels, [Channel::InApp as i32]);

    // Another user's: refused for a user, allowed for an admin.
    let other = f.user().await?;
    let denied = client
        .get_preferences(authorized(
            pb::GetPreferencesRequest {
                user_id: other.id.clone(),
            },
            &user.token,
        ))
        .await
        .expect_err("not theirs");
    assert_eq!(denied.code(), Code::PermissionDenied);
    client
        .get_preferences(authorized(
            pb::GetPreferencesRequest {
                user_id: other.id.clone(),
            },
            &f.admin,
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_go_out_only_on_the_channels_the_user_chose() -> anyhow::Result<()> {
    let f = fixture().await?;
    let receiver = WebhookReceiver::start().await?;
    let user = f.user().await?;
    f.mail_to(&user.email, 2).await?;
    f.notifications()
        .create_webhook_endpoint(authorized(
            pb::CreateWebhookEndpointRequest {
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: receiver.url("/prefs"),
                    ..Default::default()
                }),
            },
            &user.token,
        ))
        .await?;
    // Balance changes: webhook only. Everything else: nothing at all.
    f.notifications()
        .update_preferences(authorized(
            update("me", "", &[], &[("balance.changed", &[Channel::Webhook])], &[]),
            &user.token,
        ))
        .await?;
    f.deposit(&user, 500).await?;
    let received = receiver.wait_for(1, common::PATIENCE).await?;
    assert_eq!(received[0].json()["type"], "balance.changed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inbox = f.inbox(&user, false).await?;
    assert!(inbox.notifications.iter().all(|n| n.event_type != "balance.changed"));
    assert_eq!(
        f.smtp.messages().iter().filter(|m| m.to.contains(&user.email)).count(),
        2
    );
    Ok(())
}
