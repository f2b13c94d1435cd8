//! `keel.accounts.v1.AccountsService` and the accounts EventSink.

use diesel_async::AsyncConnection as _;
use keel::{
    accounts::v1::{self as pb, accounts_service_server::AccountsService},
    common::v1::Money,
    events::v1::{BalanceChanged, DeliverRequest, DeliverResponse, event::Payload, event_sink_server::EventSink},
};
use keel_platform::{
    Error, Principal,
    db::Pool,
    events, outbox, paging,
    principal::{UserPrincipal, principal},
    proto::timestamp,
    rpc::{Reply, Violations, invalid, parse_id, uuid_field},
};
use tonic::{Request, Response};
use uuid::Uuid;

use crate::{
    domain::{self, Amount, Currency, Kind, RequestId},
    store::{self, AccountRow, EntryRow, NewEntry},
};

/// The event source name of accounts.
pub const SOURCE: &str = "accounts";
/// The scope a service needs to deposit.
pub const DEPOSIT_SCOPE: &str = "accounts.deposit";
/// The scope a service needs to debit.
pub const DEBIT_SCOPE: &str = "accounts.debit";
/// The scope a service needs to refund.
pub const REFUND_SCOPE: &str = "accounts.refund";

/// The accounts service.
#[derive(Clone)]
pub struct Accounts {
    pub(crate) pool: Pool,
    pub(crate) currency: Currency,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

/// Whose account a call may touch.
enum Target {
    /// The caller's own account (created on first access).
    Own(Uuid),
    /// Any account, for an administrator.
    Any(Uuid),
}

/// Resolves `account_id` ("me" or an id) for the caller. A user may name only
/// their own account: another id is PERMISSION_DENIED whether or not it
/// exists (the id alone decides, so nothing is revealed).
fn target(principal: &Principal, account_id: &str) -> Result<Target, Error> {
    let user: &UserPrincipal = principal.user()?;
    let id = if account_id == "me" {
        user.user_id
    } else {
        Uuid::parse_str(account_id).map_err(|_| Error::invalid_field("account_id", "must be a UUID or \"me\""))?
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

#[tonic::async_trait]
impl AccountsService for Accounts {
    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Reply<pb::GetAccountResponse> {
        let target = target(principal(&request)?, &request.get_ref().account_id)?;
        let account = self.account(target).await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account_pb(&account)),
        }))
    }

    async fn update_profile(&self, request: Request<pb::UpdateProfileRequest>) -> Reply<pb::UpdateProfileResponse> {
        let caller = principal(&request)?.clone();
        let request = request.into_inner();
        let account = request
            .account
            .ok_or_else(|| Error::invalid_field("account", "is required"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if let Some(path) = paths.iter().find(|p| p.as_str() != "display_name") {
            return Err(Error::invalid_field("update_mask", format!("{path} cannot be updated")).into());
        }
        let display_name = domain::display_name(&account.display_name).map_err(invalid)?;
        let expected = match account.etag.as_str() {
            "" => None,
            etag => Some(parse_etag(etag)?),
        };
        let target = target(&caller, &account.id)?;
        let current = self.account(target).await?;
        // Without a mask only the fields set in `account` change (AIP-134), and
        // an empty string is proto3's "unset": then there is nothing to change.
        if paths.is_empty() && display_name.is_empty() {
            if expected.is_some_and(|version| version != current.version) {
                return Err(etag_mismatch().into());
            }
            return Ok(Response::new(pb::UpdateProfileResponse {
                account: Some(account_pb(&current)),
            }));
        }
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let updated = store::update_display_name(&mut conn, current.id, &display_name, expected)
            .await
            .map_err(Error::from)?
            .ok_or_else(etag_mismatch)?;
        Ok(Response::new(pb::UpdateProfileResponse {
            account: Some(account_pb(&updated)),
        }))
    }

    async fn list_accounts(&self, request: Request<pb::ListAccountsRequest>) -> Reply<pb::ListAccountsResponse> {
        principal(&request)?.admin()?;
        let request = request.into_inner();
        let limit = paging::page_size(request.page_size)?;
        let after = paging::decode_token(&request.page_token)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let rows = store::list_accounts(&mut conn, after, limit + 1)
            .await
            .map_err(Error::from)?;
        let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: page.iter().map(account_pb).collect(),
            next_page_token,
        }))
    }

    async fn deposit(&self, request: Request<pb::DepositRequest>) -> Reply<pb::DepositResponse> {
        let caller = principal(&request)?;
        if caller.admin().is_err() && caller.service_with_scope(DEPOSIT_SCOPE).is_err() {
            return Err(Error::permission_denied(
                "DEPOSIT_NOT_ALLOWED",
                format!("deposits need the admin role or a service token with scope {DEPOSIT_SCOPE}"),
            )
            .into());
        }
        let request = request.into_inner();
        let entry = self.move_money(Kind::Deposit, Movement::from(&request)).await?;
        Ok(Response::new(pb::DepositResponse {
            transaction: Some(entry_pb(&entry)),
        }))
    }

    async fn debit(&self, request: Request<pb::DebitRequest>) -> Reply<pb::DebitResponse> {
        principal(&request)?.service_with_scope(DEBIT_SCOPE)?;
        let request = request.into_inner();
        let entry = self.move_money(Kind::Debit, Movement::from(&request)).await?;
        Ok(Response::new(pb::DebitResponse {
            transaction: Some(entry_pb(&entry)),
        }))
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Reply<pb::RefundResponse> {
        principal(&request)?.service_with_scope(REFUND_SCOPE)?;
        let request = request.into_inner();
        let entry = self.move_money(Kind::Refund, Movement::from(&request)).await?;
        Ok(Response::new(pb::RefundResponse {
            transaction: Some(entry_pb(&entry)),
        }))
    }

    async fn get_balance(&self, request: Request<pb::GetBalanceRequest>) -> Reply<pb::GetBalanceResponse> {
        let target = target(principal(&request)?, &request.get_ref().account_id)?;
        let account = self.account(target).await?;
        // The balance last changed with the ledger entry it was read at (the
        // account's updated_at also moves with profile changes); never, without one.
        let newest = match account.ledger_seq {
            0 => None,
            seq => {
                let mut conn = self.pool.get().await.map_err(Error::from)?;
                store::entries(&mut conn, account.id, Some(seq + 1), 1)
                    .await
                    .map_err(Error::from)?
                    .into_iter()
                    .next()
            }
        };
        Ok(Response::new(pb::GetBalanceResponse {
            balance: Some(pb::Balance {
                account_id: account.id.to_string(),
                balance: Some(money(account.balance_minor, &account.currency)),
                update_time: newest.map(|entry| timestamp(entry.created_at)),
            }),
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Reply<pb::ListTransactionsResponse> {
        let target = target(principal(&request)?, &request.get_ref().account_id)?;
        let request = request.into_inner();
        let limit = paging::page_size(request.page_size)?;
        let before = paging::decode_position(&request.page_token)?;
        let account = self.account(target).await?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let rows = store::entries(&mut conn, account.id, before, limit + 1)
            .await
            .map_err(Error::from)?;
        let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_position(row.seq));
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: page.iter().map(entry_pb).collect(),
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl EventSink for Accounts {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Reply<DeliverResponse> {
        let delivery = events::delivery(request)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let currency = self.currency.as_str();
        let first = conn
            .transaction::<_, Error, _>(async |conn| {
                if !events::first_delivery(conn, delivery.event_id).await? {
                    return Ok(false);
                }
                if let Payload::UserRegistered(registered) = &delivery.payload {
                    let user_id = parse_id("event.user_registered.user_id", &registered.user_id)?;
                    store::ensure_account(conn, user_id, &registered.email, currency).await?;
                }
                Ok(true)
            })
            .await?;
        Ok(Response::new(DeliverResponse { duplicate: !first }))
    }
}

impl Accounts {
    /// The target account; the caller's own is created on first access, so a
    /// user who has just registered never gets NOT_FOUND for it.
    async fn account(&self, target: Target) -> Result<AccountRow, Error> {
        let mut conn = self.pool.get().await?;
        match target {
            Target::Own(id) => match store::find_account(&mut conn, id).await? {
                Some(account) => Ok(account),
                None => Ok(store::ensure_account(&mut conn, id, "", self.currency.as_str()).await?),
            },
            Target::Any(id) => store::find_account(&mut conn, id)
                .await?
                .ok_or_else(|| Error::not_found("account")),
        }
    }

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
        } = movement;
        let mut violations = Violations::new();
        let account_id = violations.check(uuid_field("account_id", account_id));
        let amount = violations.check(Amount::parse("amount", amount));
        let request_id = violations.check(RequestId::parse(request_id));
        let reference = violations.check(domain::note("reference", reference));
        let reason = violations.check(domain::note("reason", reason));
        // Each missing value noted its violation.
        let (Some(account_id), Some(amount), Some(request_id), Some(reference), Some(reason)) =
            (account_id, amount, request_id, reference, reason)
        else {
            return Err(violations.into_error());
        };

        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let account = store::lock_account(conn, account_id)
                .await?
                .ok_or_else(|| Error::not_found("account"))?;
            if let Some(first) = store::find_entry_by_request(conn, account_id, request_id.as_str()).await? {
                return replay(first, kind, &amount, &reference);
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

/// The fields every movement request (Deposit, Debit, Refund) carries.
struct Movement<'a> {
    account_id: &'a str,
    amount: Option<&'a Money>,
    request_id: &'a str,
    reference: &'a str,
    reason: &'a str,
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
                }
            }
        }
    )*};
}

