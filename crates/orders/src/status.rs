//! The order's life cycle as a plain enum. [`OrderStatus::apply`] is the one
//! place that says which moves exist; the store's conditional update
//! (`UPDATE ... WHERE status = <from>`) is the only code that writes a status,
//! and it asks `apply` first.
//!
//! The enums here are stored as Postgres enums; reading a value the code does
//! not know fails the query instead of guessing.

use diesel::{deserialize::FromSqlRow, expression::AsExpression};
use keel::orders::v1 as pb;

use crate::schema::sql_types;

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::OrderStatus)]
pub enum OrderStatus {
    /// Stock reserved; the payment has not completed.
    PendingPayment,
    /// Paid; waiting to be shipped.
    Paid,
    /// Handed to the carrier.
    Shipped,
    /// Received. Final.
    Delivered,
    /// Cancelled, stock released. Final.
    Cancelled,
}

/// What can happen to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The payment went through.
    Pay,
    /// It left the warehouse.
    Ship,
    /// The buyer received it.
    Deliver,
    /// The buyer, an admin, a failed payment or the payment deadline ended it.
    Cancel,
}

/// A transition the life cycle does not allow from the current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {from} cannot {transition:?}")]
pub struct Refused {
    /// The status it is in.
    pub from: OrderStatus,
    /// What was asked.
    pub transition: Transition,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::PendingPayment,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// The status after `transition`, or why it is not allowed.
    pub fn apply(self, transition: Transition) -> Result<OrderStatus, Refused> {
        use OrderStatus::*;
        use Transition::*;
        match (self, transition) {
            (PendingPayment, Pay) => Ok(Paid),
            (Paid, Ship) => Ok(Shipped),
            (Shipped, Deliver) => Ok(Delivered),
            (PendingPayment | Paid, Cancel) => Ok(Cancelled),
            (from, transition) => Err(Refused { from, transition }),
        }
    }

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the order still holds its units (every status but CANCELLED).
    pub fn holds_stock(self) -> bool {
        self != OrderStatus::Cancelled
    }

    /// The contract's name for it.
    pub fn to_pb(self) -> pb::OrderStatus {
        match self {
            OrderStatus::PendingPayment => pb::OrderStatus::PendingPayment,
            OrderStatus::Paid => pb::OrderStatus::Paid,
            OrderStatus::Shipped => pb::OrderStatus::Shipped,
            OrderStatus::Delivered => pb::OrderStatus::Delivered,
            OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        }
    }

    /// Reads the contract's value; None for UNSPECIFIED.
    pub fn from_pb(status: pb::OrderStatus) -> Option<Self> {
        match status {
            pb::OrderStatus::Unspecified => None,
            pb::OrderStatus::PendingPayment => Some(OrderStatus::PendingPayment),
            pb::OrderStatus::Paid => Some(OrderStatus::Paid),
            pb::OrderStatus::Shipped => Some(OrderStatus::Shipped),
            pb::OrderStatus::Delivered => Some(OrderStatus::Delivered),
            pb::OrderStatus::Cancelled => Some(OrderStatus::Cancelled),
        }
    }

    /// The name clients see in error metadata (`PAID`).
    pub fn name(self) -> &'static str {
        self.to_pb().as_str_name().trim_start_matches("ORDER_STATUS_")
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an order is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::PaymentMethod)]
pub enum PaymentMethod {
    /// From the buyer's Keel balance (accounts' Debit and Refund).
    AccountBalance,
    /// Through the external card gateway.
    External,
}

impl PaymentMethod {
    /// Every method.
    pub const ALL: [PaymentMethod; 2] = [PaymentMethod::AccountBalance, PaymentMethod::External];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::AccountBalance => "account_balance",
            PaymentMethod::External => "external",
        }
    }

    /// The contract's value.
    pub fn to_pb(self) -> pb::PaymentMethod {
        match self {
            PaymentMethod::AccountBalance => pb::PaymentMethod::AccountBalance,
            PaymentMethod::External => pb::PaymentMethod::External,
        }
    }

    /// Reads the contract's value; None for UNSPECIFIED.
    pub fn from_pb(method: pb::PaymentMethod) -> Option<Self> {
        match method {
            pb::PaymentMethod::Unspecified => None,
            pb::PaymentMethod::AccountBalance => Some(PaymentMethod::AccountBalance),
            pb::PaymentMethod::External => Some(PaymentMethod::External),
        }
    }
}

/// Where an order's charge is, apart from its status. Only moves forward
/// ([`PaymentState::MOVES`]): a late or stale answer never undoes a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::PaymentState)]
pub enum PaymentState {
    /// Nothing that could take money has been sent.
    Unpaid,
    /// A call that may take money is or was under way; its outcome is not
    /// known yet.
    Charging,
    /// Taken: `charge_reference` names the charge.
    Charged,
    /// Definitely not taken: the provider refused.
    Declined,
    /// Definitely not taken, and made sure it never can be.
    Voided,
}

impl PaymentState {
    /// Every state.
    pub const ALL: [PaymentState; 5] = [
        PaymentState::Unpaid,
        PaymentState::Charging,
        PaymentState::Charged,
        PaymentState::Declined,
        PaymentState::Voided,
    ];

