//! ListDeadLetters and RedeliverDeadLetter (admins only).

use keel::notifications::v1 as pb;
use keel_platform::{Error, db::paging, proto::timestamp, serve::rpc::parse_id};

use super::Notifications;
use crate::{domain::Channel, store::dead_letters::DeadLetterRow};

pub(super) async fn list_dead_letters(
    service: &Notifications,
    request: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_token(&request.page_token)?;
    let endpoint = if request.webhook_endpoint_id.is_empty() {
        None
    } else {
        Some(parse_id("webhook_endpoint_id", &request.webhook_endpoint_id)?)
    };
    let page = service.dead_letters(endpoint, before, limit).await?;
    Ok(pb::ListDeadLettersResponse {
        dead_letters: page.rows.iter().map(to_proto).collect(),
        next_page_token: page.next.map(paging::encode_token).unwrap_or_default(),
    })
}

pub(super) async fn redeliver_dead_letter(
    service: &Notifications,
    request: pb::RedeliverDeadLetterRequest,
) -> Result<pb::RedeliverDeadLetterResponse, Error> {
    let id = parse_id("dead_letter_id", &request.dead_letter_id)?;
    let row = service.redeliver(id).await?;
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