movement_from!(pb::DepositRequest, pb::DebitRequest, pb::RefundRequest);

/// The first result of a request id, if the retry asks for the same thing
/// (kind, amount and reference).
fn replay(first: EntryRow, kind: Kind, amount: &Amount, reference: &str) -> Result<EntryRow, Error> {
    let same = Kind::parse(&first.kind) == Some(kind)
        && first.amount_minor == amount.minor
        && first.currency == amount.currency.as_str()
        && first.reference == reference;
    if same {
        Ok(first)
    } else {
        Err(Error::failed_precondition(
            "REQUEST_ID_REUSED",
            "this request_id was used for a different movement; use a new one",
        ))
    }
}

fn etag_mismatch() -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        "the account changed since it was read; read it again and retry",
    )
}

fn parse_etag(etag: &str) -> Result<i64, Error> {
    etag.trim_matches('"')
        .parse()
        .map_err(|_| Error::invalid_field("account.etag", "is not an etag from this service"))
}

fn money(amount_minor: i64, currency: &str) -> Money {
    Money {
        amount_minor,
        currency_code: currency.to_owned(),
    }
}

fn account_pb(account: &AccountRow) -> pb::Account {
    pb::Account {
        id: account.id.to_string(),
        email: account.email.clone(),
        display_name: account.display_name.clone(),
        etag: format!("\"{}\"", account.version),
        create_time: Some(timestamp(account.created_at)),
        update_time: Some(timestamp(account.updated_at)),
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
    }
}
