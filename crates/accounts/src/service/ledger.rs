//! Deposit, Debit, Refund, VoidDebit, GetBalance and ListTransactions: the
//! balance and the ledger of movements behind it.

use keel::{accounts::v1 as pb, common::v1::Money};
use keel_platform::{
    Error, Principal,
    auth::scopes,
    db::paging,
    error::FieldViolation,
    proto::{money, timestamp},
    serve::rpc::{Violations, uuid_field},
};

use crate::{
    app::{Accounts, Movement, Target, Void, Voided},
    domain::{self, Amount, Kind, RequestId},
    store::ledger::EntryRow,
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
    let movement = MovementFields::from(&request).check()?;
    let entry = accounts.deposit(&movement).await?;
    Ok(pb::DepositResponse {
        transaction: Some(entry_pb(&entry)),
    })
}

pub(super) async fn debit(accounts: &Accounts, request: pb::DebitRequest) -> Result<pb::DebitResponse, Error> {
    let movement = MovementFields::from(&request).check()?;
    let entry = accounts.debit(&movement).await?;
    Ok(pb::DebitResponse {
        transaction: Some(entry_pb(&entry)),
    })
}

pub(super) async fn refund(accounts: &Accounts, request: pb::RefundRequest) -> Result<pb::RefundResponse, Error> {
    let movement = MovementFields::from(&request).check()?;
    let entry = accounts.refund(&movement).await?;
    Ok(pb::RefundResponse {
        transaction: Some(entry_pb(&entry)),
    })
}

pub(super) async fn void_debit(
    accounts: &Accounts,
    request: pb::VoidDebitRequest,
) -> Result<pb::VoidDebitResponse, Error> {
    let void = read_void(&request)?;
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
    let target = Target::resolve(caller, &request.account_id)?;
    let balance = accounts.balance(target).await?;
    let account = &balance.account;
    Ok(pb::GetBalanceResponse {
        balance: Some(pb::Balance {
            account_id: account.id.to_string(),
            balance: Some(money(account.balance_minor, &account.currency)),
            update_time: balance.update_time.map(timestamp),
        }),
    })
}

pub(super) async fn list_transactions(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::ListTransactionsRequest,
) -> Result<pb::ListTransactionsResponse, Error> {
    let target = Target::resolve(caller, &request.account_id)?;
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_position(&request.page_token)?;
    let page = accounts.transactions(target, before, limit).await?;
    Ok(pb::ListTransactionsResponse {
        transactions: page.items.iter().map(entry_pb).collect(),
        next_page_token: page.next_page_token,
    })
}

/// The fields every movement request (Deposit, Debit, Refund) carries, and
/// for a refund the debit it gives back.
struct MovementFields<'a> {
    account_id: &'a str,
    amount: Option<&'a Money>,
    request_id: &'a str,
    reference: &'a str,
    reason: &'a str,
    debit_transaction_id: Option<&'a str>,
}

impl MovementFields<'_> {
    /// The movement, or INVALID_ARGUMENT naming every bad field.
    fn check(self) -> Result<Movement, Error> {
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
        Ok(Movement {
            account_id,
            amount,
            request_id,
            reference,
            reason,
            refund_of,
        })
    }
}

macro_rules! movement_from {
    ($($request:ty),*) => {$(
        impl<'a> From<&'a $request> for MovementFields<'a> {
            fn from(request: &'a $request) -> Self {
                MovementFields {
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

impl<'a> From<&'a pb::RefundRequest> for MovementFields<'a> {
    fn from(request: &'a pb::RefundRequest) -> Self {
        MovementFields {
            account_id: &request.account_id,
            amount: request.amount.as_ref(),
            request_id: &request.request_id,
            reference: &request.reference,
            reason: &request.reason,
            debit_transaction_id: Some(&request.debit_transaction_id),
        }
    }
}

/// The VoidDebit request, or INVALID_ARGUMENT naming every bad field.
fn read_void(request: &pb::VoidDebitRequest) -> Result<Void, Error> {
    let mut violations = Violations::new();
    let account_id = violations.check(uuid_field("account_id", &request.account_id));
    let request_id = violations.check(RequestId::parse("request_id", &request.request_id));
    let refund_request_id = violations.check(
        RequestId::parse("refund_request_id", &request.refund_request_id).and_then(|refund_key| {
            if Some(refund_key.as_str()) == request_id.as_ref().map(RequestId::as_str) {
                Err(FieldViolation::new(
                    "refund_request_id",
                    "REFUND_REQUEST_ID_REUSED",
                    "must differ from request_id: it is the refund's own key",
                ))
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
