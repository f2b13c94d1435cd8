//! One delivery pass after another: claim, send, record.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use keel::events::v1::Event;
use keel_platform::{Error, db::Pool, sealing::SealingKey};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DeliveryMetrics, backoff, metrics::Recorded};
use crate::{
    app::preferences,
    config::DeliveryConfig,
    domain::{Channel, Outcome, Topic},
    email::{
        Mailer,
        templates::{Message, Templates},
    },
    messages::{self, Links},
    store::{
        deliveries::{self, DeliveryRow, NOTIFY_CHANNEL},
        endpoints::{self, EndpointRow},
        inbox::{self, NewNotification},
    },
    webhook::{payload, schedule::Schedule, secret::SigningSecret, send::Sender},
};

/// What the workers send with.
#[derive(Debug, Clone)]
pub struct Workers {
    pub(crate) pool: Pool,
    pub(crate) mailer: Arc<Mailer>,
    pub(crate) webhooks: Arc<Sender>,
    pub(crate) schedule: Schedule,
    pub(crate) templates: Arc<Templates>,
    pub(crate) links: Arc<Links>,
    pub(crate) event_secrets: Option<SealingKey>,
    pub(crate) secrets_key: Option<SealingKey>,
    pub(crate) config: DeliveryConfig,
    /// How long an endpoint may fail before it is disabled.
    pub(crate) disable_after: Duration,
    pub(crate) metrics: DeliveryMetrics,
}

/// How often the dead letters are counted for the metrics, at most.
const DEAD_LETTER_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// What a delivery's attempt produced, with what a dead letter records.
struct Attempted {
    outcome: Outcome,
    /// The webhook body, or the mail's subject.
    payload: String,
    /// The endpoint, for webhooks.
    endpoint: Option<EndpointRow>,
}

