//! `keel.accounts.v1.AccountsService` and the accounts EventSink.
//!
//! The trait impls below only adapt gRPC to the application: each reads the
//! caller from the request and hands the message to a function of the
//! resource's module (profiles, ledger, event_sink), which reads it, calls
//! one operation of [`crate::app`] and shapes its answer.

mod event_sink;
mod ledger;
mod profiles;

use keel::{
    accounts::v1::{self as pb, accounts_service_server::AccountsService},
    events::v1::{DeliverRequest, DeliverResponse, event_sink_server::EventSink},
};
use keel_platform::{auth::principal::principal, auth::scopes, events, serve::rpc::Reply};
use tonic::{Request, Response};

use crate::{app::Accounts, domain};

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
        let span = delivery.consume_span(domain::NAME);
        Ok(Response::new(
            tracing::Instrument::instrument(event_sink::deliver(self, delivery), span).await?,
        ))
    }
}
