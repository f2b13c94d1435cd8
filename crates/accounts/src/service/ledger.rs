//! Deposit, Debit, Refund, VoidDebit, GetBalance and ListTransactions: the
//! balance and the ledger of movements behind it.

use diesel_async::AsyncConnection as _;
use keel::{
    accounts::v1 as pb,
    common::v1::Money,
    events::v1::{BalanceChanged, event::Payload},
};
use keel_platform::{
    Error, Principal,
    auth::scopes,
    db::paging,
    error::FieldViolation,
    events::outbox,
    proto::{money, timestamp},
    serve::rpc::{Violations, uuid_field},
};
use uuid::Uuid;

use super::{Accounts, SOURCE, target};
use crate::{
    domain::{self, Amount, DebitKeyState, Decline, Kind, RequestId},
    store::{self, AccountRow, ClosedKeyRow, EntryRow, NewClosedKey, NewEntry},
};

pub(super) async fn deposit(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::DepositRequest,
) -> Result<pb::DepositResponse, Error> {
    if caller.admin().is_err() && caller.service_with_scope(scopes::ACCOUNTS_DEPOSIT).is_err() {
        return Err(Error::permission_denied(
            "DEPOSIT_NOT_ALLOWED",
            format!(
                "deposits need the admin role or a service token with scope {}",
                scopes::ACCOUNTS_DEPOSIT
            ),
        ));
    }
    let entry = accounts.move_money(Kind::Deposit, Movement::from(&request)).await?;
    Ok(pb::DepositResponse {
        transaction: Some(entry_pb(&entry)),
    })
}

pub(super) async fn debit(accounts: &Accounts, request: pb::DebitRequest) -> Result<pb::DebitResponse, Error> {
    let entry = accounts.move_money(Kind::Debit, Movement::from(&request)).await?;
    Ok(pb::DebitResponse {
        transaction: Some(entry_pb(&entry)),
    })
}

pub(super) async fn refund(accounts: &Accounts, request: pb::RefundRequest) -> Result<pb::RefundResponse, Error> {
    let entry = accounts.move_money(Kind::Refund, Movement::from(&request)).await?;
    Ok(pb::RefundResponse {
        transaction: Some(entry_pb(&entry)),
    })
}

pub(super) async fn void_debit(
    accounts: &Accounts,
    request: pb::VoidDebitRequest,
) -> Result<pb::VoidDebitResponse, Error> {
    let void = Void::check(&request)?;
    let Voided { debit, refund } = accounts.void_debit(&void).await?;
    let outcome = match debit {
        Some(_) => pb::VoidOutcome::Refunded,
        None => pb::VoidOutcome::NeverCharged,
    };
    Ok(pb::VoidDebitResponse {
        outcome: outcome.into(),
        debit: debit.as_ref().map(entry_pb),
        refund: refund.as_ref().map(entry_pb),
    })
}

pub(super) async fn get_balance(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::GetBalanceRequest,
) -> Result<pb::GetBalanceResponse, Error> {
    let target = target(caller, &request.account_id)?;
    let account = accounts.account(target).await?;
    // The balance last changed with the ledger entry it was read at (the
    // account's updated_at also moves with profile changes); never, without one.
    let newest = match account.ledger_seq {
        0 => None,
        seq => {
            let mut conn = accounts.pool.get().await?;
            store::entries(&mut conn, account.id, Some(seq + 1), 1)
                .await?
                .into_iter()
                .next()
        }
    };
    Ok(pb::GetBalanceResponse {
        balance: Some(pb::Balance {
            account_id: account.id.to_string(),
            balance: Some(money(account.balance_minor, &account.currency)),
            update_time: newest.map(|entry| timestamp(entry.created_at)),
        }),
    })
}

pub(super) async fn list_transactions(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::ListTransactionsRequest,
) -> Result<pb::ListTransactionsResponse, Error> {
    let target = target(caller, &request.account_id)?;
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_position(&request.page_token)?;
    let account = accounts.account(target).await?;
    let mut conn = accounts.pool.get().await?;
    let rows = store::entries(&mut conn, account.id, before, limit + 1).await?;
    let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_position(row.seq));
    Ok(pb::ListTransactionsResponse {
        transactions: page.iter().map(entry_pb).collect(),
        next_page_token,
    })
}

