//! The request rules notifications' protos declare (buf.validate), each
//! broken once over gRPC: INVALID_ARGUMENT with the field and the rule,
//! before any handler runs.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel::notifications::v1::{self as pb, notifications_service_client::NotificationsServiceClient};
use keel_testkit::{authorized, status::assert_rule};

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_is_enforced_with_its_field_and_rule() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, user) = suite.signed_in_user().await?;
    let token = user.access_token.as_str();
    let mut notifications = NotificationsServiceClient::new(suite.channel("notifications"));

    let cases: Vec<(&str, Result<(), tonic::Status>, &str, &str)> = vec![
        (
            "list: a negative page size",
            notifications
                .list_notifications(authorized(
                    pb::ListNotificationsRequest {
                        page_size: -1,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
            "page_size",
            "int32.gte",
        ),
        (
            "mark read: not a UUID",
            notifications
                .mark_read(authorized(
                    pb::MarkReadRequest {
                        notification_ids: vec!["x".into()],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
            "notification_ids",
            "string.uuid",
        ),
        (
            "mark read: too many",
            notifications
                .mark_read(authorized(
                    pb::MarkReadRequest {
                        notification_ids: vec!["0190b6a4-0000-7000-8000-000000000000".into(); 101],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
            "notification_ids",
            "repeated.max_items",
        ),
        (
            "preferences: neither me nor a UUID",
            notifications
                .get_preferences(authorized(pb::GetPreferencesRequest { user_id: "x".into() }, token))
                .await
                .map(drop),
            "user_id",
            "string.pattern",
        ),
        (
            "update preferences: none",
            notifications
                .update_preferences(authorized(pb::UpdatePreferencesRequest::default(), token))
                .await
                .map(drop),
            "preferences",
            "required",
        ),
        (
            "update preferences: a channel twice",
            notifications
                .update_preferences(authorized(
                    pb::UpdatePreferencesRequest {
                        preferences: Some(pb::Preferences {
                            user_id: "me".into(),
                            default_channels: vec![pb::Channel::Email as i32, pb::Channel::Email as i32],
                            ..Default::default()
                        }),
                        update_mask: None,
                    },
                    token,
                ))
                .await
                .map(drop),
            "preferences.default_channels",
            "repeated.unique",
        ),
        (
            "create endpoint: not an http(s) URL",
            notifications
                .create_webhook_endpoint(authorized(
                    pb::CreateWebhookEndpointRequest {
                        webhook_endpoint: Some(pb::WebhookEndpoint {
                            url: "ftp://example.com/hook".into(),
                            ..Default::default()
                        }),
                    },
                    token,
                ))
                .await
                .map(drop),
            "webhook_endpoint.url",
            "string.pattern",
        ),
        (
            "create endpoint: an unknown event type",
            notifications
                .create_webhook_endpoint(authorized(
                    pb::CreateWebhookEndpointRequest {
                        webhook_endpoint: Some(pb::WebhookEndpoint {
                            url: "https://example.com/hook".into(),
                            event_types: vec!["order.lost".into()],
                            ..Default::default()
                        }),
                    },
                    token,
                ))
                .await
                .map(drop),
            "webhook_endpoint.event_types",
            "string.in",
        ),
        (
            "delete endpoint: not a UUID",
            notifications
                .delete_webhook_endpoint(authorized(
                    pb::DeleteWebhookEndpointRequest {
                        webhook_endpoint_id: "x".into(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "webhook_endpoint_id",
            "string.uuid",
        ),
    ];
    for (case, result, field, rule) in cases {
        assert_rule(case, result, field, rule);
    }

    // What keeps the rules goes through.
    notifications
        .get_preferences(authorized(pb::GetPreferencesRequest { user_id: "me".into() }, token))
        .await?;
    suite.stop().await
}
