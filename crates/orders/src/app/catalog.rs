//! The catalog: products and their stock. Prices live here and nowhere
//! else; an order snapshots them when it is placed.

use diesel_async::AsyncConnection as _;
use keel_platform::Error;
use uuid::Uuid;

use super::{Orders, Page};
use crate::{
    domain::{self, Price, RequestId},
    store::products::{self, NewAdjustment, NewProduct, ProductChanges, ProductRow},
};

/// A product to add, read and checked.
#[derive(Debug, Clone)]
pub struct AddProduct {
    /// Its name.
    pub name: String,
    /// Its description (may be empty).
    pub description: String,
    /// Its unit price.
    pub price: Price,
    /// The units in stock at first.
    pub stock: i64,
}

/// What an UpdateProduct changes, read and checked; `None` leaves a field as
/// it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateProduct {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new unit price.
    pub price: Option<Price>,
}

/// A stock adjustment, read and checked.
#[derive(Debug, Clone)]
pub struct AdjustStock {
    /// The product.
    pub product_id: Uuid,
    /// The caller's idempotency key.
    pub request_id: RequestId,
    /// Why the stock moves.
    pub reason: String,
    /// Units added (> 0) or removed (< 0).
    pub delta: i64,
}

impl Orders {
    /// Adds a product to the catalog.
    pub async fn create_product(&self, product: &AddProduct) -> Result<ProductRow, Error> {
        let mut conn = self.pool.get().await?;
        Ok(products::insert(
            &mut conn,
            NewProduct {
                id: Uuid::now_v7(),
                name: &product.name,
                description: &product.description,
                price_minor: product.price.minor,
                currency: &product.price.currency,
                stock_quantity: product.stock,
                initial_stock: product.stock,
            },
        )
        .await?)
    }

    /// The product `id`.
    pub async fn product(&self, id: Uuid) -> Result<ProductRow, Error> {
        let mut conn = self.pool.get().await?;
        products::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("product"))
    }

    /// A page of at most `limit` products, oldest first, after the `after`
    /// id.
    pub async fn list_products(&self, after: Option<Uuid>, limit: i64) -> Result<Page<ProductRow>, Error> {
        let mut conn = self.pool.get().await?;
        let rows = products::list(&mut conn, after, limit + 1).await?;
        Ok(Page::of(rows, limit, |row| row.id))
    }

    /// Applies `update` to product `id`, if its version still is `expected`
    /// (when given). An update that changes nothing answers the product as
    /// it is, after the same version check.
    pub async fn update_product(
        &self,
        id: Uuid,
        expected: Option<i64>,
        update: &UpdateProduct,
    ) -> Result<ProductRow, Error> {
        let mut conn = self.pool.get().await?;
        if update.name.is_none() && update.description.is_none() && update.price.is_none() {
            let current = products::find(&mut conn, id)
                .await?
                .ok_or_else(|| Error::not_found("product"))?;
            if expected.is_some_and(|version| version != current.version) {
                return Err(etag_mismatch());
            }
            return Ok(current);
        }
        let changes = ProductChanges {
            name: update.name.as_deref(),
            description: update.description.as_deref(),
            price_minor: update.price.as_ref().map(|p| p.minor),
            currency: update.price.as_ref().map(|p| p.currency.as_str()),
        };
        match products::update(&mut conn, id, changes, expected).await? {
            Some(row) => Ok(row),
            None => match products::find(&mut conn, id).await? {
                None => Err(Error::not_found("product")),
                Some(_) => Err(etag_mismatch()),
            },
        }
    }

    /// Moves a product's stock by the adjustment's delta, once per
    /// (product, key): a retry with the same key and the same adjustment
    /// answers the product as it is.
    pub async fn adjust_stock(&self, adjustment: &AdjustStock) -> Result<ProductRow, Error> {
        let AdjustStock {
            product_id: id,
            request_id,
            reason,
            delta,
        } = adjustment;
        let (id, delta) = (*id, *delta);
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            // The lock orders adjustments of one product, so the replay check
            // and the insert below cannot race.
            let current = products::lock(conn, id)
                .await?
                .ok_or_else(|| Error::not_found("product"))?;
            if let Some(first) = products::find_adjustment(conn, id, request_id.as_str()).await? {
                if first.delta == delta && first.reason == *reason {
                    return Ok(current);
                }
                return Err(Error::already_exists(
                    "REQUEST_ID_REUSED",
                    "this request_id was used for a different adjustment; use a new one",
                ));
            }
            if current.stock_quantity.saturating_add(delta) > domain::MAX_STOCK {
                return Err(Error::failed_precondition(
                    "STOCK_LIMIT_EXCEEDED",
                    format!("a product holds at most {} units", domain::MAX_STOCK),
                )
                .with_metadata("product_id", id.to_string()));
            }
            let moved = products::move_stock(conn, id, delta).await?.ok_or_else(|| {
                Error::failed_precondition(
                    "INSUFFICIENT_STOCK",
                    format!(
                        "the product has {} units; removing {} would go below zero",
                        current.stock_quantity, -delta
                    ),
                )
                .with_metadata("product_id", id.to_string())
            })?;
            products::insert_adjustment(
                conn,
                NewAdjustment {
                    id: Uuid::now_v7(),
                    product_id: id,
                    request_id: request_id.as_str(),
                    delta,
                    reason,
                },
            )
            .await?;
            Ok(moved)
        })
        .await
    }
}

fn etag_mismatch() -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        "the product changed since it was read; read it again and retry",
    )
}
