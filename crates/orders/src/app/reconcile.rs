//! Reconciliation: orders compared with the money the providers hold for
//! them (accounts' ledger, the card gateway's intents and refunds).
//!
//! [`compare`] lists every difference; `keel admin reconcile-payments` prints
//! them, and orders runs [`Orders::reconcile_cards`] periodically, refunding
//! what it safely can: a charge that no order of Keel's may keep (an orphan
//! of an order cancelled as never charged, or a second charge of one order),
//! with the order's refund key.

use std::collections::{BTreeMap, BTreeSet};

use keel_platform::Error;
use uuid::Uuid;

pub use crate::payment::Taken;

use super::Orders;
use crate::{
    payment::{Refund, RefundOutcome, refund_key},
    status::{OrderStatus, PaymentMethod, RefundState},
    store::{self, orders::OrderRow},
};

/// One difference between orders and the money held for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Money held for an order Keel does not have (`order_id`: the one it
    /// names, if any).
    ChargeWithoutOrder {
        order_id: Option<Uuid>,
        reference: String,
        held_minor: i64,
    },
    /// Money held for an order cancelled as never charged. Repairable: refund
    /// it with the order's refund key.
    OrphanCharge {
        order_id: Uuid,
        reference: String,
        held_minor: i64,
    },
    /// More than one charge holds money for one order; `extra` are the ones
    /// that are not the order's stored charge. Repairable once the order is
    /// settled: refund the extra ones.
    SeveralCharges { order_id: Uuid, extra: Vec<(String, i64)> },
    /// A cancelled order whose refund is done, but whose charge still holds
    /// money.
    UnrefundedCharge {
        order_id: Uuid,
        reference: String,
        held_minor: i64,
    },
    /// A paid order whose stored charge the provider does not hold in full.
    PaidWithoutCharge { order_id: Uuid, reference: Option<String> },
    /// A refund refused for good, waiting for an operator.
    RefundFailed { order_id: Uuid },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::ChargeWithoutOrder {
                order_id,
                reference,
                held_minor,
            } => match order_id {
                Some(id) => write!(
                    f,
                    "charge {reference} holds {held_minor} for order {id}, which Keel does not have"
                ),
                None => write!(f, "charge {reference} holds {held_minor} and names no order"),
            },
            Difference::OrphanCharge {
                order_id,
                reference,
                held_minor,
            } => write!(
                f,
                "order {order_id} was cancelled as never charged, but charge {reference} holds {held_minor}"
            ),
            Difference::SeveralCharges { order_id, extra } => {
                write!(f, "order {order_id} has charges beside its own:")?;
                for (reference, held) in extra {
                    write!(f, " {reference} holds {held};")?;
                }
                Ok(())
            }
            Difference::UnrefundedCharge {
                order_id,
                reference,
                held_minor,
            } => write!(
                f,
                "order {order_id} is cancelled and refunded, but charge {reference} still holds {held_minor}"
            ),
            Difference::PaidWithoutCharge { order_id, reference } => write!(
                f,
                "order {order_id} is paid, but its charge {} is not held in full",
                reference.as_deref().unwrap_or("(none)")
            ),
            Difference::RefundFailed { order_id } => {
                write!(
                    f,
                    "order {order_id}: its refund was refused for good; an operator must act"
                )
            }
        }
    }
}

