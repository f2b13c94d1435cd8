//! Paying from the buyer's Keel balance: accounts' Debit and Refund, called
//! with orders' own service token (scopes `accounts.debit`,
//! `accounts.refund`). Both are idempotent by `request_id`, so the saga's key
//! is the request id.

use keel::{
    accounts::v1::{
        DebitRequest, RefundRequest, VoidDebitRequest, VoidOutcome as PbVoidOutcome,
        accounts_service_client::AccountsServiceClient,
    },
    common::v1::Money,
};
use keel_platform::client::ServiceChannel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use super::{Charge, ChargeOutcome, Decline, PaymentProvider, Refund, RefundOutcome, VoidOutcome, refund_key};

/// The account-balance provider.
#[derive(Debug, Clone)]
pub struct AccountBalance {
    accounts: ServiceChannel,
}

impl AccountBalance {
    /// Charges through accounts over `accounts` (a channel that carries
    /// orders' service token).
    pub fn new(accounts: ServiceChannel) -> Self {
        Self { accounts }
    }

    fn client(&self) -> AccountsServiceClient<ServiceChannel> {
        AccountsServiceClient::new(self.accounts.clone())
    }
}

#[tonic::async_trait]
impl PaymentProvider for AccountBalance {
    async fn charge(&self, charge: &Charge) -> ChargeOutcome {
        let request = DebitRequest {
            account_id: charge.user_id.to_string(),
            amount: Some(Money {
                amount_minor: charge.amount_minor,
                currency_code: charge.currency.clone(),
            }),
            request_id: charge.key.clone(),
            reference: charge.order_id.to_string(),
            reason: "order".into(),
        };
        match self.client().debit(request).await {
            Ok(response) => match response.into_inner().transaction {
                Some(debit) => ChargeOutcome::Paid { reference: debit.id },
                None => ChargeOutcome::Uncertain("accounts answered Debit without its transaction".into()),
            },
            Err(status) => debit_refused(&status),
        }
    }

    /// Accounts' VoidDebit: refunds the key's debit if there was one
    /// (under the order's refund key), and otherwise closes the key so that a
    /// Debit still on its way is refused. Never debits.
    async fn void(&self, charge: &Charge) -> VoidOutcome {
        let request = VoidDebitRequest {
            account_id: charge.user_id.to_string(),
            request_id: charge.key.clone(),
            refund_request_id: refund_key(charge.order_id),
            reason: "order cancelled".into(),
        };
        match self.client().void_debit(request).await {
            Ok(response) => {
                let response = response.into_inner();
                match (
                    PbVoidOutcome::try_from(response.outcome),
                    response.debit,
                    response.refund,
                ) {
                    (Ok(PbVoidOutcome::NeverCharged), _, _) => VoidOutcome::NotCharged,
                    // No refund: it had been refunded in full by other means.
                    (Ok(PbVoidOutcome::Refunded), Some(debit), refund) => VoidOutcome::Refunded {
                        charge: debit.id,
                        refund: refund.map(|entry| entry.id),
                    },
                    (outcome, ..) => VoidOutcome::Uncertain(format!("accounts answered VoidDebit with {outcome:?}")),
                }
            }
            Err(status) => {
                if !transient(status.code()) {
                    tracing::error!(code = ?status.code(), reason = %reason(&status), message = status.message(), "accounts refused to void a debit");
                }
                VoidOutcome::Uncertain(format!("VoidDebit: {:?} {}", status.code(), status.message()))
            }
        }
    }

    async fn refund(&self, refund: &Refund) -> RefundOutcome {
        let request = RefundRequest {
            account_id: refund.user_id.to_string(),
            amount: Some(Money {
                amount_minor: refund.amount_minor,
                currency_code: refund.currency.clone(),
            }),
            request_id: refund.key.clone(),
            reference: refund.order_id.to_string(),
            reason: "order cancelled".into(),
            debit_transaction_id: refund.charge_reference.clone(),
        };
        match self.client().refund(request).await {
            Ok(response) => match response.into_inner().transaction {
                Some(entry) => RefundOutcome::Refunded { reference: entry.id },
                None => RefundOutcome::Uncertain("accounts answered Refund without its transaction".into()),
            },
            Err(status) => refund_refused(&status),
        }
    }
}