impl Workers {
    /// Runs passes until `shutdown`: woken by the NOTIFY of a new delivery,
    /// and every poll period for retries that came due.
    pub async fn run(self, database_url: String, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(keel_platform::db::listen(
            database_url,
            NOTIFY_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        // Finished rows are pruned at start and then at most every minute.
        let prune_every = self.config.retention().min(Duration::from_secs(60));
        let mut pruned_at: Option<tokio::time::Instant> = None;
        let mut counted_at: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if pruned_at.is_none_or(|at| at.elapsed() >= prune_every) {
                pruned_at = Some(tokio::time::Instant::now());
                if let Err(err) = self.prune().await {
                    tracing::warn!(error = %err, "pruning finished deliveries failed");
                }
            }
            if counted_at.is_none_or(|at| at.elapsed() >= DEAD_LETTER_COUNT_INTERVAL) {
                counted_at = Some(tokio::time::Instant::now());
                if let Err(err) = self.count_dead_letters().await {
                    tracing::warn!(error = %err, "counting dead letters failed");
                }
            }
            let claimed = match self.pass(&shutdown).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!(error = %err, "a delivery pass failed");
                    0
                }
            };
            // A full batch: more may be due at once.
            if claimed as i64 >= self.config.delivery_batch {
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(self.config.poll()) => {}
                () = shutdown.cancelled() => {}
            }
        }
        listener.abort();
    }

    /// Publishes how many dead letters wait for an operator.
    async fn count_dead_letters(&self) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        self.metrics
            .dead_letters(deliveries::waiting_dead_letters(&mut conn).await?);
        Ok(())
    }

    /// Deletes the deliveries that finished longer ago than the retention.
    async fn prune(&self) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let deleted = deliveries::prune(&mut conn, self.config.retention()).await?;
        if deleted > 0 {
            tracing::debug!(deleted, "finished deliveries pruned");
        }
        Ok(())
    }

    /// Claims due deliveries and sends them at once; returns how many.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<usize, Error> {
        let claimed = {
            let mut conn = self.pool.get().await?;
            deliveries::claim(&mut conn, self.config.delivery_batch, self.config.lease()).await?
        };
        let count = claimed.len();
        let attempts = claimed.into_iter().map(|delivery| async move {
            let id = delivery.id;
            if let Err(err) = self.attempt(delivery).await {
                // Its lease runs out and the delivery is tried again.
                tracing::warn!(delivery_id = %id, error = %err, "recording a delivery failed");
            }
        });
        tokio::select! {
            _ = futures::future::join_all(attempts) => {}
            // At least once: what was in flight is tried again when its
            // lease ends.
            () = shutdown.cancelled() => {}
        }
        Ok(count)
    }

    /// One attempt at one delivery, and its record.
    async fn attempt(&self, delivery: DeliveryRow) -> Result<(), Error> {
        let Some(bytes) = delivery.event.as_deref() else {
            let mut conn = self.pool.get().await?;
            deliveries::drop_delivery(&mut conn, delivery.id, delivery.attempt_count, "nothing left to send").await?;
            return Ok(());
        };
        let event = Event::decode(bytes).map_err(|err| anyhow::anyhow!("the stored event does not decode: {err}"))?;
        let attempted = match delivery.channel {
            Channel::Email => self.send_mail(&delivery, &event).await,
            Channel::Webhook => match self.send_webhook(&delivery, &event).await? {
                Some(attempted) => attempted,
                None => return Ok(()),
            },
            Channel::InApp => Attempted {
                outcome: Outcome::Refused {
                    status: None,
                    error: "the inbox is written when the event arrives".into(),
                },
                payload: String::new(),
                endpoint: None,
            },
        };
        self.record(&delivery, attempted).await
    }

    async fn send_mail(&self, delivery: &DeliveryRow, event: &Event) -> Attempted {
        match messages::mail(
            &self.templates,
            &self.links,
            self.event_secrets.as_ref(),
            event,
            &delivery.target,
            delivery.id,
        ) {
            Ok(mail) => Attempted {
                outcome: self.mailer.send(&mail).await,
                payload: mail.subject,
                endpoint: None,
            },
            Err(unsendable) => Attempted {
                outcome: Outcome::Refused {
                    status: None,
                    error: unsendable.0,
                },
                payload: delivery.event_type.clone(),
                endpoint: None,
            },
        }
    }

    /// Sends to the endpoint; `None` when there is nothing to send to (the
    /// delivery is dropped).
    async fn send_webhook(&self, delivery: &DeliveryRow, event: &Event) -> Result<Option<Attempted>, Error> {
        let endpoint = match Uuid::parse_str(&delivery.target) {
            Ok(id) => {
                let mut conn = self.pool.get().await?;
                endpoints::find(&mut conn, id).await?
            }
            Err(_) => None,
        };
        let gone = match &endpoint {
            None => Some("the endpoint was deleted"),
            Some(endpoint) if endpoint.disable_time.is_some() => Some("the endpoint is disabled"),
            Some(_) => None,
        };
        let (Some(endpoint), None) = (endpoint, gone) else {
            let mut conn = self.pool.get().await?;
            deliveries::drop_delivery(&mut conn, delivery.id, delivery.attempt_count, gone.unwrap_or_default()).await?;
            return Ok(None);
        };
        let Some(body) = payload::body(event)? else {
            let mut conn = self.pool.get().await?;
            deliveries::drop_delivery(&mut conn, delivery.id, delivery.attempt_count, "not sent as a webhook").await?;
            return Ok(None);
        };
        let secrets = self.secrets_of(&endpoint)?;
        let secrets: Vec<&SigningSecret> = secrets.iter().collect();
        let outcome = self.webhooks.send(&endpoint.url, &event.id, &body, &secrets).await;
        Ok(Some(Attempted {
            outcome,
            payload: String::from_utf8_lossy(&body).into_owned(),
            endpoint: Some(endpoint),
        }))
    }

    /// The secrets that sign: the current one, and the previous one while
    /// its overlap lasts.
    fn secrets_of(&self, endpoint: &EndpointRow) -> Result<Vec<SigningSecret>, Error> {
        let key = self.secrets_key.as_ref();
        let sealed_with = endpoint.sealed_with.as_deref();
        let mut secrets = vec![SigningSecret::open(
            endpoint.secret.expose(),
            sealed_with,
            key,
            endpoint.id,
        )?];
        if let (Some(previous), Some(until)) = (&endpoint.previous_secret, endpoint.previous_secret_expire_time)
            && until > Utc::now()
        {
            secrets.push(SigningSecret::open(previous.expose(), sealed_with, key, endpoint.id)?);
        }
        Ok(secrets)
    }

    async fn record(&self, delivery: &DeliveryRow, attempted: Attempted) -> Result<(), Error> {
        let endpoint = attempted.endpoint.as_ref();
        let attempt = delivery.attempt_count;
        match attempted.outcome {
            Outcome::Delivered => {
                let mut conn = self.pool.get().await?;
                // Counted once: only the attempt that still held the row.
                if deliveries::delivered(&mut conn, delivery.id, attempt).await? {
                    self.metrics.attempted(delivery.channel, Recorded::Delivered);
                }
                if let Some(endpoint) = endpoint {
                    endpoints::record_success(&mut conn, endpoint.id).await?;
                }
                tracing::debug!(delivery_id = %delivery.id, channel = delivery.channel.as_str(), attempt, "delivered");
            }
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
                    Some(delay) => {
                        tracing::info!(
                            delivery_id = %delivery.id, channel = delivery.channel.as_str(), attempt, ?status,
                            error = %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying later"
                        );
                        let mut conn = self.pool.get().await?;
                        if deliveries::retry_later(&mut conn, delivery.id, attempt, delay, status, &error).await? {
                            self.metrics.attempted(delivery.channel, Recorded::Retried);
                        }
                    }
                    None => {
                        self.dead_letter(delivery, &attempted.payload, status, &error).await?;
                    }
                }
                if let Some(endpoint) = endpoint {
                    self.note_failure(endpoint).await?;
                }
            }
            Outcome::Refused { status, error } => {
                self.dead_letter(delivery, &attempted.payload, status, &error).await?;
                if let Some(endpoint) = endpoint {
                    self.note_failure(endpoint).await?;
                }
            }
            Outcome::Gone => {
                let mut conn = self.pool.get().await?;
                if deliveries::drop_delivery(&mut conn, delivery.id, attempt, "the receiver answered 410 Gone").await? {
                    self.metrics.attempted(delivery.channel, Recorded::Gone);
                }
                drop(conn);
                if let Some(endpoint) = endpoint {
                    self.disable(endpoint, "the receiver answered 410 Gone").await?;
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &DeliveryRow,
        payload: &str,
        status: Option<i32>,
        error: &str,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        if deliveries::dead_letter(&mut conn, delivery, payload, status, error).await? {
            self.metrics.attempted(delivery.channel, Recorded::DeadLettered);
            tracing::warn!(
                delivery_id = %delivery.id, channel = delivery.channel.as_str(), attempts = delivery.attempt_count,
                ?status, error, "delivery dead-lettered"
            );
        }
        Ok(())
    }

    /// Counts a failure against the endpoint; one that has failed for
    /// longer than allowed is disabled.
    async fn note_failure(&self, endpoint: &EndpointRow) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let since = endpoints::record_failure(&mut conn, endpoint.id).await?;
        let allowed = chrono::Duration::from_std(self.disable_after).unwrap_or(chrono::Duration::days(5));
        if since.is_some_and(|since| Utc::now() - since >= allowed) {
            let reason = format!("every delivery failed for more than {}", span(self.disable_after));
            self.disable(endpoint, &reason).await?;
        }
        Ok(())
    }

    /// Disables the endpoint, drops what was queued for it and tells its
    /// owner in the inbox (once, whoever gets there first).
    async fn disable(&self, endpoint: &EndpointRow, reason: &str) -> Result<(), Error> {
        let notice = Message::WebhookEndpointDisabled {
            url: endpoint.url.clone(),
            reason: reason.to_owned(),
        };
        let text = self.templates.inbox(&notice)?;
        let mut conn = self.pool.get().await?;
        let topic = Topic::WebhookEndpointDisabled;
        conn.transaction::<_, Error, _>(async |conn| {
            if !endpoints::disable(conn, endpoint.id, reason).await? {
                return Ok(());
            }
            deliveries::drop_pending_for(conn, endpoint.id, "the endpoint was disabled").await?;
            let chosen = preferences::of(conn, endpoint.user_id).await?;
            if chosen.channels_for(topic).contains(&Channel::InApp) {
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
            tracing::warn!(endpoint_id = %endpoint.id, user_id = %endpoint.user_id, reason, "webhook endpoint disabled");
            Ok(())
        })
        .await
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
