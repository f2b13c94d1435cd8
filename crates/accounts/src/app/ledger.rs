//! The balance and the ledger of movements behind it: Deposit, Debit,
//! Refund and VoidDebit move money, each once per request id; the balance
//! and the history are read here too.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::events::v1::{BalanceChanged, event::Payload};
use keel_platform::{Error, db::paging::encode_position, events::outbox, proto::money};
use uuid::Uuid;

use super::{Accounts, Page, SOURCE, Target};
use crate::{
    domain::{self, Amount, DebitKeyState, Decline, Kind, RequestId},
    store::{
        self,
        accounts::AccountRow,
        debit_keys::{ClosedKeyRow, NewClosedKey},
        ledger::{EntryRow, NewEntry},
    },
};

/// A movement (Deposit, Debit, Refund), checked.
#[derive(Debug, Clone)]
pub struct Movement {
    pub account_id: Uuid,
    pub amount: Amount,
    pub request_id: RequestId,
    pub reference: String,
    pub reason: String,
    /// For a refund, the debit it gives back.
    pub refund_of: Option<Uuid>,
}

/// A checked VoidDebit request.
#[derive(Debug, Clone)]
pub struct Void {
    pub account_id: Uuid,
    /// The key of the debit to void.
    pub request_id: RequestId,
    /// The key of the refund that gives back what the debit took.
    pub refund_request_id: RequestId,
    pub reason: String,
}

/// What VoidDebit found: the key's debit, if it had debited (None: it
/// never charged, and now never will), and the refund that gave back what
/// was left of it (None if nothing was).
#[derive(Debug, Clone)]
pub struct Voided {
    pub debit: Option<EntryRow>,
    pub refund: Option<EntryRow>,
}

/// An account's balance.
#[derive(Debug, Clone)]
pub struct Balance {
    pub account: AccountRow,
    /// When the balance last changed; None if it never did.
    pub update_time: Option<DateTime<Utc>>,
}

impl Accounts {
    /// Deposits `movement`, once per request id (see `move_money`).
    pub async fn deposit(&self, movement: &Movement) -> Result<EntryRow, Error> {
        self.move_money(Kind::Deposit, movement).await
    }

    /// Debits `movement`, once per request id; a declined debit closes its
    /// key (see `move_money`).
    pub async fn debit(&self, movement: &Movement) -> Result<EntryRow, Error> {
        self.move_money(Kind::Debit, movement).await
    }

    /// Refunds `movement`, which names the debit it gives back in
    /// `refund_of`, once per request id (see `move_money`).
    pub async fn refund(&self, movement: &Movement) -> Result<EntryRow, Error> {
        self.move_money(Kind::Refund, movement).await
    }

    /// Applies one movement, once per `request_id`, atomically: the account
    /// is locked, a repeated key returns the first result, the balance never
    /// goes below zero, and the ledger entry, the new balance and the
    /// BalanceChanged event commit together. A declined Debit commits its
    /// key as closed, so that its retries answer the same decline.
    async fn move_money(&self, kind: Kind, movement: &Movement) -> Result<EntryRow, Error> {
        let mut conn = self.pool.get().await?;
        let outcome = conn
            .transaction::<_, Error, _>(async |conn| {
                let key = movement.request_id.as_str();
                if kind == Kind::Debit {
                    store::debit_keys::lock(conn, movement.account_id, key).await?;
                }
                let account = store::accounts::lock(conn, movement.account_id).await?;
                if let Some(first) = store::ledger::find_by_request(conn, movement.account_id, key).await? {
                    return replay(first, kind, movement).map(Outcome::Moved);
                }
                if kind == Kind::Debit {
                    let closed = match (
                        store::debit_keys::find_closed(conn, movement.account_id, key).await?,
                        &account,
                    ) {
                        (Some(closed), _) => Some(closed),
                        (None, None) => {
                            Some(store::debit_keys::close(conn, movement.declined(Decline::AccountNotFound)).await?)
                        }
                        (None, Some(_)) => None,
                    };
                    if let Some(closed) = closed {
                        let currency = account.as_ref().map(|a| a.currency.as_str());
                        return Ok(Outcome::Refused(closed_answer(&closed, movement, currency)?));
                    }
                }
                let account = account.ok_or_else(|| Error::not_found("account"))?;
                if let Some(decline) = declined_by(&account, kind, movement) {
                    let error = decline_error(decline, &movement.amount, Some(&account.currency));
                    if kind != Kind::Debit {
                        return Err(error);
                    }
                    store::debit_keys::close(conn, movement.declined(decline)).await?;
                    return Ok(Outcome::Refused(error));
                }
                append(conn, kind, &account, movement).await.map(Outcome::Moved)
            })
            .await?;
        match outcome {
            Outcome::Moved(entry) => Ok(entry),
            Outcome::Refused(error) => Err(error),
        }
    }

