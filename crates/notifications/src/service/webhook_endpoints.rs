//! CreateWebhookEndpoint, ListWebhookEndpoints, DeleteWebhookEndpoint and
//! RotateWebhookEndpointSecret.

use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use keel::notifications::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    db::paging,
    proto::timestamp,
    serve::rpc::{Violations, parse_id},
};
use uuid::Uuid;

use super::Notifications;
use crate::{
    domain::Topic,
    store::{
        deliveries,
        endpoints::{self, EndpointRow, NewEndpoint},
    },
    webhook::{secret::SigningSecret, ssrf::Refusal},
};

/// The most endpoints one user may have.
const MAX_ENDPOINTS_PER_USER: usize = 20;

/// The overlap of a rotation when the caller names none.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The longest overlap a rotation may ask for.
const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) async fn create_webhook_endpoint(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::CreateWebhookEndpointRequest,
) -> Result<pb::CreateWebhookEndpointResponse, Error> {
    let wanted = request
        .webhook_endpoint
        .ok_or_else(|| Error::invalid_field("webhook_endpoint", "is required"))?;
    let mut violations = Violations::new();
    let event_types = violations.check(event_types(&wanted.event_types));
    let description = violations.check(description(&wanted.description));
    if wanted.url.is_empty() {
        violations.check::<()>(Err(keel_platform::error::FieldViolation {
            field: "webhook_endpoint.url".into(),
            description: "is required".into(),
        }));
    }
    let (Some(event_types), Some(description), false) = (event_types, description, wanted.url.is_empty()) else {
        return Err(violations.into_error());
    };
    // The URL's rules and where it resolves to now; each delivery checks
    // again, since DNS can change.
    let url = service
        .webhooks
        .check_endpoint(&wanted.url)
        .await
        .map_err(refused_url)?;

    let id = Uuid::now_v7();
    let secret = SigningSecret::generate()?;
    let (sealed, sealed_with) = secret.seal(service.secrets_key.as_ref(), id)?;
    let mut conn = service.pool.get().await?;
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            // Serializes one user's creations, so the cap holds.
            let existing = endpoints::page(conn, Some(caller.user_id), None, MAX_ENDPOINTS_PER_USER as i64 + 1).await?;
            if existing.len() >= MAX_ENDPOINTS_PER_USER {
                return Err(Error::failed_precondition(
                    "TOO_MANY_WEBHOOK_ENDPOINTS",
                    format!("a user may have at most {MAX_ENDPOINTS_PER_USER} webhook endpoints; delete one first"),
                ));
            }
            Ok(endpoints::insert(
                conn,
                &NewEndpoint {
                    id,
                    user_id: caller.user_id,
                    url: url.as_str(),
                    event_types: &event_types,
                    description: &description,
                    secret: &sealed,
                    sealed_with: sealed_with.as_deref(),
                },
            )
            .await?)
        })
        .await?;
    tracing::info!(endpoint_id = %row.id, user_id = %row.user_id, "webhook endpoint created");
    Ok(pb::CreateWebhookEndpointResponse {
        webhook_endpoint: Some(to_proto(&row)),
        signing_secret: secret.to_whsec(),
    })
}

pub(super) async fn list_webhook_endpoints(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::ListWebhookEndpointsRequest,
) -> Result<pb::ListWebhookEndpointsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let after = paging::decode_token(&request.page_token)?;
    let owner = (!caller.is_admin()).then_some(caller.user_id);
    let mut conn = service.pool.get().await?;
    let rows = endpoints::page(&mut conn, owner, after, limit + 1).await?;
    let (rows, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
    Ok(pb::ListWebhookEndpointsResponse {
        webhook_endpoints: rows.iter().map(to_proto).collect(),
        next_page_token,
    })
}

pub(super) async fn delete_webhook_endpoint(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::DeleteWebhookEndpointRequest,
) -> Result<pb::DeleteWebhookEndpointResponse, Error> {
    let id = parse_id("webhook_endpoint_id", &request.webhook_endpoint_id)?;
    let mut conn = service.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let row = endpoints::lock(conn, id).await?;
        mine(caller, row)?;
        endpoints::delete(conn, id).await?;
        deliveries::drop_pending_for(conn, id, "the endpoint was deleted").await?;
        Ok(())
    })
    .await?;
    tracing::info!(endpoint_id = %id, "webhook endpoint deleted");
    Ok(pb::DeleteWebhookEndpointResponse {})
}