    /// The moves allowed, as the database enforces them (the
    /// `order_state_moves` table). Charged, declined and voided are final.
    pub const MOVES: [(PaymentState, PaymentState); 6] = {
        use PaymentState::*;
        [
            (Unpaid, Charging),
            (Unpaid, Declined),
            (Unpaid, Voided),
            (Charging, Charged),
            (Charging, Declined),
            (Charging, Voided),
        ]
    };

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentState::Unpaid => "unpaid",
            PaymentState::Charging => "charging",
            PaymentState::Charged => "charged",
            PaymentState::Declined => "declined",
            PaymentState::Voided => "voided",
        }
    }

    /// Whether no money was, or ever will be, taken under the order's key.
    pub fn never_charged(self) -> bool {
        matches!(self, PaymentState::Declined | PaymentState::Voided)
    }
}

/// What a cancelled order still owes its buyer. Only moves forward
/// ([`RefundState::MOVES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::RefundState)]
pub enum RefundState {
    /// Nothing: it was never charged (or is not cancelled).
    NotNeeded,
    /// It was cancelled while a charge's outcome was unknown: find out, and
    /// refund if the charge went through.
    Unknown,
    /// It was charged: a refund of the total is owed.
    Due,
    /// The refund went through.
    Done,
    /// The provider refused the refund for good: an operator must look
    /// (`ListOrders` with `refund_state` FAILED lists them).
    Failed,
}

impl RefundState {
    /// Every state.
    pub const ALL: [RefundState; 5] = [
        RefundState::NotNeeded,
        RefundState::Unknown,
        RefundState::Due,
        RefundState::Done,
        RefundState::Failed,
    ];

    /// The moves allowed, as the database enforces them. Leaving NotNeeded
    /// happens only in the transaction that cancels the order.
    pub const MOVES: [(RefundState, RefundState); 8] = {
        use RefundState::*;
        [
            (NotNeeded, Unknown),
            (NotNeeded, Due),
            (Unknown, NotNeeded),
            (Unknown, Due),
            (Unknown, Done),
            (Due, Done),
            (Due, Failed),
            (Failed, Done),
        ]
    };

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundState::NotNeeded => "not_needed",
            RefundState::Unknown => "unknown",
            RefundState::Due => "due",
            RefundState::Done => "done",
            RefundState::Failed => "failed",
        }
    }

    /// The contract's value.
    pub fn to_pb(self) -> pb::RefundState {
        match self {
            RefundState::NotNeeded => pb::RefundState::NotNeeded,
            RefundState::Unknown => pb::RefundState::Unknown,
            RefundState::Due => pb::RefundState::Due,
            RefundState::Done => pb::RefundState::Done,
            RefundState::Failed => pb::RefundState::Failed,
        }
    }

    /// Reads the contract's value; None for UNSPECIFIED.
    pub fn from_pb(state: pb::RefundState) -> Option<Self> {
        match state {
            pb::RefundState::Unspecified => None,
            pb::RefundState::NotNeeded => Some(RefundState::NotNeeded),
            pb::RefundState::Unknown => Some(RefundState::Unknown),
            pb::RefundState::Due => Some(RefundState::Due),
            pb::RefundState::Done => Some(RefundState::Done),
            pb::RefundState::Failed => Some(RefundState::Failed),
        }
    }
}

keel_platform::pg_enum!(OrderStatus, sql_types::OrderStatus, "order status");
keel_platform::pg_enum!(PaymentMethod, sql_types::PaymentMethod, "payment method");
keel_platform::pg_enum!(RefundState, sql_types::RefundState, "refund state");
keel_platform::pg_enum!(PaymentState, sql_types::PaymentState, "payment state");

#[cfg(test)]
mod tests {
    use super::{OrderStatus::*, Transition::*, *};

    const TRANSITIONS: [Transition; 4] = [Pay, Ship, Deliver, Cancel];

    #[test]
    fn only_the_contracts_transitions_are_allowed() {
        let allowed = [
            (PendingPayment, Pay, Paid),
            (PendingPayment, Cancel, Cancelled),
            (Paid, Ship, Shipped),
            (Paid, Cancel, Cancelled),
            (Shipped, Deliver, Delivered),
        ];
        for from in OrderStatus::ALL {
            for transition in TRANSITIONS {
                let expected = allowed
                    .iter()
                    .find(|(f, t, _)| *f == from && *t == transition)
                    .map(|(_, _, to)| *to);
                match expected {
                    Some(to) => assert_eq!(from.apply(transition), Ok(to), "{from} {transition:?}"),
                    None => assert_eq!(
                        from.apply(transition),
                        Err(Refused { from, transition }),
                        "{from} {transition:?} must be refused"
                    ),
                }
            }
        }
    }

    #[test]
    fn final_statuses_go_nowhere() {
        for from in [Delivered, Cancelled] {
            for transition in TRANSITIONS {
                assert!(from.apply(transition).is_err(), "{from} {transition:?}");
            }
        }
    }

    #[test]
    fn cancelling_twice_or_paying_after_cancel_is_refused() {
        assert!(Cancelled.apply(Cancel).is_err());
        assert!(Cancelled.apply(Pay).is_err());
        assert!(Paid.apply(Pay).is_err());
        assert!(Shipped.apply(Cancel).is_err());
        assert!(PendingPayment.apply(Ship).is_err());
        assert!(Paid.apply(Deliver).is_err());
    }

    #[test]
    fn names_round_trip_and_are_the_contracts() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::from_pb(status.to_pb()), Some(status));
        }
        assert_eq!(Paid.name(), "PAID");
        assert_eq!(PendingPayment.name(), "PENDING_PAYMENT");
        for method in PaymentMethod::ALL {
            assert_eq!(PaymentMethod::from_pb(method.to_pb()), Some(method));
        }
        assert_eq!(OrderStatus::from_pb(pb::OrderStatus::Unspecified), None);
    }
}