    /// Closes a debit key for good: refunds what is left of its debit if it
    /// debited, voids it otherwise. Under the key's and the account's locks,
    /// so a racing Debit with the key either comes first (and is refunded)
    /// or finds it voided.
    pub async fn void_debit(&self, void: &Void) -> Result<Voided, Error> {
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let key = void.request_id.as_str();
            store::debit_keys::lock(conn, void.account_id, key).await?;
            let account = store::accounts::lock(conn, void.account_id).await?;
            let Some(debit) = store::ledger::find_by_request(conn, void.account_id, key).await? else {
                // Declined or voided before: that stands, and never charged either.
                store::debit_keys::close(
                    conn,
                    NewClosedKey {
                        account_id: void.account_id,
                        request_id: key,
                        state: DebitKeyState::Voided,
                        reason: domain::VOIDED,
                        amount_minor: None,
                        currency: None,
                        reference: None,
                    },
                )
                .await?;
                return Ok(Voided {
                    debit: None,
                    refund: None,
                });
            };
            if Kind::parse(&debit.kind) != Some(Kind::Debit) {
                return Err(request_id_reused());
            }
            let account =
                account.ok_or_else(|| anyhow::anyhow!("account {} has entries but no row", void.account_id))?;
            let refund = refund_rest(conn, &account, &debit, void).await?;
            Ok(Voided {
                debit: Some(debit),
                refund,
            })
        })
        .await
    }

    /// The target account's balance, and when it last changed.
    pub async fn balance(&self, target: Target) -> Result<Balance, Error> {
        let mut conn = self.pool.get().await?;
        let id = match target {
            Target::Own(id) | Target::Any(id) => id,
        };
        // The balance last changed with the ledger entry it was read at (the
        // account's updated_at also moves with profile changes); never, without one.
        let (account, update_time) = match (store::accounts::find_with_balance_time(&mut conn, id).await?, target) {
            (Some(found), _) => found,
            (None, Target::Own(id)) => (
                store::accounts::ensure(&mut conn, id, "", self.currency.as_str()).await?,
                None,
            ),
            (None, Target::Any(_)) => return Err(Error::not_found("account")),
        };
        Ok(Balance { account, update_time })
    }

    /// One page of the target account's ledger, newest first, before the
    /// entry `before` (a seq).
    pub async fn transactions(&self, target: Target, before: Option<i64>, limit: i64) -> Result<Page<EntryRow>, Error> {
        let account = self.account(target).await?;
        let mut conn = self.pool.get().await?;
        let rows = store::ledger::entries(&mut conn, account.id, before, limit + 1).await?;
        Ok(Page::of(rows, limit, |row| encode_position(row.seq)))
    }
}

/// How a movement's transaction ended. A refusal may have written the
/// debit key it closed, so it commits and is answered after the commit.
enum Outcome {
    Moved(EntryRow),
    Refused(Error),
}

/// Why `account` refuses the movement, if it does.
fn declined_by(account: &AccountRow, kind: Kind, movement: &Movement) -> Option<Decline> {
    if movement.amount.currency.as_str() != account.currency {
        Some(Decline::CurrencyMismatch)
    } else if kind == Kind::Debit && account.balance_minor < movement.amount.minor {
        Some(Decline::InsufficientFunds)
    } else {
        None
    }
}

