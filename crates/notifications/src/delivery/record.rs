//! Recording what an attempt came to, in one transaction with all it
//! implies: the delivery's new state and, for a dead one, its dead letter;
//! the endpoint's health; and when the endpoint answered 410 or has failed
//! for too long, its disabling, its queue dropped and its owner told. A
//! crash leaves all of it or none of it: then the delivery is still live and
//! is tried again when its lease ends.

use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel_platform::Error;
use uuid::Uuid;

use super::{Workers, backoff, metrics::Recorded};
use crate::{
    app::preferences,
    config::CrashPoint,
    domain::{Channel, Outcome, Topic},
    email::templates::Message,
    store::{
        dead_letters::{self, NewDeadLetter},
        deliveries::{self, DeliveryRow},
        endpoints::{self, EndpointRow},
        inbox::{self, NewNotification},
    },
};

/// Why a 410 ends a delivery and its endpoint.
const GONE: &str = "the receiver answered 410 Gone";

/// What a delivery's attempt produced, with what a dead letter records.
pub(super) struct Attempted {
    pub(super) outcome: Outcome,
    /// The webhook body, or the mail's subject.
    pub(super) payload: String,
    /// The endpoint, for webhooks.
    pub(super) endpoint: Option<EndpointRow>,
}

/// What becomes of the delivery.
enum Verdict {
    Delivered,
    RetryIn {
        delay: Duration,
        status: Option<i32>,
        error: String,
    },
    Dead {
        status: Option<i32>,
        error: String,
    },
    Gone,
}

impl Verdict {
    const fn recorded(&self) -> Recorded {
        match self {
            Verdict::Delivered => Recorded::Delivered,
            Verdict::RetryIn { .. } => Recorded::Retried,
            Verdict::Dead { .. } => Recorded::DeadLettered,
            Verdict::Gone => Recorded::Gone,
        }
    }
}

/// The test hook stopped the attempt where a killed process would have
/// stopped; nothing of its record was committed.
#[derive(Debug, thiserror::Error)]
#[error("the test hook stopped the delivery workers ({0:?})")]
pub(super) struct Crashed(pub(super) CrashPoint);

/// What one record's transaction did.
struct Done {
    /// Whether the attempt still held the delivery (else nothing of the
    /// delivery was written: another attempt has it now).
    held: bool,
    /// Why the endpoint was disabled, when this record disabled it.
    disabled: Option<String>,
}

impl Workers {
    /// Records what `attempted` came to, all in one transaction.
    pub(super) async fn record(&self, delivery: &DeliveryRow, attempted: Attempted) -> Result<(), Error> {
        let verdict = self.verdict(delivery, attempted.outcome);
        let endpoint = attempted.endpoint.as_ref();
        let attempt = delivery.attempt_count;
        let mut conn = self.pool.get().await?;
        let done = conn
            .transaction::<_, Error, _>(async |conn| {
                // The endpoint first: records for one endpoint take turns, so
                // two that both disable it can't deadlock on its queue.
                if let Some(endpoint) = endpoint {
                    endpoints::lock(conn, endpoint.id).await?;
                }
                let held = match &verdict {
                    Verdict::Delivered => deliveries::delivered(conn, delivery.id, attempt).await?,
                    Verdict::RetryIn { delay, status, error } => {
                        deliveries::retry_later(conn, delivery.id, attempt, *delay, *status, error).await?
                    }
                    Verdict::Dead { status, error } => {
                        self.dead_letter(conn, delivery, &attempted.payload, *status, error)
                            .await?
                    }
                    Verdict::Gone => deliveries::drop_delivery(conn, delivery.id, attempt, GONE).await?,
                };
                let disabled = match (endpoint, &verdict) {
                    (None, _) => None,
                    (Some(endpoint), Verdict::Delivered) => {
                        endpoints::record_success(conn, endpoint.id).await?;
                        None
                    }
                    (Some(endpoint), Verdict::Gone) => {
                        self.disable(conn, endpoint, GONE).await?.then(|| GONE.to_owned())
                    }
                    (Some(endpoint), _) => self.note_failure(conn, endpoint).await?,
                };
                Ok(Done { held, disabled })
            })
            .await?;
        // Counted once: only the attempt that still held the row.
        if done.held {
            self.metrics
                .attempted(delivery.channel, endpoint.map(|e| e.id), verdict.recorded());
        }
        let channel = delivery.channel.as_str();
        match &verdict {
            Verdict::Delivered => tracing::debug!(delivery_id = %delivery.id, channel, attempt, "delivered"),
            Verdict::RetryIn { delay, status, error } => tracing::info!(
                delivery_id = %delivery.id, channel, attempt, ?status, error = %error,
                retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying later"
            ),
            Verdict::Dead { status, error } if done.held => tracing::warn!(
                delivery_id = %delivery.id, channel, attempts = attempt, ?status, error = %error,
                "delivery dead-lettered"
            ),
            Verdict::Dead { .. } | Verdict::Gone => {}
        }
        if let (Some(endpoint), Some(reason)) = (endpoint, done.disabled) {
            tracing::warn!(endpoint_id = %endpoint.id, user_id = %endpoint.user_id, reason, "webhook endpoint disabled");
        }
        Ok(())
    }

