//! The accounts themselves: listing them and changing a profile. Reading one
//! is [`Accounts::account`].

use keel_platform::{Error, db::paging::encode_token};
use uuid::Uuid;

use super::{Accounts, Page, Target};
use crate::store::{self, accounts::AccountRow};

/// A change to a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUpdate {
    /// The new display name (checked); None when there is nothing to change.
    pub display_name: Option<String>,
    /// The version the caller read (from its etag), if it sent one: the
    /// change applies only while the account is still at it.
    pub expected_version: Option<i64>,
}

impl Accounts {
    /// Applies `update` to the target account and returns it as it is now.
    pub async fn update_profile(&self, target: Target, update: ProfileUpdate) -> Result<AccountRow, Error> {
        let current = self.account(target).await?;
        let expected = update.expected_version;
        let Some(display_name) = update.display_name else {
            if expected.is_some_and(|version| version != current.version) {
                return Err(etag_mismatch());
            }
            return Ok(current);
        };
        let mut conn = self.pool.get().await?;
        store::accounts::update_display_name(&mut conn, current.id, &display_name, expected)
            .await?
            .ok_or_else(etag_mismatch)
    }

    /// One page of every account, by id, after `after`.
    pub async fn list_accounts(&self, after: Option<Uuid>, limit: i64) -> Result<Page<AccountRow>, Error> {
        let mut conn = self.pool.get().await?;
        let rows = store::accounts::list(&mut conn, after, limit + 1).await?;
        Ok(Page::of(rows, limit, |row| encode_token(row.id)))
    }
}

fn etag_mismatch() -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        "the account changed since it was read; read it again and retry",
    )
}
