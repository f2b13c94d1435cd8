//! Deposit, Debit, Refund, GetBalance and ListTransactions: the balance and
//! the ledger of movements behind it.

use diesel_async::AsyncConnection as _;
use keel::{
    accounts::v1 as pb,
    common::v1::Money,
    events::v1::{BalanceChanged, event::Payload},
};
use keel_platform::{
    Error, Principal, outbox, paging,
    proto::timestamp,
    rpc::{Violations, uuid_field},
    scopes,
};
use uuid::Uuid;

use super::{Accounts, SOURCE, money, target};
use crate::{
    domain::{self, Amount, Kind, RequestId},
    store::{self, EntryRow, NewEntry},
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
    /// BalanceChanged event commit together.
    async fn move_money(&self, kind: Kind, movement: Movement<'_>) -> Result<EntryRow, Error> {
        let Movement {
            account_id,
            amount,
            request_id,
            reference,
            reason,
            debit_transaction_id,
        } = movement;
        let mut violations = Violations::new();
        let account_id = violations.check(uuid_field("account_id", account_id));
        let amount = violations.check(Amount::parse("amount", amount));
        let request_id = violations.check(RequestId::parse(request_id));
        let reference = violations.check(domain::note("reference", reference));
        let reason = violations.check(domain::note("reason", reason));
        let refund_of = match debit_transaction_id {
            Some(raw) => violations.check(uuid_field("debit_transaction_id", raw)).map(Some),
            None => Some(None),
        };
        // Each missing value noted its violation.
        let (Some(account_id), Some(amount), Some(request_id), Some(reference), Some(reason), Some(refund_of)) =
            (account_id, amount, request_id, reference, reason, refund_of)
        else {
            return Err(violations.into_error());
        };

        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let account = store::lock_account(conn, account_id)
                .await?
                .ok_or_else(|| Error::not_found("account"))?;
            if let Some(first) = store::find_entry_by_request(conn, account_id, request_id.as_str()).await? {
                return replay(first, kind, &amount, &reference, refund_of);
            }
            if amount.currency.as_str() != account.currency {
                return Err(Error::failed_precondition(
                    "CURRENCY_MISMATCH",
                    format!(
                        "the account holds {}, not {}",
                        account.currency,
                        amount.currency.as_str()
                    ),
                ));
            }
            if let Some(debit_id) = refund_of {
                check_refund(conn, account_id, debit_id, amount.minor).await?;
            }
            let delta = kind.delta(amount.minor);
            let balance_after = account
                .balance_minor
                .checked_add(delta)
                .ok_or_else(|| Error::failed_precondition("BALANCE_OVERFLOW", "the balance would overflow"))?;
            if balance_after < 0 {
                return Err(Error::failed_precondition(
                    "INSUFFICIENT_FUNDS",
                    "the balance is lower than the amount to debit",
                ));
            }
            let entry = store::append_entry(
                conn,
                NewEntry {
                    id: Uuid::now_v7(),
                    account_id,
                    seq: account.ledger_seq + 1,
                    kind: kind.as_str(),
                    amount_minor: amount.minor,
                    delta_minor: delta,
                    currency: &account.currency,
                    balance_after_minor: balance_after,
                    request_id: request_id.as_str(),
                    reference: &reference,
                    reason: &reason,
                    refund_of,
                },
            )
            .await?;
            outbox::enqueue(
                conn,
                SOURCE,
                Payload::BalanceChanged(BalanceChanged {
                    account_id: account_id.to_string(),
                    transaction_id: entry.id.to_string(),
                    delta: Some(money(delta, &account.currency)),
                    balance: Some(money(balance_after, &account.currency)),
                }),
            )
            .await?;
            Ok(entry)
        })
        .await
    }
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
    let refunded = store::refund_amounts(conn, debit_id)
        .await?
        .into_iter()
        .try_fold(0i64, i64::checked_add)
        .ok_or_else(|| anyhow::anyhow!("the refunds of debit {debit_id} overflow"))?;
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
fn replay(
    first: EntryRow,
    kind: Kind,
    amount: &Amount,
    reference: &str,
    refund_of: Option<Uuid>,
) -> Result<EntryRow, Error> {
    let same = Kind::parse(&first.kind) == Some(kind)
        && first.amount_minor == amount.minor
        && first.currency == amount.currency.as_str()
        && first.reference == reference
        && first.refund_of == refund_of;
    if same {
        Ok(first)
    } else {
        Err(Error::already_exists(
            "REQUEST_ID_REUSED",
            "this request_id was used for a different movement; use a new one",
        ))
    }
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
