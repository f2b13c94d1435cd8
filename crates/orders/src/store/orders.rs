//! Orders and their lines, and the claims the payment workers take on them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, BoxableExpression, ExpressionMethods as _, Insertable, IntoSql as _,
    OptionalExtension as _, QueryDsl as _, Queryable, Selectable, SelectableHelper as _,
    dsl::{now, sql},
    pg::Pg,
    sql_types::{Double, Nullable, Timestamptz},
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{
    schema::{order_items, orders},
    status::{OrderStatus, PaymentMethod, PaymentState, RefundState, Refused, Transition},
};
use diesel::QueryResult;

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
    /// The fencing token: bumped by every claim (see [`claim`]).
    pub claim: i64,
    pub payment_state: PaymentState,
}

/// A new order: always PENDING_PAYMENT and unpaid (the columns' defaults),
/// claimed by the call that placed it (claim 1).
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
    pub claim: i64,
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

/// What may change beside the status; `None` leaves a column as it is. Only
/// [`transition`] moves the status. The database refuses any move of status,
/// payment or refund state that is not forward.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = orders)]
pub struct OrderChanges<'a> {
    pub payment_state: Option<PaymentState>,
    pub charge_reference: Option<&'a str>,
    pub refund_state: Option<RefundState>,
    pub cancel_reason: Option<&'a str>,
    pub cancel_request_id: Option<&'a str>,
}

/// What a write expects the order to be: exactly as its writer last saw it,
/// fencing token included. Of two writers acting on one view, one wins; a
/// worker whose claim was taken over (the token bumped) misses every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub id: Uuid,
    pub claim: i64,
    pub status: OrderStatus,
    pub payment: PaymentState,
    pub refund: RefundState,
}

impl Expect {
    /// The order as `row` shows it.
    pub fn of(row: &OrderRow) -> Self {
        Self {
            id: row.id,
            claim: row.claim,
            status: row.status,
            payment: row.payment_state,
            refund: row.refund_state,
        }
    }
}

/// What a write does to the claim on the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Keep it, held (again) for this long from now, by the database's clock.
    For(Duration),
    /// Let it go: the resumer may claim the order at once.
    Release,
    /// Take it over from whoever holds it (bumping the token), for this
    /// long: a cancel does, so the worker it overtakes stops.
    TakeOver(Duration),
}

impl Hold {
    fn bump(self) -> i64 {
        i64::from(matches!(self, Hold::TakeOver(_)))
    }

