//! Users' webhook endpoints: registering one (its URL checked by the SSRF
//! guard, its signing secret made and sealed), listing, deleting, and
//! rotating the secret with an overlap during which both sign.

use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use keel_platform::{Error, auth::principal::UserPrincipal, db::SecretBytes};
use uuid::Uuid;

use super::{Notifications, Page};
use crate::{
    store::{
        deliveries,
        endpoints::{self, EndpointRow, NewEndpoint},
    },
    webhook::{secret::SigningSecret, ssrf::Refusal},
};

/// The most endpoints one user may have.
const MAX_ENDPOINTS_PER_USER: usize = 20;

/// The overlap of a rotation when the caller names none.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The longest overlap a rotation may ask for.
const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// An endpoint to register, its fields read and checked (the URL is
/// checked when it is added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddEndpoint {
    /// Where deliveries are POSTed.
    pub url: String,
    /// The topics it takes, each once; empty takes every topic.
    pub event_types: Vec<String>,
    /// Its owner's note.
    pub description: String,
}

/// An endpoint and its new signing secret, which its owner sees this once.
#[derive(Debug, Clone)]
pub struct EndpointWithSecret {
    /// The endpoint as stored.
    pub endpoint: EndpointRow,
    /// The secret that signs from now on.
    pub secret: SigningSecret,
}

impl Notifications {
    /// Registers an endpoint of `owner`'s (a user may have at most 20);
    /// its URL must pass the SSRF guard.
    pub async fn add_endpoint(&self, owner: Uuid, wanted: &AddEndpoint) -> Result<EndpointWithSecret, Error> {
        // The URL's rules and where it resolves to now; each delivery checks
        // again, since DNS can change.
        let url = self.webhooks.check_endpoint(&wanted.url).await.map_err(refused_url)?;

        let id = Uuid::now_v7();
        let secret = SigningSecret::generate()?;
        let (sealed, sealed_with) = secret.seal(self.secrets_key.as_ref(), id)?;
        let sealed = SecretBytes::from(sealed);
        let mut conn = self.pool.get().await?;
        let row = conn
            .transaction::<_, Error, _>(async |conn| {
                // Serializes one user's creations, so the cap holds.
                let existing = endpoints::page(conn, Some(owner), None, MAX_ENDPOINTS_PER_USER as i64 + 1).await?;
                if existing.len() >= MAX_ENDPOINTS_PER_USER {
                    return Err(Error::failed_precondition(
                        "TOO_MANY_WEBHOOK_ENDPOINTS",
                        format!("a user may have at most {MAX_ENDPOINTS_PER_USER} webhook endpoints; delete one first"),
                    ));
                }
                Ok(endpoints::insert(
                    conn,
                    &NewEndpoint {
                        id,
                        user_id: owner,
                        url: url.as_str(),
                        event_types: &wanted.event_types,
                        description: &wanted.description,
                        secret: &sealed,
                        sealed_with: sealed_with.as_deref(),
                    },
                )
                .await?)
            })
            .await?;
        tracing::info!(endpoint_id = %row.id, user_id = %row.user_id, "webhook endpoint created");
        Ok(EndpointWithSecret { endpoint: row, secret })
    }

    /// A page of at most `limit` endpoints, oldest first, after the `after`
    /// id: the caller's own, or, for an admin, everyone's.
    pub async fn endpoints(
        &self,
        caller: &UserPrincipal,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<EndpointRow>, Error> {
        let owner = (!caller.is_admin()).then_some(caller.user_id);
        let mut conn = self.pool.get().await?;
        let rows = endpoints::page(&mut conn, owner, after, limit + 1).await?;
        Ok(Page::of(rows, limit, |row| row.id))
    }

    /// Deletes endpoint `id`, dropping what was queued for it.
    pub async fn delete_endpoint(&self, caller: &UserPrincipal, id: Uuid) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let row = endpoints::lock(conn, id).await?;
            mine(caller, row)?;
            endpoints::delete(conn, id).await?;
            deliveries::drop_pending_for(conn, id, "the endpoint was deleted").await?;
            Ok(())
        })
        .await?;
        tracing::info!(endpoint_id = %id, "webhook endpoint deleted");
        Ok(())
    }

    /// Gives endpoint `id` a new signing secret; the old one goes on
    /// signing for `overlap` (a day when `None`, at most seven days; zero
    /// retires it at once).
    pub async fn rotate_endpoint_secret(
        &self,
        caller: &UserPrincipal,
        id: Uuid,
        overlap: Option<Duration>,
    ) -> Result<EndpointWithSecret, Error> {
        // Above the most is the most (as a page size above 100 is 100).
        let overlap = overlap.map_or(DEFAULT_OVERLAP, |overlap| overlap.min(MAX_OVERLAP));
        let secret = SigningSecret::generate()?;
        let (sealed, sealed_with) = secret.seal(self.secrets_key.as_ref(), id)?;
        let sealed = SecretBytes::from(sealed);
        let mut conn = self.pool.get().await?;
        let row = conn
            .transaction::<_, Error, _>(async |conn| {
                let row = mine(caller, endpoints::lock(conn, id).await?)?;
                let until = (!overlap.is_zero())
                    .then(|| Utc::now() + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::days(1)));
                // The old secret goes on signing until then, stored the way the
                // new one is (the key may have been set since it was made).
                let previous = match until {
                    Some(_) => {
                        let old = SigningSecret::open(
                            row.secret.expose(),
                            row.sealed_with.as_deref(),
                            self.secrets_key.as_ref(),
                            id,
                        )?;
                        Some(SecretBytes::from(old.seal(self.secrets_key.as_ref(), id)?.0))
                    }
                    None => None,
                };
                let previous = previous.as_ref();
                Ok(endpoints::rotate(conn, id, &sealed, previous, until, sealed_with.as_deref()).await?)
            })
            .await?;
        tracing::info!(endpoint_id = %id, "webhook endpoint secret rotated");
        Ok(EndpointWithSecret { endpoint: row, secret })
    }
}

/// The endpoint, if the caller may act on it: a user only on their own,
/// PERMISSION_DENIED otherwise whether or not it exists; an admin on any.
fn mine(caller: &UserPrincipal, row: Option<EndpointRow>) -> Result<EndpointRow, Error> {
    match row {
        Some(row) if row.user_id == caller.user_id || caller.is_admin() => Ok(row),
        None if caller.is_admin() => Err(Error::not_found("webhook endpoint")),
        _ => Err(Error::permission_denied(
            "NOT_YOUR_WEBHOOK_ENDPOINT",
            "you may act only on your own webhook endpoints",
        )),
    }
}

/// A URL the contract allows but this deployment will not call is refused by
/// policy (PERMISSION_DENIED); one that breaks the URL rules is a bad field.
fn refused_url(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Forbidden { .. }
        | Refusal::Scheme {
            http_allowed: false, ..
        } => Error::permission_denied("WEBHOOK_TARGET_FORBIDDEN", refusal.to_string()),
        _ => Error::invalid_field("webhook_endpoint.url", "WEBHOOK_URL_INVALID", refusal.to_string()),
    }
}
