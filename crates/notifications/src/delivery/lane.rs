//! A lane: the workers of one channel, mail or webhooks, so that neither
//! can clog the other. It keeps up to its number of attempts in flight and
//! claims the next due delivery as soon as one ends: no attempt waits for
//! another. Webhook claims keep each endpoint within its limit of
//! deliveries in flight (across replicas) and leave most of the lane to
//! endpoints that answer: a slow or dead endpoint delays its own deliveries
//! and no one else's.

use std::{collections::HashSet, sync::Arc};

use keel_platform::Error;
use tokio::{
    sync::Notify,
    task::{Id, JoinSet},
};
use tokio_util::sync::CancellationToken;

use super::{Workers, record::Crashed};
use crate::{
    config::DeliveryConfig,
    domain::Channel,
    store::{
        claims::{self, WebhookLimits},
        deliveries::DeliveryRow,
    },
};

/// One channel's workers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lane {
    channel: Channel,
    /// Attempts in flight at once.
    slots: usize,
    /// How many of them may be to failing endpoints (webhooks).
    failing_slots: usize,
    /// Deliveries one endpoint may have in flight, across replicas
    /// (webhooks).
    per_endpoint: i64,
}

impl Lane {
    /// The mail lane.
    pub(super) fn mail(config: &DeliveryConfig) -> Self {
        let slots = config.email_slots();
        Self {
            channel: Channel::Email,
            slots,
            failing_slots: slots,
            per_endpoint: i64::MAX,
        }
    }

    /// The webhook lane.
    pub(super) fn webhooks(config: &DeliveryConfig) -> Self {
        Self {
            channel: Channel::Webhook,
            slots: config.webhook_slots(),
            failing_slots: config.failing_webhook_slots(),
            per_endpoint: config.per_endpoint(),
        }
    }

    /// Claims and attempts deliveries until `halt`; what is in flight then
    /// is dropped, and tried again when its lease ends.
    pub(super) async fn run(self, workers: Arc<Workers>, wake: Arc<Notify>, halt: CancellationToken) {
        let mut in_flight = JoinSet::new();
        // The attempts in flight to failing endpoints.
        let mut failing = HashSet::<Id>::new();
        while !halt.is_cancelled() {
            let free = self.slots.saturating_sub(in_flight.len());
            // A claim that filled every free slot may have left more due.
            let mut more_due = false;
            if free > 0 {
                let failing_room = self.failing_slots.saturating_sub(failing.len());
                match self.claim(&workers, free, failing_room).await {
                    Ok(claimed) => {
                        more_due = claimed.len() == free;
                        for (delivery, to_failing) in claimed {
                            let id = in_flight.spawn(attempt(workers.clone(), delivery, halt.clone())).id();
                            if to_failing {
                                failing.insert(id);
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(channel = self.channel.as_str(), error = %err, "claiming deliveries failed");
                    }
                }
            }
            tokio::select! {
                () = halt.cancelled() => {}
                Some(ended) = in_flight.join_next_with_id() => {
                    failing.remove(&ended_id(ended));
                    while let Some(ended) = in_flight.try_join_next_with_id() {
                        failing.remove(&ended_id(ended));
                    }
                }
                () = wake.notified(), if !more_due => {}
                () = tokio::time::sleep(workers.config.poll()), if !more_due => {}
            }
        }
    }

    /// Claims up to `free` due deliveries, at most `failing_room` of them to
    /// failing endpoints; each with whether its endpoint is failing.
    async fn claim(
        &self,
        workers: &Workers,
        free: usize,
        failing_room: usize,
    ) -> Result<Vec<(DeliveryRow, bool)>, Error> {
        let mut conn = workers.pool.get().await?;
        let lease = workers.config.lease();
        let take = i64::try_from(free).unwrap_or(i64::MAX);
        Ok(match self.channel {
            Channel::Webhook => {
                let limits = WebhookLimits {
                    take,
                    failing: i64::try_from(failing_room).unwrap_or(i64::MAX),
                    per_endpoint: self.per_endpoint,
                };
                claims::claim_webhooks(&mut conn, limits, lease)
                    .await?
                    .into_iter()
                    .map(|claimed| (claimed.delivery, claimed.failing))
                    .collect()
            }
            channel => claims::claim(&mut conn, channel, take, lease)
                .await?
                .into_iter()
                .map(|delivery| (delivery, false))
                .collect(),
        })
    }
}

/// One attempt, as a task of its lane.
async fn attempt(workers: Arc<Workers>, delivery: DeliveryRow, halt: CancellationToken) {
    let id = delivery.id;
    match workers.attempt(delivery).await {
        Ok(()) => {}
        Err(Error::Internal(err)) if err.is::<Crashed>() => {
            tracing::warn!(delivery_id = %id, error = %err, "the delivery workers stop here");
            halt.cancel();
        }
        // Its lease runs out and the delivery is tried again.
        Err(err) => tracing::warn!(delivery_id = %id, error = %err, "recording a delivery failed"),
    }
}

/// The task that ended; a panic is logged (the delivery is tried again when
/// its lease ends).
fn ended_id(ended: Result<(Id, ()), tokio::task::JoinError>) -> Id {
    match ended {
        Ok((id, ())) => id,
        Err(err) => {
            if err.is_panic() {
                tracing::error!(error = %err, "a delivery attempt panicked");
            }
            err.id()
        }
    }
}
