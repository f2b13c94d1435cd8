//! Orders and their lines, and the claims the payment workers take on them.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _,
    Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use super::QueryResult;
use crate::{
    schema::{order_items, orders},
    status::{OrderStatus, PaymentMethod, RefundState, Refused, Transition},
};

/// An order as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub request_id: String,
    pub status: OrderStatus,
    pub payment_method: PaymentMethod,
    pub total_minor: i64,
    pub currency: String,
    pub charge_reference: Option<String>,
    pub refund_state: RefundState,
    pub cancel_reason: Option<String>,
    pub cancel_request_id: Option<String>,
    pub payment_deadline: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub payment_method_id: Option<String>,
    /// The W3C traceparent of the call that placed it.
    pub traceparent: Option<String>,
}

/// A new order: always PENDING_PAYMENT (the column's default), leased to the
/// call that placed it.
#[derive(Debug, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub request_id: &'a str,
    pub payment_method: PaymentMethod,
    pub total_minor: i64,
    pub currency: &'a str,
    pub payment_deadline: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub payment_method_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

/// A line as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = order_items)]
pub struct ItemRow {
    pub order_id: Uuid,
    pub position: i32,
    pub product_id: Uuid,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub currency: String,
}

/// A line to store.
#[derive(Debug, Insertable)]
#[diesel(table_name = order_items)]
pub struct NewItem<'a> {
    pub order_id: Uuid,
    pub position: i32,
    pub product_id: Uuid,
    pub product_name: &'a str,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub currency: &'a str,
}

/// What may change beside the status; `None` leaves a column as it is. It
/// has no status field: only [`transition`] moves the status.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = orders)]
pub struct OrderChanges<'a> {
    pub charge_reference: Option<&'a str>,
    pub refund_state: Option<RefundState>,
    pub cancel_reason: Option<&'a str>,
    pub cancel_request_id: Option<&'a str>,
    /// `Some(None)` releases the lease.
    pub lease_until: Option<Option<DateTime<Utc>>>,
}

pub async fn insert(conn: &mut AsyncPgConnection, order: NewOrder<'_>, items: &[NewItem<'_>]) -> QueryResult<OrderRow> {
    let row = diesel::insert_into(orders::table)
        .values(order)
        .returning(OrderRow::as_returning())
        .get_result(conn)
        .await?;
    diesel::insert_into(order_items::table)
        .values(items)
        .execute(conn)
        .await?;
    Ok(row)
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<OrderRow>> {
    orders::table
        .find(id)
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_by_request(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    request_id: &str,
) -> QueryResult<Option<OrderRow>> {
    orders::table
        .filter(orders::user_id.eq(user_id))
        .filter(orders::request_id.eq(request_id))
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The lines of `order_ids`, in each order's own sequence.
pub async fn items(conn: &mut AsyncPgConnection, order_ids: &[Uuid]) -> QueryResult<Vec<ItemRow>> {
    order_items::table
        .filter(order_items::order_id.eq_any(order_ids))
        .select(ItemRow::as_select())
        .order((order_items::order_id, order_items::position))
        .load(conn)
        .await
}

/// Orders newest first, before the `before` id, of one buyer and in one
/// status when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<Uuid>,
    status: Option<OrderStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<OrderRow>> {
    let mut query = orders::table
        .select(OrderRow::as_select())
        .order(orders::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(user_id) = user_id {
        query = query.filter(orders::user_id.eq(user_id));
    }
    if let Some(status) = status {
        query = query.filter(orders::status.eq(status));
    }
    if let Some(before) = before {
        query = query.filter(orders::id.lt(before));
    }
    query.load(conn).await
}

/// Why a [`transition`] did not happen.
#[derive(Debug)]
pub enum TransitionError {
    /// The life cycle does not allow it from `from`.
    Refused(Refused),
    /// The order was no longer in `from` (someone else moved it first), or
    /// is missing.
    Moved,
    /// The query failed.
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for TransitionError {
    fn from(err: diesel::result::Error) -> Self {
        TransitionError::Query(err)
    }
}

/// Moves order `id` from `from` by `transition`, with `changes`: the one
/// way a status changes. The life cycle decides the new status; the UPDATE
/// applies only while the order still is in `from`, so of two racing
/// callers exactly one wins.
pub async fn transition(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: OrderStatus,
    transition: Transition,
    changes: OrderChanges<'_>,
) -> Result<OrderRow, TransitionError> {
    let to = from.apply(transition).map_err(TransitionError::Refused)?;
    diesel::update(orders::table.find(id).filter(orders::status.eq(from)))
        .set((
            orders::status.eq(to),
            changes,
            orders::version.eq(orders::version + 1),
            orders::updated_at.eq(diesel::dsl::now),
        ))
        .returning(OrderRow::as_returning())
        .get_result(conn)
        .await
        .optional()?
        .ok_or(TransitionError::Moved)
}

/// Applies `changes` (never the status) while the order is in `status` and
/// its refund in `refund_state`. None when it is not.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: OrderStatus,
    refund_state: RefundState,
    changes: OrderChanges<'_>,
) -> QueryResult<Option<OrderRow>> {
    diesel::update(
        orders::table
            .find(id)
            .filter(orders::status.eq(status))
            .filter(orders::refund_state.eq(refund_state)),
    )
    .set((
        changes,
        orders::version.eq(orders::version + 1),
        orders::updated_at.eq(diesel::dsl::now),
    ))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Claims up to `limit` orders whose payment is unfinished (PENDING_PAYMENT,
/// or cancelled with a refund unknown or due) and that nobody holds, until
/// `until`. `SKIP LOCKED`: replicas claiming at once each get other orders.
pub async fn claim_unfinished(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<OrderRow>> {
    let unfinished = orders::status.eq(OrderStatus::PendingPayment).or(orders::status
        .eq(OrderStatus::Cancelled)
        .and(orders::refund_state.eq_any([RefundState::Unknown, RefundState::Due])));
    let free = orders::lease_until.is_null().or(orders::lease_until.lt(now));
    // In the caller's transaction or not, the claimed rows stay locked from
    // the SELECT to the UPDATE: one statement each, inside one transaction.
    conn.transaction(async |conn| {
        let ids: Vec<Uuid> = orders::table
            .filter(unfinished)
            .filter(free)
            .select(orders::id)
            .order(orders::created_at.asc())
            .limit(limit)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        diesel::update(orders::table.filter(orders::id.eq_any(&ids)))
            .set(orders::lease_until.eq(until))
            .returning(OrderRow::as_returning())
            .get_results(conn)
            .await
    })
    .await
}

/// Holds a transaction-scoped lock on `key` until the caller's transaction
/// ends: callers with the same key take turns.
pub async fn lock_key(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Claims one order until `until` if it is in `status` and nobody holds it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: OrderStatus,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> QueryResult<Option<OrderRow>> {
    diesel::update(
        orders::table
            .find(id)
            .filter(orders::status.eq(status))
            .filter(orders::lease_until.is_null().or(orders::lease_until.lt(now))),
    )
    .set(orders::lease_until.eq(until))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}
