//! The revocation feed: one task per auth process follows the `revocations`
//! table (woken by its NOTIFY, polling as a fallback) and fans new rows out to
//! every WatchRevocations stream and to auth's own verifier.
//!
//! A stream starts with every revocation still relevant (younger than an
//! access token's lifetime), so a verifier that reconnects catches up, then
//! gets each new batch. Repeats are harmless to a verifier, so the feed errs
//! on the side of sending a row twice rather than missing one whose
//! transaction committed out of sequence order.

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt as _, future::BoxFuture, stream::BoxStream};
use keel::auth::v1::{self as pb, revocation::Subject};
use keel_platform::{
    Error,
    auth::revocations::{RevocationSource, RevocationStream},
    db::{self, Pool},
    proto::timestamp,
};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::Auth;
use crate::{
    keys::ACCESS_TOKEN_TTL,
    store::revocations::{self, RevocationRow},
};

/// The NOTIFY channel the table's trigger signals.
const NOTIFY_CHANNEL: &str = "keel_revocations";
/// How long a revocation matters: an access token's lifetime and a minute.
fn relevant_for() -> Duration {
    ACCESS_TOKEN_TTL + Duration::minutes(1)
}
/// Each pass looks this far back, so a row whose transaction committed after
/// a later-numbered one is still found.
const OVERLAP: Duration = Duration::seconds(10);
/// How often the feed looks when no NOTIFY wakes it.
const POLL: StdDuration = StdDuration::from_secs(1);
/// How often expired revocations are deleted.
const PRUNE_EVERY: StdDuration = StdDuration::from_secs(60);

/// New revocations, for whoever follows them.
#[derive(Clone)]
pub struct RevocationFeed {
    pool: Pool,
    batches: broadcast::Sender<Arc<Vec<pb::Revocation>>>,
    stopped: CancellationToken,
}

impl std::fmt::Debug for RevocationFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationFeed").finish_non_exhaustive()
    }
}

impl RevocationFeed {
    /// A feed over the database of `pool`; [`RevocationFeed::run`] publishes.
    pub fn new(pool: Pool) -> Self {
        let (batches, _) = broadcast::channel(256);
        Self {
            pool,
            batches,
            stopped: CancellationToken::new(),
        }
    }

    /// Publishes new revocations until `shutdown`, and deletes expired ones.
    /// Open streams end with it.
    pub async fn run(self, url: String, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(db::listen(url, NOTIFY_CHANNEL, wake.clone(), shutdown.clone()));
        let mut sent: BTreeMap<i64, DateTime<Utc>> = BTreeMap::new();
        let mut next_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(err) = self.publish_new(&mut sent).await {
                tracing::warn!(error = format!("{err:#}"), "reading new revocations failed");
            }
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                if let Err(err) = self.prune().await {
                    tracing::warn!(error = format!("{err:#}"), "deleting expired revocations failed");
                }
            }
        }
        listener.abort();
        self.stopped.cancel();
    }

    async fn publish_new(&self, sent: &mut BTreeMap<i64, DateTime<Utc>>) -> Result<(), Error> {
        let now = Utc::now();
        let mut conn = self.pool.get().await?;
        let rows = revocations::since(&mut conn, now - OVERLAP).await?;
        let new: Vec<pb::Revocation> = rows
            .iter()
            .filter(|row| !sent.contains_key(&row.sequence))
            .map(revocation_pb)
            .collect();
        for row in &rows {
            sent.insert(row.sequence, row.not_before);
        }
        sent.retain(|_, not_before| *not_before > now - OVERLAP - OVERLAP);
        if !new.is_empty() {
            // No follower at the moment is fine: the next one starts from
            // the table.
            let _ = self.batches.send(Arc::new(new));
        }
        Ok(())
    }

    async fn prune(&self) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        revocations::prune(&mut conn, Utc::now() - relevant_for()).await?;
        Ok(())
    }

    /// Every revocation still relevant, then each new batch, until the feed
    /// stops.
    pub fn watch(&self) -> BoxStream<'static, Result<Vec<pb::Revocation>, Error>> {
        // Subscribed before the first read, so nothing falls between them.
        let receiver = self.batches.subscribe();
        let state = (self.pool.clone(), receiver, true);
        futures::stream::unfold(state, |(pool, mut receiver, mut catch_up)| async move {
            loop {
                if catch_up {
                    let batch = everything_relevant(&pool).await;
                    return Some((batch, (pool, receiver, false)));
                }
                match receiver.recv().await {
                    Ok(batch) => return Some((Ok(batch.as_ref().clone()), (pool, receiver, false))),
                    // Fell behind the feed: start again from the table.
                    Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .take_until(self.stopped.clone().cancelled_owned())
        .boxed()
    }
}

async fn everything_relevant(pool: &Pool) -> Result<Vec<pb::Revocation>, Error> {
    let mut conn = pool.get().await?;
    let rows = revocations::since(&mut conn, Utc::now() - relevant_for()).await?;
    Ok(rows.iter().map(revocation_pb).collect())
}

fn revocation_pb(row: &RevocationRow) -> pb::Revocation {
    let subject = match (row.session_id, row.user_id) {
        (Some(session), _) => Some(Subject::SessionId(session.to_string())),
        (None, Some(user)) => Some(Subject::UserId(user.to_string())),
        (None, None) => None,
    };
    pb::Revocation {
        sequence: row.sequence,
        subject,
        not_before: Some(timestamp(row.not_before)),
    }
}

impl Auth {
    /// Every revocation still relevant, then each new batch, until the feed
    /// stops: what every verifier follows.
    pub fn watch_revocations(&self) -> BoxStream<'static, Result<Vec<pb::Revocation>, Error>> {
        self.revocations.watch()
    }
}

/// Auth's own verifier follows the feed in-process.
impl RevocationSource for RevocationFeed {
    fn watch(&self) -> BoxFuture<'_, anyhow::Result<RevocationStream>> {
        let batches = RevocationFeed::watch(self).map(|batch| batch.map_err(|err| anyhow::anyhow!("{err}")));
        Box::pin(async move { Ok(batches.boxed()) })
    }
}
