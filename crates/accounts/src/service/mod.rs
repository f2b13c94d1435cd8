//! `keel.accounts.v1.AccountsService` and the accounts EventSink.
//!
//! The trait impls below only adapt gRPC to the handlers: each reads the
//! caller from the request and hands the message to a function of the
//! resource's module (profiles, ledger, event_sink), which returns
//! `Result<_, Error>`.

mod event_sink;
mod ledger;
mod profiles;

use keel::{
    accounts::v1::{self as pb, accounts_service_server::AccountsService},
    events::v1::{DeliverRequest, DeliverResponse, event_sink_server::EventSink},
};
use keel_platform::{
    Error, Principal,
    auth::principal::{UserPrincipal, principal},
    auth::scopes,
    db::Pool,
    events,
    proto::timestamp,
    serve::rpc::Reply,
};
use tonic::{Request, Response};
use uuid::Uuid;

use crate::{
    domain::Currency,
    store::{self, AccountRow},
};

/// The event source name of accounts: its service name, which is also the
/// client id its relay's tokens carry (consumers check that they match).
pub const SOURCE: &str = crate::SERVICE.name;

/// The accounts service.
#[derive(Clone)]
pub struct Accounts {
    pub(crate) pool: Pool,
    pub(crate) currency: Currency,
    /// Who may be the source of each event type the sink is handed.
    pub(crate) event_producers: events::EventProducers,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("currency", &self.currency)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl AccountsService for Accounts {
    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Reply<pb::GetAccountResponse> {
        let caller = principal(&request)?.clone();
        Ok(Response::new(
            profiles::get_account(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn update_profile(&self, request: Request<pb::UpdateProfileRequest>) -> Reply<pb::UpdateProfileResponse> {
        let caller = principal(&request)?.clone();
        Ok(Response::new(
            profiles::update_profile(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_accounts(&self, request: Request<pb::ListAccountsRequest>) -> Reply<pb::ListAccountsResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(
            profiles::list_accounts(self, request.into_inner()).await?,
        ))
    }

    async fn deposit(&self, request: Request<pb::DepositRequest>) -> Reply<pb::DepositResponse> {
        let caller = principal(&request)?.clone();
        Ok(Response::new(
            ledger::deposit(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn debit(&self, request: Request<pb::DebitRequest>) -> Reply<pb::DebitResponse> {
        principal(&request)?.service_with_scope(scopes::ACCOUNTS_DEBIT)?;
        Ok(Response::new(ledger::debit(self, request.into_inner()).await?))
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Reply<pb::RefundResponse> {
        principal(&request)?.service_with_scope(scopes::ACCOUNTS_REFUND)?;
        Ok(Response::new(ledger::refund(self, request.into_inner()).await?))
    }

    async fn void_debit(&self, request: Request<pb::VoidDebitRequest>) -> Reply<pb::VoidDebitResponse> {
        // Voiding gives back at most what was debited, as Refund does.
        principal(&request)?.service_with_scope(scopes::ACCOUNTS_REFUND)?;
        Ok(Response::new(ledger::void_debit(self, request.into_inner()).await?))
    }

    async fn get_balance(&self, request: Request<pb::GetBalanceRequest>) -> Reply<pb::GetBalanceResponse> {
        let caller = principal(&request)?.clone();
        Ok(Response::new(
            ledger::get_balance(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Reply<pb::ListTransactionsResponse> {
        let caller = principal(&request)?.clone();
        Ok(Response::new(
            ledger::list_transactions(self, &caller, request.into_inner()).await?,
        ))
    }
}

#[tonic::async_trait]
impl EventSink for Accounts {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Reply<DeliverResponse> {
        let delivery = events::delivery(request, &self.event_producers)?;
        let span = delivery.consume_span(crate::SERVICE.name);
        Ok(Response::new(
            tracing::Instrument::instrument(event_sink::deliver(self, delivery), span).await?,
        ))
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
