//! Reading orders for a caller: one order (GetOrder), a page of them
//! (ListOrders), and the lines every answer about an order carries. A user
//! sees their own orders; an admin sees any.

use std::collections::BTreeMap;

use keel_platform::{Error, auth::principal::UserPrincipal};
use uuid::Uuid;

use super::{Orders, Page};
use crate::{
    status::{OrderStatus, RefundState},
    store::{
        self,
        orders::{ItemRow, OrderRow},
    },
};

/// An order with its lines, in the order's own sequence: what a caller is
/// answered with.
#[derive(Debug, Clone)]
pub struct OrderView {
    /// The order.
    pub order: OrderRow,
    /// Its lines.
    pub items: Vec<ItemRow>,
}

/// Which orders a ListOrders asks for, read and checked.
#[derive(Debug, Clone, Default)]
pub struct ListOrders {
    /// One buyer's; unset: the caller's own, or everyone's for an admin.
    pub user_id: Option<Uuid>,
    /// In one status.
    pub status: Option<OrderStatus>,
    /// In one refund state.
    pub refund_state: Option<RefundState>,
}

impl Orders {
    /// The order `id` with its lines, if `caller` may see it.
    pub async fn get_order(&self, caller: &UserPrincipal, id: Uuid) -> Result<OrderView, Error> {
        let order = self.visible_order(caller, id).await?;
        self.view(order).await
    }

    /// A page of at most `limit` orders with their lines, newest first,
    /// before the `before` id. A user may list only their own orders.
    pub async fn list_orders(
        &self,
        caller: &UserPrincipal,
        filter: &ListOrders,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<OrderView>, Error> {
        let buyer = match filter.user_id {
            None if caller.is_admin() => None,
            None => Some(caller.user_id),
            Some(id) if id != caller.user_id && !caller.is_admin() => {
                return Err(Error::permission_denied(
                    "NOT_ORDER_OWNER",
                    "a user may only list their own orders",
                ));
            }
            Some(id) => Some(id),
        };
        let rows = {
            let mut conn = self.pool.get().await?;
            store::orders::list(&mut conn, buyer, filter.status, filter.refund_state, before, limit + 1).await?
        };
        let page = Page::of(rows, limit, |row| row.id);
        Ok(Page {
            items: self.views(page.items).await?,
            next_page_token: page.next_page_token,
        })
    }

    /// The order `id`, or NOT_FOUND.
    pub(super) async fn find_order(&self, id: Uuid) -> Result<OrderRow, Error> {
        let mut conn = self.pool.get().await?;
        store::orders::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("order"))
    }

    /// The order, if the caller may see it: their own, or any for an admin.
    /// Another user's order answers as a missing one, so ids reveal nothing.
    pub(super) async fn visible_order(&self, caller: &UserPrincipal, id: Uuid) -> Result<OrderRow, Error> {
        let order = self.find_order(id).await?;
        if order.user_id == caller.user_id || caller.is_admin() {
            Ok(order)
        } else {
            Err(Error::not_found("order"))
        }
    }

    /// `order` with its lines.
    pub(super) async fn view(&self, order: OrderRow) -> Result<OrderView, Error> {
        let mut all = self.views(vec![order]).await?;
        all.pop()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("an order went missing while being read")))
    }

    /// Each of `rows` with its lines, in the same sequence.
    async fn views(&self, rows: Vec<OrderRow>) -> Result<Vec<OrderView>, Error> {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let items = {
            let mut conn = self.pool.get().await?;
            store::orders::items(&mut conn, &ids).await?
        };
        let mut by_order: BTreeMap<Uuid, Vec<ItemRow>> = BTreeMap::new();
        for item in items {
            by_order.entry(item.order_id).or_default().push(item);
        }
        Ok(rows
            .into_iter()
            .map(|order| {
                let items = by_order.remove(&order.id).unwrap_or_default();
                OrderView { order, items }
            })
            .collect())
    }
}