/// The answer to a declined movement, the same the first time and on every
/// retry. `account_currency` is None when the account does not exist.
fn decline_error(decline: Decline, amount: &Amount, account_currency: Option<&str>) -> Error {
    let reason = decline.as_str();
    match decline {
        Decline::InsufficientFunds => {
            Error::failed_precondition(reason, "the balance is lower than the amount to debit")
        }
        Decline::CurrencyMismatch => Error::failed_precondition(
            reason,
            match account_currency {
                Some(held) => format!("the account holds {held}, not {}", amount.currency.as_str()),
                None => format!("the account does not hold {}", amount.currency.as_str()),
            },
        ),
        Decline::AccountNotFound => Error::not_found("account"),
    }
}

/// What a closed debit key answers a Debit: DEBIT_VOIDED, or the first
/// decline again if the retry asks for the same.
fn closed_answer(closed: &ClosedKeyRow, movement: &Movement, account_currency: Option<&str>) -> Result<Error, Error> {
    if closed.state == DebitKeyState::Voided {
        return Ok(Error::failed_precondition(
            "DEBIT_VOIDED",
            "this debit was voided; use a new request_id",
        ));
    }
    let decline = Decline::parse(&closed.reason)
        .ok_or_else(|| anyhow::anyhow!("debit key {:?} was declined for {:?}", closed.request_id, closed.reason))?;
    let same = closed.amount_minor == Some(movement.amount.minor)
        && closed.currency.as_deref() == Some(movement.amount.currency.as_str())
        && closed.reference.as_deref() == Some(movement.reference.as_str());
    if !same {
        return Ok(request_id_reused());
    }
    Ok(decline_error(decline, &movement.amount, account_currency))
}

/// Appends the movement to the locked `account`'s ledger, moves its balance
/// and enqueues BalanceChanged, in the caller's transaction. The caller has
/// checked the currency and, for a debit, the balance.
async fn append(
    conn: &mut AsyncPgConnection,
    kind: Kind,
    account: &AccountRow,
    movement: &Movement,
) -> Result<EntryRow, Error> {
    if let Some(debit_id) = movement.refund_of {
        check_refund(conn, account.id, debit_id, movement.amount.minor).await?;
    }
    let delta = kind.delta(movement.amount.minor);
    let balance_after = account
        .balance_minor
        .checked_add(delta)
        .ok_or_else(|| Error::failed_precondition("BALANCE_OVERFLOW", "the balance would overflow"))?;
    let entry = store::ledger::append(
        conn,
        NewEntry {
            id: Uuid::now_v7(),
            account_id: account.id,
            seq: account.ledger_seq + 1,
            kind: kind.as_str(),
            amount_minor: movement.amount.minor,
            delta_minor: delta,
            currency: &account.currency,
            balance_after_minor: balance_after,
            request_id: movement.request_id.as_str(),
            reference: &movement.reference,
            reason: &movement.reason,
            refund_of: movement.refund_of,
        },
    )
    .await?;
    outbox::enqueue(
        conn,
        SOURCE,
        Payload::BalanceChanged(BalanceChanged {
            account_id: account.id.to_string(),
            transaction_id: entry.id.to_string(),
            delta: Some(money(delta, &account.currency)),
            balance: Some(money(balance_after, &account.currency)),
        }),
    )
    .await?;
    Ok(entry)
}

