//! The delivery workers: a lane of their own for mail and for webhooks
//! ([`super::lane`]), and the upkeep beside them ([`super::upkeep`]). Here,
//! what one attempt does: render, send, and record what came of it
//! ([`super::record`]).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use keel::events::v1::Event;
use keel_platform::{Error, db::Pool, sealing::SealingKey};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DeliveryMetrics, lane::Lane, record::Attempted, upkeep};
use crate::{
    config::DeliveryConfig,
    domain::{Channel, Outcome},
    email::{Mailer, templates::Templates},
    messages::{self, Links},
    store::{
        deliveries::{self, DeliveryRow, NOTIFY_CHANNEL},
        endpoints::{self, EndpointRow},
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

impl Workers {
    /// Runs the mail and webhook lanes and the upkeep until `shutdown`. A
    /// lane is woken by the NOTIFY of a new delivery on its channel, when
    /// one of its attempts ends, and every poll period for retries that came
    /// due. What was in flight at shutdown is tried again when its lease
    /// ends (at least once).
    pub async fn run(self, database_url: String, shutdown: CancellationToken) {
        let workers = Arc::new(self);
        // Stops everything at once: shutdown, or the test hook's crash.
        let halt = shutdown.child_token();
        let mail_wake = Arc::new(Notify::new());
        let webhook_wake = Arc::new(Notify::new());
        let listener = {
            let (mail, webhook) = (mail_wake.clone(), webhook_wake.clone());
            tokio::spawn(keel_platform::db::listen_with(
                database_url,
                NOTIFY_CHANNEL,
                move |payload| match payload {
                    Some(channel) if channel == Channel::Email.as_str() => mail.notify_one(),
                    Some(channel) if channel == Channel::Webhook.as_str() => webhook.notify_one(),
                    // A new connection (NOTIFYs may have been missed) or a
                    // payload from elsewhere: both look.
                    _ => {
                        mail.notify_one();
                        webhook.notify_one();
                    }
                },
                halt.clone(),
            ))
        };
        let upkeep = tokio::spawn(upkeep::run(workers.clone(), halt.clone()));
        tokio::join!(
            Lane::mail(&workers.config).run(workers.clone(), mail_wake, halt.clone()),
            Lane::webhooks(&workers.config).run(workers.clone(), webhook_wake, halt.clone()),
        );
        listener.abort();
        upkeep.abort();
    }

    /// One attempt at one delivery, and its record.
    pub(super) async fn attempt(&self, delivery: DeliveryRow) -> Result<(), Error> {
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
}