/// What a refused Debit means for the order.
fn debit_refused(status: &Status) -> ChargeOutcome {
    let why = reason(status);
    match (status.code(), why.as_str()) {
        (Code::FailedPrecondition, "INSUFFICIENT_FUNDS") => ChargeOutcome::Declined(Decline::InsufficientFunds),
        // No account means no balance: nobody can have paid into it.
        (Code::NotFound, _) => ChargeOutcome::Declined(Decline::InsufficientFunds),
        (Code::FailedPrecondition, "CURRENCY_MISMATCH") => {
            ChargeOutcome::Declined(Decline::Declined("the account holds another currency".into()))
        }
        // Accounts refused the request as it stands, before any lookup by
        // key: every retry of it would be refused the same way, and nothing
        // was taken.
        (Code::InvalidArgument, _) => {
            tracing::error!(reason = %why, message = status.message(), "accounts refused a debit as invalid");
            ChargeOutcome::Declined(Decline::Declined(format!(
                "accounts refused the debit: {}",
                status.message()
            )))
        }
        (code, _) => {
            if !transient(code) {
                tracing::error!(?code, reason = %why, message = status.message(), "accounts refused a debit");
            }
            ChargeOutcome::Uncertain(format!("Debit: {code:?} {}", status.message()))
        }
    }
}

/// What a refused Refund means: a request accounts judged and refused
/// (the debit is gone, or already refunded by other means) is refused for
/// good; anything else is retried with the same key.
fn refund_refused(status: &Status) -> RefundOutcome {
    let detail = format!("Refund: {:?} {} {}", status.code(), reason(status), status.message());
    match status.code() {
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument | Code::AlreadyExists => {
            RefundOutcome::Refused(detail)
        }
        code => {
            if !transient(code) {
                tracing::error!(?code, message = status.message(), "accounts refused a refund");
            }
            RefundOutcome::Uncertain(detail)
        }
    }
}

/// Codes that say "try again later" rather than "this call is wrong".
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// The `ErrorInfo.reason` of a refused call (empty without one).
fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    fn refused(code: Code, reason: &str) -> Status {
        Status::with_error_details(
            code,
            "refused",
            ErrorDetails::with_error_info(reason, "keel.dev", HashMap::<String, String>::new()),
        )
    }

    #[test]
    fn only_a_definite_refusal_is_a_decline() {
        assert_eq!(
            debit_refused(&refused(Code::FailedPrecondition, "INSUFFICIENT_FUNDS")),
            ChargeOutcome::Declined(Decline::InsufficientFunds)
        );
        assert_eq!(
            debit_refused(&refused(Code::NotFound, "NOT_FOUND")),
            ChargeOutcome::Declined(Decline::InsufficientFunds)
        );
        for (code, reason) in [
            (Code::FailedPrecondition, "CURRENCY_MISMATCH"),
            (Code::InvalidArgument, "INVALID_ARGUMENT"),
        ] {
            assert!(matches!(
                debit_refused(&refused(code, reason)),
                ChargeOutcome::Declined(Decline::Declined(_))
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(
                matches!(debit_refused(&Status::new(code, "x")), ChargeOutcome::Uncertain(_)),
                "{code:?} must be retried, not treated as a decline"
            );
        }
        // The same key with other parameters is a bug, not a decline.
        assert!(matches!(
            debit_refused(&refused(Code::AlreadyExists, "REQUEST_ID_REUSED")),
            ChargeOutcome::Uncertain(_)
        ));
    }

    #[test]
    fn keys_are_derived_from_the_order_and_the_step() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(super::super::charge_key(id), format!("order:{id}:charge"));
        assert_eq!(super::super::refund_key(id), format!("order:{id}:refund"));
        assert_ne!(super::super::charge_key(id), super::super::refund_key(id));
    }
}
