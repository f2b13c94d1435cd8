//! What administrators do to users: set their roles, disable them.

use diesel_async::AsyncConnection as _;
use keel_platform::{Error, serve::audit};
use uuid::Uuid;

use super::Auth;
use crate::{
    domain::Roles,
    store::{
        revocations, sessions,
        users::{self, UserRow},
    },
};

impl Auth {
    /// Gives `user_id` exactly `roles`. Tokens carrying the old roles stop
    /// counting; a refresh gets the new ones.
    pub async fn set_user_roles(&self, user_id: Uuid, roles: &Roles) -> Result<UserRow, Error> {
        let mut conn = self.pool.get().await?;
        let user = conn
            .transaction::<_, Error, _>(async |conn| {
                let user = users::set_roles(conn, user_id, roles.names())
                    .await?
                    .ok_or_else(|| Error::not_found("user"))?;
                revocations::revoke_user(conn, user_id).await?;
                Ok(user)
            })
            .await?;
        audit::revoked(user_id, None, "roles_changed", 0);
        Ok(user)
    }

    /// Disables `user_id` for administrator `admin_id`, ending every session
    /// of theirs; an administrator cannot disable themselves.
    pub async fn disable_user(&self, admin_id: Uuid, user_id: Uuid) -> Result<UserRow, Error> {
        if user_id == admin_id {
            return Err(Error::failed_precondition(
                "CANNOT_DISABLE_SELF",
                "an administrator cannot disable themselves",
            ));
        }
        let mut conn = self.pool.get().await?;
        let (user, ended) = conn
            .transaction::<_, Error, _>(async |conn| {
                let user = users::disable(conn, user_id)
                    .await?
                    .ok_or_else(|| Error::not_found("user"))?;
                let ended = sessions::revoke_all_of_user(conn, user_id, None, "user_disabled").await?;
                Ok((user, ended))
            })
            .await?;
        audit::revoked(user_id, None, "user_disabled", ended);
        Ok(user)
    }
}
