//! How an order's money moves: a [`PaymentProvider`] per payment method.
//!
//! The saga calls a provider outside any database transaction, with
//! idempotency keys derived from the order and the step
//! ([`charge_key`], [`refund_key`]), so a retry after a crash or a timeout
//! repeats the same operation instead of starting another. Every outcome a
//! provider can report is one of [`ChargeOutcome`]'s: money taken, definitely
//! not taken, not finished yet, or not known.
//!
//! A provider that keeps its own object for a charge (a card gateway's
//! PaymentIntent) creates it in [`PaymentProvider::prepare`], before any
//! money moves; the saga stores the reference it returns and hands it back to
//! every later call, which acts on that object only: a resumed saga never
//! creates a second one, and nothing but the stored one is ever confirmed.

pub mod balance;
pub mod card;
pub mod webhook;

use std::sync::Arc;

use keel_platform::Error;
use uuid::Uuid;

use crate::status::PaymentMethod;

pub use balance::AccountBalance;
pub use card::CardGateway;

/// The provider of each payment method.
#[derive(Debug, Clone)]
pub struct Providers {
    /// PAYMENT_METHOD_ACCOUNT_BALANCE.
    pub balance: Arc<dyn PaymentProvider>,
    /// PAYMENT_METHOD_EXTERNAL, when a card gateway is configured.
    pub external: Option<Arc<dyn PaymentProvider>>,
}

impl Providers {
    /// The provider of `method`, or FAILED_PRECONDITION when none is set up.
    pub fn get(&self, method: PaymentMethod) -> Result<&Arc<dyn PaymentProvider>, Error> {
        match method {
            PaymentMethod::AccountBalance => Ok(&self.balance),
            PaymentMethod::External => self.external.as_ref().ok_or_else(|| {
                Error::failed_precondition(
                    "PAYMENT_METHOD_UNAVAILABLE",
                    "no external payment gateway is configured; pay from the account balance",
                )
            }),
        }
    }
}

/// The idempotency key of an order's charge.
pub fn charge_key(order_id: Uuid) -> String {
    format!("order:{order_id}:charge")
}

/// The order whose charge `key` is ([`charge_key`]'s inverse).
pub fn order_of_charge_key(key: &str) -> Option<Uuid> {
    let id = key.strip_prefix("order:")?.strip_suffix(":charge")?;
    Uuid::parse_str(id).ok()
}

/// The idempotency key of an order's refund.
pub fn refund_key(order_id: Uuid) -> String {
    format!("order:{order_id}:refund")
}

/// A charge of an order's total to its buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The idempotency key ([`charge_key`]).
    pub key: String,
    /// The order paid for.
    pub order_id: Uuid,
    /// The buyer.
    pub user_id: Uuid,
    /// Minor units, > 0.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// The provider's reference from an earlier step (prepare, or a charge
    /// that was left pending), if any.
    pub reference: Option<String>,
    /// The buyer's payment method at the card gateway (`pm_...`), for
    /// external payments.
    pub payment_method_id: Option<String>,
}

/// A refund of a charge, in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The idempotency key ([`refund_key`]).
    pub key: String,
    /// The order refunded.
    pub order_id: Uuid,
    /// The buyer.
    pub user_id: Uuid,
    /// Minor units, > 0: the charge's amount.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// The provider's reference of the charge given back.
    pub charge_reference: String,
}

/// Why a charge was definitely refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decline {
    /// The balance is lower than the total.
    InsufficientFunds,
    /// The provider refused, for the given reason (e.g. `card_declined`).
    Declined(String),
}

impl Decline {
    /// The stable reason the order is cancelled with and the buyer sees.
    pub fn reason(&self) -> &'static str {
        match self {
            Decline::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Decline::Declined(_) => "PAYMENT_DECLINED",
        }
    }
}

