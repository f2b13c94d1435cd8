//! Revoked access tokens, as auth publishes them: every verifier follows
//! auth's WatchRevocations stream, so a logout, a revoked session, a changed
//! password or roles and a disabled user take effect in every service within
//! seconds rather than when the token expires.
//!
//! While a verifier cannot reach auth it keeps what it knows and goes on
//! accepting the tokens it knows nothing against (refusing every token would
//! turn an auth outage into an outage of everything); when it reconnects,
//! auth sends every revocation still relevant, so it catches up at once.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use futures::{StreamExt as _, future::BoxFuture, stream::BoxStream};
use keel::auth::v1::{Revocation, revocation};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::principal::Principal;

/// Batches of revocations, oldest first.
pub type RevocationStream = BoxStream<'static, anyhow::Result<Vec<Revocation>>>;

/// Where a verifier learns of revocations.
pub trait RevocationSource: Send + Sync + fmt::Debug {
    /// Every revocation still relevant, then each new one.
    fn watch(&self) -> BoxFuture<'_, anyhow::Result<RevocationStream>>;
}

/// How long a revocation matters: an access token's lifetime (15 minutes),
/// plus the verifier's leeway and some slack for clock skew.
const RELEVANT_FOR_MS: i64 = 16 * 60 * 1000;
/// The longest wait between attempts to reach auth again.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// The revocations a verifier knows of: for each session and user, the time
/// (Unix ms) before which their tokens no longer count.
#[derive(Debug, Default)]
pub struct RevocationList {
    lists: std::sync::RwLock<Lists>,
    /// Woken after each batch, so open streams check their tokens again.
    applied: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Lists {
    sessions: HashMap<Uuid, i64>,
    users: HashMap<Uuid, i64>,
}

impl RevocationList {
    /// Takes in a batch (repeats are harmless).
    pub fn apply(&self, batch: &[Revocation]) {
        let mut lists = self.lists.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for revocation in batch {
            let Some(not_before) = revocation
                .not_before
                .as_ref()
                .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            else {
                continue;
            };
            let (list, id) = match &revocation.subject {
                Some(revocation::Subject::SessionId(id)) => (&mut lists.sessions, id),
                Some(revocation::Subject::UserId(id)) => (&mut lists.users, id),
                None => continue,
            };
            if let Ok(id) = Uuid::parse_str(id) {
                let entry = list.entry(id).or_insert(not_before);
                *entry = (*entry).max(not_before);
            }
        }
        let horizon = chrono::Utc::now().timestamp_millis() - RELEVANT_FOR_MS;
        lists.sessions.retain(|_, not_before| *not_before > horizon);
        lists.users.retain(|_, not_before| *not_before > horizon);
        drop(lists);
        self.applied.notify_waiters();
    }

    /// Resolves after the next batch is applied.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.applied.notified()
    }

    /// Whether a token of `principal` issued at `issued_ms` (Unix ms) is
    /// revoked.
    pub fn is_revoked(&self, principal: &Principal, issued_ms: i64) -> bool {
        let Principal::User(user) = principal else {
            return false;
        };
        let lists = self.lists.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before =
            |list: &HashMap<Uuid, i64>, id: &Uuid| list.get(id).is_some_and(|not_before| issued_ms < *not_before);
        before(&lists.sessions, &user.session_id) || before(&lists.users, &user.user_id)
    }
}

/// Follows `source` into `list` until `shutdown`, reconnecting (and catching
/// up) after every failure.
pub async fn follow(list: Arc<RevocationList>, source: Arc<dyn RevocationSource>, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let followed = async {
            let mut batches = source.watch().await?;
            while let Some(batch) = batches.next().await {
                list.apply(&batch?);
                wait = Duration::from_millis(100);
            }
            anyhow::Ok(())
        };
        let ended = tokio::select! {
            ended = followed => ended,
            () = shutdown.cancelled() => return,
        };
        match ended {
            Ok(()) => tracing::info!("auth ended the revocation stream; following it again"),
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                ?wait,
                "cannot follow auth's revocations; retrying"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        wait = (wait * 2).min(MAX_RECONNECT_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::UserPrincipal;

    fn at(ms: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
        })
    }

    #[test]
    fn tokens_issued_before_a_revocation_are_refused_and_later_ones_are_not() {
        let now = chrono::Utc::now().timestamp_millis();
        let user = UserPrincipal {
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            roles: Vec::new(),
        };
        let principal = Principal::User(user.clone());
        let list = RevocationList::default();
        assert!(!list.is_revoked(&principal, now));
        list.apply(&[Revocation {
            sequence: 1,
            subject: Some(revocation::Subject::UserId(user.user_id.to_string())),
            not_before: at(now),
        }]);
        assert!(list.is_revoked(&principal, now - 1));
        assert!(
            !list.is_revoked(&principal, now + 1),
            "a token issued after the change counts"
        );
        list.apply(&[Revocation {
            sequence: 2,
            subject: Some(revocation::Subject::SessionId(user.session_id.to_string())),
            not_before: at(now + 10),
        }]);
        assert!(list.is_revoked(&principal, now + 5));
        // Long past: forgotten, as the tokens it covered have expired.
        let old = RevocationList::default();
        old.apply(&[Revocation {
            sequence: 3,
            subject: Some(revocation::Subject::UserId(user.user_id.to_string())),
            not_before: at(now - RELEVANT_FOR_MS - 1),
        }]);
        assert!(!old.is_revoked(&principal, now - RELEVANT_FOR_MS - 2));
    }
}
