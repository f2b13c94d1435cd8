//! The catalog: products and their stock adjustments.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, Queryable, Selectable,
    SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::{products, stock_adjustments};
use diesel::QueryResult;

/// A product as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct ProductRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub price_minor: i64,
    pub currency: String,
    pub stock_quantity: i64,
    pub initial_stock: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A product to add.
#[derive(Debug, Insertable)]
#[diesel(table_name = products)]
pub struct NewProduct<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub description: &'a str,
    pub price_minor: i64,
    pub currency: &'a str,
    pub stock_quantity: i64,
    pub initial_stock: i64,
}

/// The fields UpdateProduct may change; `None` leaves a field as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = products)]
pub struct ProductChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub price_minor: Option<i64>,
    pub currency: Option<&'a str>,
}

/// An applied stock adjustment.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = stock_adjustments)]
pub struct AdjustmentRow {
    pub id: Uuid,
    pub product_id: Uuid,
    pub request_id: String,
    pub delta: i64,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// An adjustment to record.
#[derive(Debug, Insertable)]
#[diesel(table_name = stock_adjustments)]
pub struct NewAdjustment<'a> {
    pub id: Uuid,
    pub product_id: Uuid,
    pub request_id: &'a str,
    pub delta: i64,
    pub reason: &'a str,
}

pub async fn insert(conn: &mut AsyncPgConnection, product: NewProduct<'_>) -> QueryResult<ProductRow> {
    diesel::insert_into(products::table)
        .values(product)
        .returning(ProductRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ProductRow>> {
    products::table
        .find(id)
        .select(ProductRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The product, locked until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ProductRow>> {
    products::table
        .find(id)
        .select(ProductRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Products oldest first (ids are UUIDv7), after the `after` id.
pub async fn list(conn: &mut AsyncPgConnection, after: Option<Uuid>, limit: i64) -> QueryResult<Vec<ProductRow>> {
    let mut query = products::table
        .select(ProductRow::as_select())
        .order(products::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(products::id.gt(after));
    }
    query.load(conn).await
}

/// Applies `changes` if the version still is `expected_version` (when
/// given). None when the product is missing or its version moved on.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: ProductChanges<'_>,
    expected_version: Option<i64>,
) -> QueryResult<Option<ProductRow>> {
    let set = (
        changes,
        products::version.eq(products::version + 1),
        products::updated_at.eq(diesel::dsl::now),
    );
    let updated = match expected_version {
        Some(version) => {
            diesel::update(products::table.find(id).filter(products::version.eq(version)))
                .set(set)
                .returning(ProductRow::as_returning())
                .get_result(conn)
                .await
        }
        None => {
            diesel::update(products::table.find(id))
                .set(set)
                .returning(ProductRow::as_returning())
                .get_result(conn)
                .await
        }
    };
    updated.optional()
}

/// Moves the stock by `delta` unless that would make it negative: the
/// condition is in the UPDATE itself, so concurrent callers cannot both see
/// the same units. None when the product is missing or short of units.
pub async fn move_stock(conn: &mut AsyncPgConnection, id: Uuid, delta: i64) -> QueryResult<Option<ProductRow>> {
    diesel::update(
        products::table
            .find(id)
            .filter(products::stock_quantity.ge(delta.saturating_neg())),
    )
    .set((
        products::stock_quantity.eq(products::stock_quantity + delta),
        products::version.eq(products::version + 1),
        products::updated_at.eq(diesel::dsl::now),
    ))
    .returning(ProductRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

pub async fn find_adjustment(
    conn: &mut AsyncPgConnection,
    product_id: Uuid,
    request_id: &str,
) -> QueryResult<Option<AdjustmentRow>> {
    stock_adjustments::table
        .filter(stock_adjustments::product_id.eq(product_id))
        .filter(stock_adjustments::request_id.eq(request_id))
        .select(AdjustmentRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn insert_adjustment(conn: &mut AsyncPgConnection, adjustment: NewAdjustment<'_>) -> QueryResult<()> {
    diesel::insert_into(stock_adjustments::table)
        .values(adjustment)
        .execute(conn)
        .await
        .map(drop)
}

/// The sum of a product's adjustments.
pub async fn adjusted(conn: &mut AsyncPgConnection, product_id: Uuid) -> QueryResult<i64> {
    stock_adjustments::table
        .filter(stock_adjustments::product_id.eq(product_id))
        .select(stock_adjustments::delta)
        .load::<i64>(conn)
        .await
        .map(|deltas| deltas.into_iter().sum())
}
