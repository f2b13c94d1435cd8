//! CreateWebhookEndpoint, ListWebhookEndpoints, DeleteWebhookEndpoint and
//! RotateWebhookEndpointSecret.

use std::time::Duration;

use keel::notifications::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    db::paging,
    error::FieldViolation,
    proto::timestamp,
    serve::rpc::{Violations, parse_id},
};

use super::Notifications;
use crate::{
    app::AddEndpoint,
    domain::{Channel, Topic},
    store::endpoints::EndpointRow,
};

pub(super) async fn create_webhook_endpoint(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::CreateWebhookEndpointRequest,
) -> Result<pb::CreateWebhookEndpointResponse, Error> {
    let wanted = request
        .webhook_endpoint
        .ok_or_else(|| Error::invalid_field("webhook_endpoint", "required", "is required"))?;
    let mut violations = Violations::new();
    let event_types = violations.check(event_types(&wanted.event_types));
    let description = violations.check(description(&wanted.description));
    if wanted.url.is_empty() {
        violations.check::<()>(Err(FieldViolation::new(
            "webhook_endpoint.url",
            "required",
            "is required",
        )));
    }
    let (Some(event_types), Some(description), false) = (event_types, description, wanted.url.is_empty()) else {
        return Err(violations.into_error());
    };
    let endpoint = AddEndpoint {
        url: wanted.url,
        event_types,
        description,
    };
    let created = service.add_endpoint(caller.user_id, &endpoint).await?;
    Ok(pb::CreateWebhookEndpointResponse {
        webhook_endpoint: Some(to_proto(&created.endpoint)),
        signing_secret: created.secret.to_whsec(),
    })
}

pub(super) async fn list_webhook_endpoints(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::ListWebhookEndpointsRequest,
) -> Result<pb::ListWebhookEndpointsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let after = paging::decode_token(&request.page_token)?;
    let page = service.endpoints(caller, after, limit).await?;
    Ok(pb::ListWebhookEndpointsResponse {
        webhook_endpoints: page.rows.iter().map(to_proto).collect(),
        next_page_token: page.next.map(paging::encode_token).unwrap_or_default(),
    })
}

pub(super) async fn delete_webhook_endpoint(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::DeleteWebhookEndpointRequest,
) -> Result<pb::DeleteWebhookEndpointResponse, Error> {
    let id = parse_id("webhook_endpoint_id", &request.webhook_endpoint_id)?;
    service.delete_endpoint(caller, id).await?;
    Ok(pb::DeleteWebhookEndpointResponse {})
}

pub(super) async fn rotate_webhook_endpoint_secret(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::RotateWebhookEndpointSecretRequest,
) -> Result<pb::RotateWebhookEndpointSecretResponse, Error> {
    let id = parse_id("webhook_endpoint_id", &request.webhook_endpoint_id)?;
    // Below zero retires the old secret at once, as zero does.
    let overlap = request
        .overlap
        .map(|overlap| Duration::try_from(overlap).unwrap_or(Duration::ZERO));
    let rotated = service.rotate_endpoint_secret(caller, id, overlap).await?;
    Ok(pb::RotateWebhookEndpointSecretResponse {
        webhook_endpoint: Some(to_proto(&rotated.endpoint)),
        signing_secret: rotated.secret.to_whsec(),
        previous_secret_expire_time: rotated.endpoint.previous_secret_expire_time.map(timestamp),
    })
}

fn event_types(raw: &[String]) -> Result<Vec<String>, FieldViolation> {
    let mut chosen: Vec<String> = Vec::with_capacity(raw.len());
    for (i, name) in raw.iter().enumerate() {
        let field = format!("webhook_endpoint.event_types[{i}]");
        let topic = Topic::parse(&field, name)?;
        if !topic.channels().contains(&Channel::Webhook) {
            return Err(FieldViolation::new(
                field,
                "TOPIC_NOT_A_WEBHOOK",
                format!("{name} is not sent as a webhook"),
            ));
        }
        if !chosen.iter().any(|t| t == name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

fn description(raw: &str) -> Result<String, FieldViolation> {
    if raw.chars().count() > 256 || raw.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            "webhook_endpoint.description",
            "DESCRIPTION_INVALID",
            "must be at most 256 characters, with no control characters",
        ));
    }
    Ok(raw.to_owned())
}

fn to_proto(row: &EndpointRow) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: row.id.to_string(),
        user_id: row.user_id.to_string(),
        url: row.url.clone(),
        event_types: row.event_types.clone(),
        description: row.description.clone(),
        create_time: Some(timestamp(row.create_time)),
        disable_time: row.disable_time.map(timestamp),
        disable_reason: row.disable_reason.clone(),
    }
}