/// The refund VoidDebit owes for `debit`: the one under its refund key if
/// there is one, else a refund of what is left of the debit (None when
/// nothing is).
async fn refund_rest(
    conn: &mut AsyncPgConnection,
    account: &AccountRow,
    debit: &EntryRow,
    void: &Void,
) -> Result<Option<EntryRow>, Error> {
    let refund_key = void.refund_request_id.as_str();
    if let Some(first) = store::ledger::find_by_request(conn, account.id, refund_key).await? {
        let same = Kind::parse(&first.kind) == Some(Kind::Refund) && first.refund_of == Some(debit.id);
        return if same {
            Ok(Some(first))
        } else {
            Err(request_id_reused())
        };
    }
    let rest = debit.amount_minor.saturating_sub(refunded(conn, debit.id).await?);
    if rest <= 0 {
        return Ok(None);
    }
    let amount = Amount::parse("amount", Some(&money(rest, &debit.currency)))
        .map_err(|v| anyhow::anyhow!("debit {} cannot be refunded: {}", debit.id, v.description))?;
    let refund = Movement {
        account_id: account.id,
        amount,
        request_id: void.refund_request_id.clone(),
        // So a plain Refund of the same debit, key and amount replays it.
        reference: debit.reference.clone(),
        reason: void.reason.clone(),
        refund_of: Some(debit.id),
    };
    append(conn, Kind::Refund, account, &refund).await.map(Some)
}

/// How much of debit `debit_id` is refunded already.
async fn refunded(conn: &mut AsyncPgConnection, debit_id: Uuid) -> Result<i64, Error> {
    Ok(store::ledger::refund_amounts(conn, debit_id)
        .await?
        .into_iter()
        .try_fold(0i64, i64::checked_add)
        .ok_or_else(|| anyhow::anyhow!("the refunds of debit {debit_id} overflow"))?)
}

/// Refuses a refund of `amount` minor units unless `debit_id` is a debit of
/// the (locked) account with at least that much not yet refunded. The account
/// lock orders the refunds of one debit, so the sum read here stays true
/// until the entry commits; the database checks the same on insert.
async fn check_refund(
    conn: &mut AsyncPgConnection,
    account_id: Uuid,
    debit_id: Uuid,
    amount: i64,
) -> Result<(), Error> {
    // Another account's debit answers as a missing one: whether an id exists
    // elsewhere is not this caller's to learn.
    let debit = store::ledger::find(conn, debit_id)
        .await?
        .filter(|entry| entry.account_id == account_id)
        .ok_or_else(|| {
            Error::not_found("debit transaction of this account")
                .with_metadata("debit_transaction_id", debit_id.to_string())
        })?;
    if Kind::parse(&debit.kind) != Some(Kind::Debit) {
        return Err(Error::invalid_field(
            "debit_transaction_id",
            "NOT_A_DEBIT",
            format!("must name a debit, not a {}", debit.kind),
        ));
    }
    let refunded = refunded(conn, debit_id).await?;
    let refundable = debit.amount_minor.saturating_sub(refunded).max(0);
    if amount > refundable {
        return Err(Error::failed_precondition(
            "REFUND_EXCEEDS_DEBIT",
            format!(
                "debit {debit_id} took {} and {refunded} of it is refunded already; at most {refundable} is left",
                debit.amount_minor
            ),
        )
        .with_metadata("debit_transaction_id", debit_id.to_string())
        .with_metadata("refundable_minor", refundable.to_string()));
    }
    Ok(())
}

impl Movement {
    /// This debit's key, closed as declined for `decline`.
    fn declined(&self, decline: Decline) -> NewClosedKey<'_> {
        NewClosedKey {
            account_id: self.account_id,
            request_id: self.request_id.as_str(),
            state: DebitKeyState::Declined,
            reason: decline.as_str(),
            amount_minor: Some(self.amount.minor),
            currency: Some(self.amount.currency.as_str()),
            reference: Some(&self.reference),
        }
    }
}

/// The first result of a request id, if the retry asks for the same thing
/// (kind, amount, reference and, for a refund, debit).
fn replay(first: EntryRow, kind: Kind, movement: &Movement) -> Result<EntryRow, Error> {
    let same = Kind::parse(&first.kind) == Some(kind)
        && first.amount_minor == movement.amount.minor
        && first.currency == movement.amount.currency.as_str()
        && first.reference == movement.reference
        && first.refund_of == movement.refund_of;
    if same { Ok(first) } else { Err(request_id_reused()) }
}

fn request_id_reused() -> Error {
    Error::already_exists(
        "REQUEST_ID_REUSED",
        "this request_id was used for a different movement; use a new one",
    )
}