    /// What `outcome` means for the delivery: the retry schedule decides
    /// whether a failure is tried again.
    fn verdict(&self, delivery: &DeliveryRow, outcome: Outcome) -> Verdict {
        let attempt = delivery.attempt_count;
        match outcome {
            Outcome::Delivered => Verdict::Delivered,
            Outcome::Retry {
                status,
                error,
                retry_after,
            } => {
                let next = match delivery.channel {
                    Channel::Webhook => self
                        .schedule
                        .delay_after(u32::try_from(attempt).unwrap_or(u32::MAX), retry_after),
                    _ => (attempt < self.config.email_max_attempts).then(|| {
                        backoff::email_delay(self.config.email_retry_base(), attempt)
                            .max(retry_after.unwrap_or_default())
                    }),
                };
                match next {
                    Some(delay) => Verdict::RetryIn { delay, status, error },
                    None => Verdict::Dead { status, error },
                }
            }
            Outcome::Refused { status, error } => Verdict::Dead { status, error },
            Outcome::Gone => Verdict::Gone,
        }
    }

    /// Gives up on the delivery and lists its dead letter, in the caller's
    /// transaction. Returns false when the attempt no longer held it.
    async fn dead_letter(
        &self,
        conn: &mut AsyncPgConnection,
        delivery: &DeliveryRow,
        payload: &str,
        status: Option<i32>,
        error: &str,
    ) -> Result<bool, Error> {
        if !deliveries::mark_dead(conn, delivery.id, delivery.attempt_count, status, error).await? {
            return Ok(false);
        }
        if self.config.test_crash_after == CrashPoint::MarkingDead {
            // Test hook: stop here, uncommitted, as a killed process would.
            return Err(anyhow::Error::new(Crashed(CrashPoint::MarkingDead)).into());
        }
        dead_letters::insert(
            conn,
            &NewDeadLetter {
                id: Uuid::now_v7(),
                delivery_id: delivery.id,
                channel: delivery.channel,
                target: &delivery.target,
                user_id: delivery.user_id,
                event_id: delivery.event_id,
                event_type: &delivery.event_type,
                payload,
                attempt_count: delivery.attempt_count,
                last_status: status,
                last_error: error,
            },
        )
        .await?;
        Ok(true)
    }

    /// Counts a failure against the endpoint; one that has failed for
    /// longer than allowed is disabled. Returns why, when this call did.
    async fn note_failure(
        &self,
        conn: &mut AsyncPgConnection,
        endpoint: &EndpointRow,
    ) -> Result<Option<String>, Error> {
        let since = endpoints::record_failure(conn, endpoint.id).await?;
        let allowed = chrono::Duration::from_std(self.disable_after).unwrap_or(chrono::Duration::days(5));
        if since.is_none_or(|since| Utc::now() - since < allowed) {
            return Ok(None);
        }
        let reason = format!("every delivery failed for more than {}", span(self.disable_after));
        Ok(self.disable(conn, endpoint, &reason).await?.then_some(reason))
    }

    /// Disables the endpoint, drops what was queued for it and tells its
    /// owner in the inbox, in the caller's transaction; returns whether this
    /// call did (once, whoever gets there first).
    async fn disable(&self, conn: &mut AsyncPgConnection, endpoint: &EndpointRow, reason: &str) -> Result<bool, Error> {
        if !endpoints::disable(conn, endpoint.id, reason).await? {
            return Ok(false);
        }
        deliveries::drop_pending_for(conn, endpoint.id, "the endpoint was disabled").await?;
        let topic = Topic::WebhookEndpointDisabled;
        let chosen = preferences::of(conn, endpoint.user_id).await?;
        if chosen.channels_for(topic).contains(&Channel::InApp) {
            let text = self.templates.inbox(&Message::WebhookEndpointDisabled {
                url: endpoint.url.clone(),
                reason: reason.to_owned(),
            })?;
            inbox::append(
                conn,
                &NewNotification {
                    user_id: endpoint.user_id,
                    event_type: topic.as_str(),
                    // One notice per disabling.
                    event_id: Uuid::now_v7(),
                    title: &text.title,
                    body: &text.body,
                },
            )
            .await?;
        }
        Ok(true)
    }
}

/// A duration for people: whole days, hours or seconds.
fn span(duration: Duration) -> String {
    let (count, unit) = match duration.as_secs() {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s => (s, "second"),
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}