/// Every difference between `orders` and `taken` (the charges of the same
/// payment method). Orders still on their way (unpaid, or cancelled with a
/// refund unknown or due) are the resumer's, and only checked for several
/// charges. Read `orders` before `taken`: an order settled then has its
/// money where it belongs by the time the provider is asked. An order
/// placed in between shows as a charge without an order; [`placed_since`]
/// drops those.
pub fn compare(orders: &[OrderRow], taken: &[Taken]) -> Vec<Difference> {
    let by_id: BTreeMap<Uuid, &OrderRow> = orders.iter().map(|order| (order.id, order)).collect();
    let mut held: BTreeMap<Uuid, Vec<&Taken>> = BTreeMap::new();
    let mut differences = Vec::new();
    for charge in taken {
        match charge.order_id.filter(|id| by_id.contains_key(id)) {
            Some(id) => held.entry(id).or_default().push(charge),
            None if charge.held_minor() > 0 => differences.push(Difference::ChargeWithoutOrder {
                order_id: charge.order_id,
                reference: charge.reference.clone(),
                held_minor: charge.held_minor(),
            }),
            None => {}
        }
    }
    for order in orders {
        let charges = held.get(&order.id).map(Vec::as_slice).unwrap_or_default();
        let holding: Vec<&Taken> = charges.iter().copied().filter(|c| c.held_minor() > 0).collect();
        let own = |c: &&Taken| order.charge_reference.as_deref() == Some(c.reference.as_str());
        let extra: Vec<(String, i64)> = holding
            .iter()
            .filter(|c| !own(c))
            .map(|c| (c.reference.clone(), c.held_minor()))
            .collect();
        if holding.len() > 1 && !extra.is_empty() {
            differences.push(Difference::SeveralCharges {
                order_id: order.id,
                extra,
            });
            continue;
        }
        if !settled(order) {
            continue;
        }
        match (order.status, order.refund_state) {
            (OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered, _) => {
                let whole = charges.iter().any(|c| own(c) && c.held_minor() == order.total_minor);
                if !whole {
                    differences.push(Difference::PaidWithoutCharge {
                        order_id: order.id,
                        reference: order.charge_reference.clone(),
                    });
                }
            }
            (OrderStatus::Cancelled, RefundState::NotNeeded) => {
                differences.extend(holding.iter().map(|c| Difference::OrphanCharge {
                    order_id: order.id,
                    reference: c.reference.clone(),
                    held_minor: c.held_minor(),
                }));
            }
            (OrderStatus::Cancelled, RefundState::Done) => {
                differences.extend(holding.iter().map(|c| Difference::UnrefundedCharge {
                    order_id: order.id,
                    reference: c.reference.clone(),
                    held_minor: c.held_minor(),
                }));
            }
            (OrderStatus::Cancelled, RefundState::Failed) => {
                differences.push(Difference::RefundFailed { order_id: order.id });
            }
            _ => {}
        }
    }
    differences
}

/// `differences` without the charges of orders that exist after all (placed
/// after the orders were read): `existing` are those of the named orders
/// that exist now.
pub fn placed_since(differences: Vec<Difference>, existing: &BTreeSet<Uuid>) -> Vec<Difference> {
    differences
        .into_iter()
        .filter(|difference| {
            !matches!(difference, Difference::ChargeWithoutOrder { order_id: Some(id), .. } if existing.contains(id))
        })
        .collect()
}

/// The orders that charges without an order name: look them up again
/// after reading the provider.
pub fn named_orders(differences: &[Difference]) -> Vec<Uuid> {
    differences
        .iter()
        .filter_map(|difference| match difference {
            Difference::ChargeWithoutOrder { order_id, .. } => *order_id,
            _ => None,
        })
        .collect()
}

/// Whether the order's payment has reached a definite end: not unpaid, and
/// nothing left to learn or refund. Others are the resumer's to finish.
fn settled(order: &OrderRow) -> bool {
    !matches!(
        (order.status, order.refund_state),
        (OrderStatus::PendingPayment, _) | (_, RefundState::Unknown | RefundState::Due)
    )
}

