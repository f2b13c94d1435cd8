//! ListDeadLetters and RedeliverDeadLetter (admins only).

use diesel_async::AsyncConnection as _;
use keel::notifications::v1 as pb;
use keel_platform::{Error, db::paging, proto::timestamp, serve::rpc::parse_id};

use super::Notifications;
use crate::{
    domain::Channel,
    store::{
        deliveries::{self, DeadLetterRow},
        endpoints,
    },
};

pub(super) async fn list_dead_letters(
    service: &Notifications,
    request: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_token(&request.page_token)?;
    let endpoint = if request.webhook_endpoint_id.is_empty() {
        None
    } else {
        Some(parse_id("webhook_endpoint_id", &request.webhook_endpoint_id)?.to_string())
    };
    let mut conn = service.pool.get().await?;
    let rows = deliveries::dead_letter_page(&mut conn, endpoint.as_deref(), before, limit + 1).await?;
    let (rows, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
    Ok(pb::ListDeadLettersResponse {
        dead_letters: rows.iter().map(to_proto).collect(),
        next_page_token,
    })
}

pub(super) async fn redeliver_dead_letter(
    service: &Notifications,
    request: pb::RedeliverDeadLetterRequest,
) -> Result<pb::RedeliverDeadLetterResponse, Error> {
    let id = parse_id("dead_letter_id", &request.dead_letter_id)?;
    let mut conn = service.pool.get().await?;
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            let row = deliveries::lock_dead_letter(conn, id)
                .await?
                .ok_or_else(|| Error::not_found("dead letter"))?;
            if row.redeliver_time.is_some() {
                return Err(Error::failed_precondition(
                    "ALREADY_REDELIVERED",
                    "this dead letter was redelivered already; a new one appears if that fails too",
                ));
            }
            if row.channel == Channel::Webhook {
                let endpoint = match uuid::Uuid::parse_str(&row.target) {
                    Ok(endpoint) => endpoints::find(conn, endpoint).await?,
                    Err(_) => None,
                };
                match endpoint {
                    None => {
                        return Err(Error::failed_precondition(
                            "WEBHOOK_ENDPOINT_DELETED",
                            "the endpoint this delivery was for has been deleted",
                        ));
                    }
                    Some(endpoint) if endpoint.disable_time.is_some() => {
                        return Err(Error::failed_precondition(
                            "WEBHOOK_ENDPOINT_DISABLED",
                            "the endpoint this delivery was for is disabled; create a new one",
                        ));
                    }
                    Some(_) => {}
                }
            }
            Ok(deliveries::redeliver(conn, &row).await?)
        })
        .await?;
    tracing::info!(dead_letter_id = %row.id, delivery_id = %row.delivery_id, "dead letter redelivered");
    Ok(pb::RedeliverDeadLetterResponse {
        dead_letter: Some(to_proto(&row)),
    })
}

fn to_proto(row: &DeadLetterRow) -> pb::DeadLetter {
    let (endpoint, recipient) = match row.channel {
        Channel::Webhook => (row.target.clone(), String::new()),
        _ => (String::new(), row.target.clone()),
    };
    let status = row.last_status.unwrap_or(0);
    let (http, smtp) = match row.channel {
        Channel::Webhook => (status, 0),
        _ => (0, status),
    };
    pb::DeadLetter {
        id: row.id.to_string(),
        webhook_endpoint_id: endpoint,
        user_id: row.user_id.to_string(),
        event_id: row.event_id.to_string(),
        event_type: row.event_type.clone(),
        payload: row.payload.clone(),
        attempt_count: row.attempt_count,
        last_http_status: http,
        last_error: row.last_error.clone(),
        create_time: Some(timestamp(row.create_time)),
        redeliver_time: row.redeliver_time.map(timestamp),
        channel: row.channel.to_proto() as i32,
        recipient,
        last_smtp_code: smtp,
    }
}