/// How a charge ended, as far as the provider can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The money was taken; `reference` names the charge for a refund.
    Paid {
        /// The provider's id of the charge.
        reference: String,
    },
    /// Definitely not taken.
    Declined(Decline),
    /// Not finished (e.g. the buyer must authenticate): ask again later.
    Pending {
        /// The provider's id of the charge, to store for later calls.
        reference: Option<String>,
    },
    /// Unknown: the provider timed out, failed or could not be reached. The
    /// money may or may not have moved; retrying with the same key tells.
    Uncertain(String),
}

/// How preparing a charge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Ready to charge; the provider's record of it, to store first, if it
    /// keeps one.
    Ready(Option<String>),
    /// Refused before anything was created (e.g. a payment method the
    /// gateway rejects): nothing can be taken.
    Declined(Decline),
    /// Not known whether a record was created: try again later. A record made
    /// meanwhile is never confirmed, since only a stored one ever is.
    Uncertain(String),
}

/// How voiding a charge whose outcome was unknown ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoidOutcome {
    /// Nothing was taken, and now nothing can be.
    NotCharged,
    /// The money had been taken: the saga refunds it.
    Charged {
        /// The provider's id of the charge.
        reference: String,
    },
    /// The money had been taken and the provider gave it back as part of the
    /// void.
    Refunded {
        /// The provider's id of the charge.
        charge: String,
        /// The provider's id of the refund; none when it had been refunded in
        /// full by other means.
        refund: Option<String>,
    },
    /// Not known yet: ask again later.
    Uncertain(String),
}

/// Money a provider took, as it reports it (for reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The order it names (the card intent's `metadata[order_id]`, the
    /// debit's key), if it names one Keel can read.
    pub order_id: Option<Uuid>,
    /// The provider's id of the charge.
    pub reference: String,
    /// Minor units taken.
    pub amount_minor: i64,
    /// Minor units given back since.
    pub refunded_minor: i64,
}

impl Taken {
    /// What the provider still holds.
    pub fn held_minor(&self) -> i64 {
        self.amount_minor.saturating_sub(self.refunded_minor)
    }
}

/// How a refund ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Given back; `reference` names the refund.
    Refunded {
        /// The provider's id of the refund.
        reference: String,
    },
    /// Refused for good (retrying the same call cannot succeed): an operator
    /// must look.
    Refused(String),
    /// Unknown or failed for now; retrying with the same key is safe.
    Uncertain(String),
}

/// A way to take and give back money for an order. Implementations must be
/// idempotent by the keys they are given.
#[tonic::async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// Whether the provider keeps a record of each charge, made by
    /// [`PaymentProvider::prepare`] before any money moves.
    fn prepares(&self) -> bool {
        false
    }

    /// Creates the provider's record of the charge without moving money; the
    /// saga stores its reference before calling [`PaymentProvider::charge`].
    /// Providers with no such record answer `Ready(None)`.
    async fn prepare(&self, charge: &Charge) -> Prepared {
        let _ = charge;
        Prepared::Ready(None)
    }

    /// Takes the money (or, when the stored reference names a charge already
    /// confirmed, finds out how it ended). A provider that prepares acts only
    /// on `charge.reference`, never on a record of its own making.
    async fn charge(&self, charge: &Charge) -> ChargeOutcome;

    /// For an order cancelled while its charge's outcome was unknown: makes
    /// sure the charge can no longer complete (a card gateway cancels an
    /// unconfirmed or `requires_action` intent; accounts tombstones the key)
    /// and says how it ended.
    async fn void(&self, charge: &Charge) -> VoidOutcome;

    /// Gives back a charge in full.
    async fn refund(&self, refund: &Refund) -> RefundOutcome;

    /// Every charge the provider holds for Keel's orders, for
    /// reconciliation; `None` when this provider cannot list them (orders
    /// cannot read accounts' ledger: `keel admin reconcile-payments` does).
    async fn charges(&self) -> Result<Option<Vec<Taken>>, String> {
        Ok(None)
    }
}