impl Accounts {
    /// Applies one movement, once per `request_id`, atomically: the account
    /// is locked, a repeated key returns the first result, the balance never
    /// goes below zero, and the ledger entry, the new balance and the
    /// BalanceChanged event commit together. A declined Debit commits its
    /// key as closed, so that its retries answer the same decline.
    async fn move_money(&self, kind: Kind, movement: Movement<'_>) -> Result<EntryRow, Error> {
        let movement = movement.check()?;
        let mut conn = self.pool.get().await?;
        let outcome = conn
            .transaction::<_, Error, _>(async |conn| {
                let key = movement.request_id.as_str();
                if kind == Kind::Debit {
                    store::lock_debit_key(conn, movement.account_id, key).await?;
                }
                let account = store::lock_account(conn, movement.account_id).await?;
                if let Some(first) = store::find_entry_by_request(conn, movement.account_id, key).await? {
                    return replay(first, kind, &movement).map(Outcome::Moved);
                }
                if kind == Kind::Debit {
                    let closed = match (store::find_closed_key(conn, movement.account_id, key).await?, &account) {
                        (Some(closed), _) => Some(closed),
                        (None, None) => {
                            Some(store::close_debit_key(conn, movement.declined(Decline::AccountNotFound)).await?)
                        }
                        (None, Some(_)) => None,
                    };
                    if let Some(closed) = closed {
                        let currency = account.as_ref().map(|a| a.currency.as_str());
                        return Ok(Outcome::Refused(closed_answer(&closed, &movement, currency)?));
                    }
                }
                let account = account.ok_or_else(|| Error::not_found("account"))?;
                if let Some(decline) = declined_by(&account, kind, &movement) {
                    let error = decline_error(decline, &movement.amount, Some(&account.currency));
                    if kind != Kind::Debit {
                        return Err(error);
                    }
                    store::close_debit_key(conn, movement.declined(decline)).await?;
                    return Ok(Outcome::Refused(error));
                }
                append(conn, kind, &account, &movement).await.map(Outcome::Moved)
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
    async fn void_debit(&self, void: &Void) -> Result<Voided, Error> {
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let key = void.request_id.as_str();
            store::lock_debit_key(conn, void.account_id, key).await?;
            let account = store::lock_account(conn, void.account_id).await?;
            let Some(debit) = store::find_entry_by_request(conn, void.account_id, key).await? else {
                // Declined or voided before: that stands, and never charged either.
                store::close_debit_key(
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
}

/// How a movement's transaction ended. A refusal may have written the
/// debit key it closed, so it commits and is answered after the commit.
enum Outcome {
    Moved(EntryRow),
    Refused(Error),
}

/// Why `account` refuses the movement, if it does.
fn declined_by(account: &AccountRow, kind: Kind, movement: &Checked) -> Option<Decline> {
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
fn closed_answer(closed: &ClosedKeyRow, movement: &Checked, account_currency: Option<&str>) -> Result<Error, Error> {
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
    conn: &mut diesel_async::AsyncPgConnection,
    kind: Kind,
    account: &AccountRow,
    movement: &Checked,
) -> Result<EntryRow, Error> {
    if let Some(debit_id) = movement.refund_of {
        check_refund(conn, account.id, debit_id, movement.amount.minor).await?;
    }
    let delta = kind.delta(movement.amount.minor);
    let balance_after = account
        .balance_minor
        .checked_add(delta)
        .ok_or_else(|| Error::failed_precondition("BALANCE_OVERFLOW", "the balance would overflow"))?;
    let entry = store::append_entry(
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
    conn: &mut diesel_async::AsyncPgConnection,
    account: &AccountRow,
    debit: &EntryRow,
    void: &Void,
) -> Result<Option<EntryRow>, Error> {
    let refund_key = void.refund_request_id.as_str();
    if let Some(first) = store::find_entry_by_request(conn, account.id, refund_key).await? {
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
    let refund = Checked {
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
async fn refunded(conn: &mut diesel_async::AsyncPgConnection, debit_id: Uuid) -> Result<i64, Error> {
    Ok(store::refund_amounts(conn, debit_id)
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
    conn: &mut diesel_async::AsyncPgConnection,
    account_id: Uuid,
    debit_id: Uuid,
    amount: i64,
) -> Result<(), Error> {
    // Another account's debit answers as a missing one: whether an id exists
    // elsewhere is not this caller's to learn.
    let debit = store::find_entry(conn, debit_id)
        .await?
        .filter(|entry| entry.account_id == account_id)
        .ok_or_else(|| {
            Error::not_found("debit transaction of this account")
                .with_metadata("debit_transaction_id", debit_id.to_string())
        })?;
    if Kind::parse(&debit.kind) != Some(Kind::Debit) {
        return Err(Error::invalid_field(
            "debit_transaction_id",
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

/// The fields every movement request (Deposit, Debit, Refund) carries, and
/// for a refund the debit it gives back.
struct Movement<'a> {
    account_id: &'a str,
    amount: Option<&'a Money>,
    request_id: &'a str,
    reference: &'a str,
    reason: &'a str,
    debit_transaction_id: Option<&'a str>,
}

/// A movement request, checked.
struct Checked {
    account_id: Uuid,
    amount: Amount,
    request_id: RequestId,
    reference: String,
    reason: String,
    refund_of: Option<Uuid>,
}

impl Movement<'_> {
    /// The movement, or INVALID_ARGUMENT naming every bad field.
    fn check(self) -> Result<Checked, Error> {
        let mut violations = Violations::new();
        let account_id = violations.check(uuid_field("account_id", self.account_id));
        let amount = violations.check(Amount::parse("amount", self.amount));
        let request_id = violations.check(RequestId::parse("request_id", self.request_id));
        let reference = violations.check(domain::note("reference", self.reference));
        let reason = violations.check(domain::note("reason", self.reason));
        let refund_of = match self.debit_transaction_id {
            Some(raw) => violations.check(uuid_field("debit_transaction_id", raw)).map(Some),
            None => Some(None),
        };
        // Each missing value noted its violation.
        let (Some(account_id), Some(amount), Some(request_id), Some(reference), Some(reason), Some(refund_of)) =
            (account_id, amount, request_id, reference, reason, refund_of)
        else {
            return Err(violations.into_error());
        };
        Ok(Checked {
            account_id,
            amount,
            request_id,
            reference,
            reason,
            refund_of,
        })
    }
}

impl Checked {
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

/// A checked VoidDebit request.
struct Void {
    account_id: Uuid,
    request_id: RequestId,
    refund_request_id: RequestId,
    reason: String,
}

impl Void {
    /// The request, or INVALID_ARGUMENT naming every bad field.
    fn check(request: &pb::VoidDebitRequest) -> Result<Self, Error> {
        let mut violations = Violations::new();
        let account_id = violations.check(uuid_field("account_id", &request.account_id));
        let request_id = violations.check(RequestId::parse("request_id", &request.request_id));
        let refund_request_id = violations.check(
            RequestId::parse("refund_request_id", &request.refund_request_id).and_then(|refund_key| {
                if Some(refund_key.as_str()) == request_id.as_ref().map(RequestId::as_str) {
                    Err(FieldViolation {
                        field: "refund_request_id".into(),
                        description: "must differ from request_id: it is the refund's own key".into(),
                    })
                } else {
                    Ok(refund_key)
                }
            }),
        );
        let reason = violations.check(domain::note("reason", &request.reason));
        let (Some(account_id), Some(request_id), Some(refund_request_id), Some(reason)) =
            (account_id, request_id, refund_request_id, reason)
        else {
            return Err(violations.into_error());
        };
        Ok(Void {
            account_id,
            request_id,
            refund_request_id,
            reason,
        })
    }
}

/// What VoidDebit found: the key's debit, if it had debited (None: it
/// never charged, and now never will), and the refund that gave back what
/// was left of it (None if nothing was).
struct Voided {
    debit: Option<EntryRow>,
    refund: Option<EntryRow>,
}

macro_rules! movement_from {
    ($($request:ty),*) => {$(
        impl<'a> From<&'a $request> for Movement<'a> {
            fn from(request: &'a $request) -> Self {
                Movement {
                    account_id: &request.account_id,
                    amount: request.amount.as_ref(),
                    request_id: &request.request_id,
                    reference: &request.reference,
                    reason: &request.reason,
                    debit_transaction_id: None,
                }
            }
        }
    )*};
}

movement_from!(pb::DepositRequest, pb::DebitRequest);

impl<'a> From<&'a pb::RefundRequest> for Movement<'a> {
    fn from(request: &'a pb::RefundRequest) -> Self {
        Movement {
            account_id: &request.account_id,
            amount: request.amount.as_ref(),
            request_id: &request.request_id,
            reference: &request.reference,
            reason: &request.reason,
            debit_transaction_id: Some(&request.debit_transaction_id),
        }
    }
}

/// The first result of a request id, if the retry asks for the same thing
/// (kind, amount, reference and, for a refund, debit).
fn replay(first: EntryRow, kind: Kind, movement: &Checked) -> Result<EntryRow, Error> {
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

fn entry_pb(entry: &EntryRow) -> pb::Transaction {
    let kind = match Kind::parse(&entry.kind) {
        Some(Kind::Deposit) => pb::TransactionKind::Deposit,
        Some(Kind::Debit) => pb::TransactionKind::Debit,
        Some(Kind::Refund) => pb::TransactionKind::Refund,
        None => pb::TransactionKind::Unspecified,
    };
    pb::Transaction {
        id: entry.id.to_string(),
        account_id: entry.account_id.to_string(),
        kind: kind as i32,
        amount: Some(money(entry.amount_minor, &entry.currency)),
        balance_after: Some(money(entry.balance_after_minor, &entry.currency)),
        request_id: entry.request_id.clone(),
        reference: entry.reference.clone(),
        reason: entry.reason.clone(),
        create_time: Some(timestamp(entry.created_at)),
        debit_transaction_id: entry.refund_of.map(|id| id.to_string()).unwrap_or_default(),
    }
}