    /// `now() + duration` by the database's clock (one clock for every
    /// replica), or NULL to release.
    fn until(self) -> Box<dyn BoxableExpression<orders::table, Pg, SqlType = Nullable<Timestamptz>> + Send> {
        let seconds = match self {
            Hold::For(duration) | Hold::TakeOver(duration) => Some(duration.as_secs_f64()),
            Hold::Release => None,
        };
        Box::new(
            sql::<Nullable<Timestamptz>>("now() + make_interval(secs => ")
                .bind::<Nullable<Double>, _>(seconds)
                .sql(")"),
        )
    }
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

/// Every order paid by `method`, oldest first.
pub async fn all_of(conn: &mut AsyncPgConnection, method: PaymentMethod) -> QueryResult<Vec<OrderRow>> {
    orders::table
        .filter(orders::payment_method.eq(method))
        .select(OrderRow::as_select())
        .order(orders::id.asc())
        .load(conn)
        .await
}

/// Which of `ids` are orders.
pub async fn existing(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<std::collections::BTreeSet<Uuid>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let found: Vec<Uuid> = orders::table
        .filter(orders::id.eq_any(ids))
        .select(orders::id)
        .load(conn)
        .await?;
    Ok(found.into_iter().collect())
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

/// Orders newest first, before the `before` id, of one buyer, in one
/// status and in one refund state when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<Uuid>,
    status: Option<OrderStatus>,
    refund_state: Option<RefundState>,
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
    if let Some(refund_state) = refund_state {
        query = query.filter(orders::refund_state.eq(refund_state));
    }
    if let Some(before) = before {
        query = query.filter(orders::id.lt(before));
    }
    query.load(conn).await
}

/// Why a [`transition`] did not happen.
#[derive(Debug)]
pub enum TransitionError {
    /// The life cycle does not allow it from the expected status.
    Refused(Refused),
    /// The order was no longer as expected (someone else moved it, or took
    /// its claim over), or is missing.
    Moved,
    /// The query failed.
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for TransitionError {
    fn from(err: diesel::result::Error) -> Self {
        TransitionError::Query(err)
    }
}

/// Moves the order by `transition`, with `changes`: the one way a status
/// changes. The life cycle decides the new status; the write applies only
/// while the order is as `expect` says.
pub async fn transition(
    conn: &mut AsyncPgConnection,
    expect: &Expect,
    transition: Transition,
    changes: OrderChanges<'_>,
    hold: Hold,
) -> Result<OrderRow, TransitionError> {
    let to = expect.status.apply(transition).map_err(TransitionError::Refused)?;
    write(conn, expect, Some(to), changes, hold)
        .await?
        .ok_or(TransitionError::Moved)
}

/// Applies `changes` while the order is as `expect` says. None when it is
/// not.
pub async fn update(
    conn: &mut AsyncPgConnection,
    expect: &Expect,
    changes: OrderChanges<'_>,
    hold: Hold,
) -> QueryResult<Option<OrderRow>> {
    write(conn, expect, None, changes, hold).await
}

/// The status, when a write moves it.
#[derive(AsChangeset)]
#[diesel(table_name = orders)]
struct StatusChange {
    status: Option<OrderStatus>,
}

async fn write(
    conn: &mut AsyncPgConnection,
    expect: &Expect,
    status: Option<OrderStatus>,
    changes: OrderChanges<'_>,
    hold: Hold,
) -> QueryResult<Option<OrderRow>> {
    diesel::update(
        orders::table
            .find(expect.id)
            .filter(orders::claim.eq(expect.claim))
            .filter(orders::status.eq(expect.status))
            .filter(orders::payment_state.eq(expect.payment))
            .filter(orders::refund_state.eq(expect.refund)),
    )
    .set((
        StatusChange { status },
        changes,
        orders::claim.eq(orders::claim + hold.bump()),
        orders::lease_until.eq(hold.until()),
        orders::version.eq(orders::version + 1),
        orders::updated_at.eq(now),
    ))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// The filter [`unfinished`] builds.
type Unfinished = diesel::dsl::Or<
    diesel::dsl::Eq<orders::status, OrderStatus>,
    diesel::dsl::And<
        diesel::dsl::Eq<orders::status, OrderStatus>,
        diesel::dsl::EqAny<orders::refund_state, [RefundState; 2]>,
    >,
>;

/// Orders whose payment or refund is unfinished: unpaid, or cancelled with
/// a refund unknown or due.
fn unfinished() -> Unfinished {
    orders::status.eq(OrderStatus::PendingPayment).or(orders::status
        .eq(OrderStatus::Cancelled)
        .and(orders::refund_state.eq_any([RefundState::Unknown, RefundState::Due])))
}

/// Claims the oldest unfinished order nobody holds, for `lease`: its token
/// is bumped, so whoever held it before writes nothing more. `SKIP LOCKED`:
/// replicas claiming at once each get another order.
pub async fn claim_next(conn: &mut AsyncPgConnection, lease: Duration) -> QueryResult<Option<OrderRow>> {
    conn.transaction(async |conn| {
        let id: Option<Uuid> = orders::table
            .filter(unfinished())
            .filter(orders::lease_until.is_null().or(orders::lease_until.lt(now)))
            .select(orders::id)
            .order(orders::created_at.asc())
            .limit(1)
            .for_update()
            .skip_locked()
            .first(conn)
            .await
            .optional()?;
        match id {
            Some(id) => claim(conn, id, lease).await,
            None => Ok(None),
        }
    })
    .await
}

/// Claims order `id` for `lease` if its payment or refund is unfinished and
/// nobody holds it (or its holder's lease ran out).
pub async fn claim(conn: &mut AsyncPgConnection, id: Uuid, lease: Duration) -> QueryResult<Option<OrderRow>> {
    claim_where(conn, id, lease, false).await
}

/// Claims order `id` for `lease` if its payment or refund is unfinished,
/// whoever holds it: the holder's next write misses, so it stops.
pub async fn take_over(conn: &mut AsyncPgConnection, id: Uuid, lease: Duration) -> QueryResult<Option<OrderRow>> {
    claim_where(conn, id, lease, true).await
}

async fn claim_where(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease: Duration,
    held_or_not: bool,
) -> QueryResult<Option<OrderRow>> {
    diesel::update(
        orders::table.find(id).filter(unfinished()).filter(
            orders::lease_until
                .is_null()
                .or(orders::lease_until.lt(now))
                .or(held_or_not.into_sql::<diesel::sql_types::Bool>()),
        ),
    )
    .set((
        orders::claim.eq(orders::claim + 1),
        orders::lease_until.eq(Hold::For(lease).until()),
    ))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .await
    .optional()
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
