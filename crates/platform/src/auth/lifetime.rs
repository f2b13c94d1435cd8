//! How long a verified token counts: until it expires, or until auth revokes
//! it. A unary call is checked once, at its start; a stream lives on, so it
//! watches its token and ends with UNAUTHENTICATED when the token lapses.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::{Stream, StreamExt as _};
use tonic::Status;

use crate::{
    auth::{principal::Principal, revocations::RevocationList},
    error::Error,
};

/// A token that verified: who it speaks for, and what ends it.
#[derive(Debug, Clone)]
pub struct Verified {
    principal: Principal,
    /// When it was issued, in Unix ms.
    issued_ms: i64,
    /// When it expires, in Unix seconds (the `exp` claim).
    expires: i64,
    revocations: Arc<RevocationList>,
}

impl Verified {
    pub(crate) fn new(principal: Principal, issued_ms: i64, expires: i64, revocations: Arc<RevocationList>) -> Self {
        Self {
            principal,
            issued_ms,
            expires,
            revocations,
        }
    }

    /// Who the token speaks for.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Who the token speaks for, taken out.
    pub fn into_principal(self) -> Principal {
        self.principal
    }

    /// The refusal if the token has been revoked.
    pub(crate) fn unless_revoked(self) -> Result<Self, Error> {
        if self.revocations.is_revoked(&self.principal, self.issued_ms) {
            crate::serve::audit::record_subject(&self.principal);
            return Err(revoked());
        }
        Ok(self)
    }

    /// Resolves, with the reason, once the token no longer counts: at its
    /// expiry, or as soon as a revocation that covers it arrives.
    pub async fn lapsed(&self) -> Error {
        loop {
            // Registered before the check, so a revocation applied between
            // the check and the wait still wakes it.
            let changed = self.revocations.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.revocations.is_revoked(&self.principal, self.issued_ms) {
                return revoked();
            }
            tokio::select! {
                () = tokio::time::sleep(self.time_left()) => return expired(),
                () = changed => {}
            }
        }
    }

    fn time_left(&self) -> Duration {
        let expires = UNIX_EPOCH + Duration::from_secs(u64::try_from(self.expires).unwrap_or(0));
        expires.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }
}

/// The refusal of a revoked token.
pub(crate) fn revoked() -> Error {
    Error::unauthenticated(
        "TOKEN_REVOKED",
        "the access token has been revoked; sign in or refresh again",
    )
}

/// The refusal of an expired token.
pub(crate) fn expired() -> Error {
    Error::unauthenticated("TOKEN_EXPIRED", "the access token has expired")
}

/// The verified token of a call, put there by the authentication layer;
/// UNAUTHENTICATED when the call carried none.
pub fn verified<T>(request: &tonic::Request<T>) -> Result<&Verified, Error> {
    request
        .extensions()
        .get::<Verified>()
        .ok_or_else(|| Error::unauthenticated("MISSING_TOKEN", "this call needs an access token"))
}

/// `stream` for as long as `token` counts; then one UNAUTHENTICATED error
/// (TOKEN_EXPIRED or TOKEN_REVOKED) and the end.
pub fn until_lapsed<T, S>(stream: S, token: Verified) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let lapsed = Box::pin(async move { token.lapsed().await });
    futures::stream::unfold(Some((stream.boxed(), lapsed)), |state| async move {
        let (mut stream, mut lapsed) = state?;
        tokio::select! {
            biased;
            error = &mut lapsed => Some((Err(Status::from(error)), None)),
            item = stream.next() => item.map(|item| (item, Some((stream, lapsed)))),
        }
    })
}

#[cfg(test)]
mod tests {
    use keel::auth::v1::{Revocation, revocation};
    use uuid::Uuid;

    use super::*;
    use crate::auth::principal::UserPrincipal;

    fn user() -> Principal {
        Principal::User(UserPrincipal {
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            roles: Vec::new(),
        })
    }

    fn reason(status: &Status) -> Option<String> {
        use tonic_types::StatusExt as _;
        status.get_details_error_info().map(|info| info.reason)
    }

    #[tokio::test]
    async fn a_token_lapses_when_a_revocation_covering_it_arrives() {
        let revocations = Arc::new(RevocationList::default());
        let principal = user();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let expires = chrono::Utc::now().timestamp() + 600;
        let token = Verified::new(principal.clone(), now_ms - 10, expires, revocations.clone());
        let lapsed = tokio::spawn({
            let token = token.clone();
            async move { token.lapsed().await }
        });
        // A revocation of someone else wakes it, but does not end it.
        revocations.apply(&[Revocation {
            sequence: 1,
            subject: Some(revocation::Subject::UserId(Uuid::now_v7().to_string())),
            not_before: Some(prost_types::Timestamp {
                seconds: now_ms / 1000 + 1,
                nanos: 0,
            }),
        }]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!lapsed.is_finished());
        let Principal::User(user) = principal else {
            unreachable!()
        };
        revocations.apply(&[Revocation {
            sequence: 2,
            subject: Some(revocation::Subject::SessionId(user.session_id.to_string())),
            not_before: Some(prost_types::Timestamp {
                seconds: now_ms / 1000 + 1,
                nanos: 0,
            }),
        }]);
        let error = tokio::time::timeout(Duration::from_secs(1), lapsed)
            .await
            .expect("ends at once")
            .expect("no panic");
        assert_eq!(reason(&Status::from(error)).as_deref(), Some("TOKEN_REVOKED"));
    }

    #[tokio::test]
    async fn a_token_lapses_at_its_expiry_and_a_stream_with_it() {
        let expires = chrono::Utc::now().timestamp() + 1;
        let token = Verified::new(user(), 0, expires, Arc::default());
        let replies = futures::stream::pending::<Result<u32, Status>>();
        let mut stream = Box::pin(until_lapsed(replies, token));
        let ended = tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .expect("the stream ends at the expiry")
            .expect("with an error");
        let status = ended.expect_err("UNAUTHENTICATED");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(reason(&status).as_deref(), Some("TOKEN_EXPIRED"));
        assert!(stream.next().await.is_none(), "and nothing after it");
    }
}
