//! What accounts does, apart from how it is called: the service's state
//! ([`Accounts`]) and its operations, one file per capability. The gRPC
//! adapters in `service/` call these; nothing here knows gRPC's types.
//!
//! - [`profiles`]: reading, listing and renaming accounts;
//! - [`ledger`]: moving money (deposit, debit, refund, void a debit) and
//!   reading the balance and its history;
//! - [`events`]: the events of other services that accounts acts on
//!   (UserRegistered creates the account).

pub mod events;
pub mod ledger;
pub mod profiles;

use keel_platform::{
    Error, Principal,
    auth::principal::UserPrincipal,
    db::{Pool, paging},
    events::EventProducers,
};
use uuid::Uuid;

pub use ledger::{Balance, Movement, Void, Voided};
pub use profiles::ProfileUpdate;

use crate::{
    domain::Currency,
    store::{self, accounts::AccountRow},
};

/// The event source name of accounts: its service name, which is also the
/// client id its relay's tokens carry (consumers check that they match).
pub const SOURCE: &str = crate::domain::NAME;

/// The accounts service's state: its database, the currency of new accounts
/// and who may produce the events it consumes. Clones share it.
#[derive(Clone)]
pub struct Accounts {
    pub(crate) pool: Pool,
    pub(crate) currency: Currency,
    /// Who may be the source of each event type the sink is handed.
    pub(crate) event_producers: EventProducers,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Accounts over a (migrated) database, opening new accounts in
    /// `currency`; its event sink accepts each event type only from
    /// `event_producers`' producer of it.
    pub fn new(pool: Pool, currency: Currency, event_producers: EventProducers) -> Self {
        Self {
            pool,
            currency,
            event_producers,
        }
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The target account; the caller's own is created on first access, so a
    /// user who has just registered never gets NOT_FOUND for it.
    pub async fn account(&self, target: Target) -> Result<AccountRow, Error> {
        let mut conn = self.pool.get().await?;
        match target {
            Target::Own(id) => match store::accounts::find(&mut conn, id).await? {
                Some(account) => Ok(account),
                None => Ok(store::accounts::ensure(&mut conn, id, "", self.currency.as_str()).await?),
            },
            Target::Any(id) => store::accounts::find(&mut conn, id)
                .await?
                .ok_or_else(|| Error::not_found("account")),
        }
    }
}

/// Whose account a call may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The caller's own account (created on first access).
    Own(Uuid),
    /// Any account, for an administrator.
    Any(Uuid),
}

impl Target {
    /// Resolves `account_id` ("me" or an id) for the caller. A user may name
    /// only their own account: another id is PERMISSION_DENIED whether or not
    /// it exists (the id alone decides, so nothing is revealed).
    pub fn resolve(principal: &Principal, account_id: &str) -> Result<Self, Error> {
        let user: &UserPrincipal = principal.user()?;
        let id = if account_id == "me" {
            user.user_id
        } else {
            Uuid::parse_str(account_id)
                .map_err(|_| Error::invalid_field("account_id", "string.pattern", "must be a UUID or \"me\""))?
        };
        if id == user.user_id {
            Ok(Target::Own(id))
        } else if user.is_admin() {
            Ok(Target::Any(id))
        } else {
            Err(Error::permission_denied(
                "NOT_ACCOUNT_OWNER",
                "a user may only see and change their own account",
            ))
        }
    }
}

/// One page of a list, and the token of the next ("" after the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// The first `limit` of `rows` (read with one more, to tell whether
    /// another page follows), the next page's token made from the last.
    fn of(rows: Vec<T>, limit: i64, token: impl Fn(&T) -> String) -> Self {
        let (items, next_page_token) = paging::page(rows, limit, token);
        Self { items, next_page_token }
    }
}