pub(super) async fn rotate_webhook_endpoint_secret(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::RotateWebhookEndpointSecretRequest,
) -> Result<pb::RotateWebhookEndpointSecretResponse, Error> {
    let id = parse_id("webhook_endpoint_id", &request.webhook_endpoint_id)?;
    // Below zero retires the old secret at once, as zero does; above the
    // most is the most (as a page size above 100 is 100).
    let overlap = match request.overlap {
        None => DEFAULT_OVERLAP,
        Some(overlap) => Duration::try_from(overlap).unwrap_or(Duration::ZERO).min(MAX_OVERLAP),
    };
    let secret = SigningSecret::generate()?;
    let (sealed, sealed_with) = secret.seal(service.secrets_key.as_ref(), id)?;
    let mut conn = service.pool.get().await?;
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            let row = mine(caller, endpoints::lock(conn, id).await?)?;
            let until = (!overlap.is_zero())
                .then(|| Utc::now() + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::days(1)));
            // The old secret goes on signing until then, stored the way the
            // new one is (the key may have been set since it was made).
            let previous = match until {
                Some(_) => {
                    let old = SigningSecret::open(
                        &row.secret,
                        row.sealed_with.as_deref(),
                        service.secrets_key.as_ref(),
                        id,
                    )?;
                    Some(old.seal(service.secrets_key.as_ref(), id)?.0)
                }
                None => None,
            };
            let previous = previous.as_deref();
            Ok(endpoints::rotate(conn, id, &sealed, previous, until, sealed_with.as_deref()).await?)
        })
        .await?;
    tracing::info!(endpoint_id = %id, "webhook endpoint secret rotated");
    Ok(pb::RotateWebhookEndpointSecretResponse {
        webhook_endpoint: Some(to_proto(&row)),
        signing_secret: secret.to_whsec(),
        previous_secret_expire_time: row.previous_secret_expire_time.map(timestamp),
    })
}

/// The endpoint, if the caller may act on it: a user only on their own,
/// PERMISSION_DENIED otherwise whether or not it exists; an admin on any.
fn mine(caller: &UserPrincipal, row: Option<EndpointRow>) -> Result<EndpointRow, Error> {
    match row {
        Some(row) if row.user_id == caller.user_id || caller.is_admin() => Ok(row),
        None if caller.is_admin() => Err(Error::not_found("webhook endpoint")),
        _ => Err(Error::permission_denied(
            "NOT_YOUR_WEBHOOK_ENDPOINT",
            "you may act only on your own webhook endpoints",
        )),
    }
}

/// A URL the contract allows but this deployment will not call is refused by
/// policy (PERMISSION_DENIED); one that breaks the URL rules is a bad field.
fn refused_url(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Forbidden { .. }
        | Refusal::Scheme {
            http_allowed: false, ..
        } => Error::permission_denied("WEBHOOK_TARGET_FORBIDDEN", refusal.to_string()),
        _ => Error::invalid_field("webhook_endpoint.url", refusal.to_string()),
    }
}

fn event_types(raw: &[String]) -> Result<Vec<String>, keel_platform::error::FieldViolation> {
    let mut chosen: Vec<String> = Vec::with_capacity(raw.len());
    for (i, name) in raw.iter().enumerate() {
        let field = format!("webhook_endpoint.event_types[{i}]");
        let topic = Topic::parse(&field, name)?;
        if !topic.channels().contains(&crate::domain::Channel::Webhook) {
            return Err(keel_platform::error::FieldViolation {
                field,
                description: format!("{name} is not sent as a webhook"),
            });
        }
        if !chosen.iter().any(|t| t == name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

fn description(raw: &str) -> Result<String, keel_platform::error::FieldViolation> {
    if raw.chars().count() > 256 || raw.chars().any(char::is_control) {
        return Err(keel_platform::error::FieldViolation {
            field: "webhook_endpoint.description".into(),
            description: "at most 256 characters, no control characters".into(),
        });
    }
    Ok(raw.to_owned())
}

pub(crate) fn to_proto(row: &EndpointRow) -> pb::WebhookEndpoint {
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
