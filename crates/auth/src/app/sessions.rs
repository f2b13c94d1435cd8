//! A user's sessions: logging out, listing them, ending one.

use keel_platform::{Error, serve::audit};
use uuid::Uuid;

use super::Auth;
use crate::{
    domain::OpaqueToken,
    store::sessions::{self, SessionRow},
};

impl Auth {
    /// Ends the session of a refresh token (nothing happens for a token
    /// that is unknown or whose session has ended).
    pub async fn logout(&self, refresh_token: &OpaqueToken) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        if let Some((_, session)) = sessions::lock_refresh_token(&mut conn, &refresh_token.hash()).await?
            && sessions::revoke(&mut conn, session.id, "logout").await?
        {
            audit::revoked(session.user_id, Some(session.id), "logout", 1);
        }
        Ok(())
    }

    /// Up to `limit` of the active sessions of `user_id`, newest first,
    /// older than the session `before` when one is given.
    pub async fn list_sessions(
        &self,
        user_id: Uuid,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionRow>, Error> {
        let mut conn = self.pool.get().await?;
        Ok(sessions::active(&mut conn, user_id, before, limit).await?)
    }

    /// Ends session `session_id` of `user_id`; another user's session is
    /// reported exactly like a missing one.
    pub async fn revoke_session(&self, user_id: Uuid, session_id: Uuid) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        match sessions::find(&mut conn, session_id).await? {
            Some(session) if session.user_id == user_id => {
                if sessions::revoke(&mut conn, session.id, "revoked_by_user").await? {
                    audit::revoked(session.user_id, Some(session.id), "revoked_by_user", 1);
                }
                Ok(())
            }
            _ => Err(Error::not_found("session")),
        }
    }
}