/// Reconciles card orders every `reconcile_interval_secs` until
/// `shutdown` (the first pass one interval after start).
pub async fn run(orders: Orders, shutdown: tokio_util::sync::CancellationToken) {
    let Some(every) = orders.saga.reconcile_interval() else {
        return;
    };
    if orders.payments.external.is_none() {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        match orders.reconcile_cards().await {
            Ok(report) if report.differences.is_empty() => {
                tracing::debug!(
                    orders = report.orders,
                    charges = report.charges,
                    "card payments reconciled: no difference"
                );
            }
            Ok(report) => tracing::warn!(
                orders = report.orders,
                charges = report.charges,
                differences = report.differences.len(),
                repaired = report.repaired.len(),
                "card payments reconciled"
            ),
            Err(err) => tracing::warn!(error = %err, "reconciling card payments failed"),
        }
    }
}

/// What one reconciliation found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// Orders compared.
    pub orders: usize,
    /// Charges the provider reported.
    pub charges: usize,
    /// Every difference found.
    pub differences: Vec<Difference>,
    /// The refunds made to repair them (order, charge).
    pub repaired: Vec<(Uuid, String)>,
}

impl Orders {
    /// Compares card orders with the card gateway's charges and refunds
    /// what no order may keep. Nothing to do without a card gateway.
    pub async fn reconcile_cards(&self) -> Result<Report, Error> {
        let Some(provider) = self.payments.external.clone() else {
            return Ok(Report::default());
        };
        // Orders first (see `compare`).
        let orders = {
            let mut conn = self.pool.get().await?;
            store::orders::all_of(&mut conn, PaymentMethod::External).await?
        };
        let Some(taken) = provider.charges().await.map_err(|why| anyhow::anyhow!("{why}"))? else {
            return Ok(Report::default());
        };
        let differences = compare(&orders, &taken);
        let existing = {
            let mut conn = self.pool.get().await?;
            store::orders::existing(&mut conn, &named_orders(&differences)).await?
        };
        let differences = placed_since(differences, &existing);
        let by_id: BTreeMap<Uuid, &OrderRow> = orders.iter().map(|order| (order.id, order)).collect();
        let mut repaired = Vec::new();
        for difference in &differences {
            let (order_id, charges, kind) = match difference {
                Difference::OrphanCharge {
                    order_id,
                    reference,
                    held_minor,
                } => (*order_id, vec![(reference.clone(), *held_minor)], "orphan_charge"),
                // Only once the order is settled: until then its own charge
                // may still be the one found.
                Difference::SeveralCharges { order_id, extra }
                    if by_id.get(order_id).is_some_and(|order| settled(order)) =>
                {
                    (*order_id, extra.clone(), "several_charges")
                }
                other => {
                    tracing::error!(difference = %other, "a payment differs from its order; an operator must look");
                    continue;
                }
            };
            let Some(order) = by_id.get(&order_id) else { continue };
            for (reference, held_minor) in charges {
                let refund = Refund {
                    key: refund_key(order_id),
                    order_id,
                    user_id: order.user_id,
                    amount_minor: held_minor,
                    currency: order.currency.clone(),
                    charge_reference: reference.clone(),
                };
                match provider.refund(&refund).await {
                    RefundOutcome::Refunded { reference: refund } => {
                        tracing::warn!(%order_id, charge = reference, refund, kind, "reconciliation refunded a charge no order may keep");
                        self.metrics.repaired(kind);
                        repaired.push((order_id, reference));
                    }
                    RefundOutcome::Refused(detail) | RefundOutcome::Uncertain(detail) => {
                        tracing::error!(%order_id, charge = reference, detail, "reconciliation could not refund a charge no order may keep");
                    }
                }
            }
        }
        Ok(Report {
            orders: orders.len(),
            charges: taken.len(),
            differences,
            repaired,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::status::PaymentState;

    fn order(status: OrderStatus, refund: RefundState, reference: Option<&str>) -> OrderRow {
        OrderRow {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            request_id: "r".into(),
            status,
            payment_method: PaymentMethod::External,
            total_minor: 100,
            currency: "USD".into(),
            charge_reference: reference.map(str::to_owned),
            refund_state: refund,
            cancel_reason: None,
            cancel_request_id: None,
            payment_deadline: Utc::now(),
            lease_until: None,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            payment_method_id: Some("pm_card_visa".into()),
            traceparent: None,
            claim: 1,
            payment_state: PaymentState::Charged,
        }
    }

    fn taken(order: &OrderRow, reference: &str, amount: i64, refunded: i64) -> Taken {
        Taken {
            order_id: Some(order.id),
            reference: reference.into(),
            amount_minor: amount,
            refunded_minor: refunded,
        }
    }

    #[test]
    fn a_consistent_world_has_no_differences() {
        let paid = order(OrderStatus::Paid, RefundState::NotNeeded, Some("pi_1"));
        let refunded = order(OrderStatus::Cancelled, RefundState::Done, Some("pi_2"));
        let never = order(OrderStatus::Cancelled, RefundState::NotNeeded, None);
        let charges = [taken(&paid, "pi_1", 100, 0), taken(&refunded, "pi_2", 100, 100)];
        assert_eq!(compare(&[paid, refunded, never], &charges), vec![]);
    }

    #[test]
    fn every_kind_of_difference_is_found() {
        let orphan = order(OrderStatus::Cancelled, RefundState::NotNeeded, None);
        let twice = order(OrderStatus::Paid, RefundState::NotNeeded, Some("pi_a"));
        let unrefunded = order(OrderStatus::Cancelled, RefundState::Done, Some("pi_u"));
        let missing = order(OrderStatus::Paid, RefundState::NotNeeded, Some("pi_m"));
        let failed = order(OrderStatus::Cancelled, RefundState::Failed, Some("pi_f"));
        let charges = [
            taken(&orphan, "pi_o", 100, 0),
            taken(&twice, "pi_a", 100, 0),
            taken(&twice, "pi_b", 100, 0),
            taken(&unrefunded, "pi_u", 100, 40),
            taken(&failed, "pi_f", 100, 0),
            Taken {
                order_id: None,
                reference: "pi_x".into(),
                amount_minor: 5,
                refunded_minor: 0,
            },
            Taken {
                order_id: Some(Uuid::now_v7()),
                reference: "pi_new".into(),
                amount_minor: 100,
                refunded_minor: 0,
            },
        ];
        let found = compare(
            &[
                orphan.clone(),
                twice.clone(),
                unrefunded.clone(),
                missing.clone(),
                failed.clone(),
            ],
            &charges,
        );
        assert!(found.contains(&Difference::ChargeWithoutOrder {
            order_id: None,
            reference: "pi_x".into(),
            held_minor: 5
        }));
        // An order placed after the orders were read is no difference.
        let placed = named_orders(&found);
        assert_eq!(placed.len(), 1);
        let found = placed_since(found, &placed.into_iter().collect());
        assert!(found.contains(&Difference::OrphanCharge {
            order_id: orphan.id,
            reference: "pi_o".into(),
            held_minor: 100
        }));
        assert!(found.contains(&Difference::SeveralCharges {
            order_id: twice.id,
            extra: vec![("pi_b".into(), 100)]
        }));
        assert!(found.contains(&Difference::UnrefundedCharge {
            order_id: unrefunded.id,
            reference: "pi_u".into(),
            held_minor: 60
        }));
        assert!(found.contains(&Difference::PaidWithoutCharge {
            order_id: missing.id,
            reference: Some("pi_m".into())
        }));
        assert!(found.contains(&Difference::RefundFailed { order_id: failed.id }));
        assert_eq!(found.len(), 6, "{found:?}");
    }

    #[test]
    fn orders_on_their_way_are_the_resumer_s() {
        let pending = order(OrderStatus::PendingPayment, RefundState::NotNeeded, Some("pi_p"));
        let owed = order(OrderStatus::Cancelled, RefundState::Due, Some("pi_d"));
        let charges = [taken(&pending, "pi_p", 100, 0), taken(&owed, "pi_d", 100, 0)];
        assert_eq!(compare(&[pending, owed], &charges), vec![]);
    }
}
