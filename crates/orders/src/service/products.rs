//! CreateProduct, GetProduct, ListProducts, UpdateProduct and AdjustStock:
//! the catalog. Prices live here and nowhere else.

use diesel_async::AsyncConnection as _;
use keel::{common::v1::Money, orders::v1 as pb};
use keel_platform::{
    Error,
    db::paging,
    proto::timestamp,
    serve::rpc::{Violations, parse_id},
};
use uuid::Uuid;

use keel_platform::serve::rpc::{etag, parse_etag};

use super::Orders;
use crate::{
    domain::{self, Price, RequestId},
    store::{NewAdjustment, NewProduct, ProductChanges, ProductRow, products},
};

pub(super) async fn create_product(
    orders: &Orders,
    request: pb::CreateProductRequest,
) -> Result<pb::CreateProductResponse, Error> {
    let product = request
        .product
        .ok_or_else(|| Error::invalid_field("product", "is required"))?;
    let mut violations = Violations::new();
    let name = violations.check(domain::product_name("product.name", &product.name));
    let description = violations.check(domain::description("product.description", &product.description));
    let price = violations.check(Price::parse("product.price", product.price.as_ref()));
    let stock = violations.check(domain::stock("product.stock_quantity", product.stock_quantity));
    let (Some(name), Some(description), Some(price), Some(stock)) = (name, description, price, stock) else {
        return Err(violations.into_error());
    };
    let mut conn = orders.pool.get().await?;
    let row = products::insert(
        &mut conn,
        NewProduct {
            id: Uuid::now_v7(),
            name: &name,
            description: &description,
            price_minor: price.minor,
            currency: &price.currency,
            stock_quantity: stock,
            initial_stock: stock,
        },
    )
    .await?;
    Ok(pb::CreateProductResponse {
        product: Some(product_pb(&row)),
    })
}

pub(super) async fn get_product(
    orders: &Orders,
    request: pb::GetProductRequest,
) -> Result<pb::GetProductResponse, Error> {
    let id = parse_id("product_id", &request.product_id)?;
    let mut conn = orders.pool.get().await?;
    let row = products::find(&mut conn, id)
        .await?
        .ok_or_else(|| Error::not_found("product"))?;
    Ok(pb::GetProductResponse {
        product: Some(product_pb(&row)),
    })
}

pub(super) async fn list_products(
    orders: &Orders,
    request: pb::ListProductsRequest,
) -> Result<pb::ListProductsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let after = paging::decode_token(&request.page_token)?;
    let mut conn = orders.pool.get().await?;
    let rows = products::list(&mut conn, after, limit + 1).await?;
    let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
    Ok(pb::ListProductsResponse {
        products: page.iter().map(product_pb).collect(),
        next_page_token,
    })
}

/// The fields UpdateProduct may name in its mask.
const UPDATABLE: [&str; 3] = ["name", "description", "price"];

pub(super) async fn update_product(
    orders: &Orders,
    request: pb::UpdateProductRequest,
) -> Result<pb::UpdateProductResponse, Error> {
    let product = request
        .product
        .ok_or_else(|| Error::invalid_field("product", "is required"))?;
    let id = parse_id("product.id", &product.id)?;
    let expected = parse_etag("product.etag", &product.etag)?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if let Some(path) = paths.iter().find(|p| !UPDATABLE.contains(&p.as_str())) {
        return Err(Error::invalid_field(
            "update_mask",
            format!("{path} cannot be updated (only name, description, price; stock changes with AdjustStock)"),
        ));
    }
    // Without a mask, what is set in `product` changes (AIP-134; an empty
    // string is proto3's unset).
    let named = |field: &str, set: bool| {
        if paths.is_empty() {
            set
        } else {
            paths.iter().any(|p| p == field)
        }
    };
    let mut violations = Violations::new();
    // Name and price can't be cleared: left empty, they keep their value
    // even when the mask names them.
    let name = (named("name", true) && !product.name.is_empty())
        .then(|| violations.check(domain::product_name("product.name", &product.name)));
    let description = named("description", !product.description.is_empty())
        .then(|| violations.check(domain::description("product.description", &product.description)));
    let price = (named("price", true) && product.price.is_some())
        .then(|| violations.check(Price::parse("product.price", product.price.as_ref())));
    // A named field that failed to parse noted its violation.
    if name.as_ref().is_some_and(Option::is_none)
        || description.as_ref().is_some_and(Option::is_none)
        || price.as_ref().is_some_and(Option::is_none)
    {
        return Err(violations.into_error());
    }
    let (name, description, price) = (name.flatten(), description.flatten(), price.flatten());

    let mut conn = orders.pool.get().await?;
    if name.is_none() && description.is_none() && price.is_none() {
        let current = products::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("product"))?;
        if expected.is_some_and(|version| version != current.version) {
            return Err(etag_mismatch());
        }
        return Ok(pb::UpdateProductResponse {
            product: Some(product_pb(&current)),
        });
    }
    let changes = ProductChanges {
        name: name.as_deref(),
        description: description.as_deref(),
        price_minor: price.as_ref().map(|p| p.minor),
        currency: price.as_ref().map(|p| p.currency.as_str()),
    };
    match products::update(&mut conn, id, changes, expected).await? {
        Some(row) => Ok(pb::UpdateProductResponse {
            product: Some(product_pb(&row)),
        }),
        None => match products::find(&mut conn, id).await? {
            None => Err(Error::not_found("product")),
            Some(_) => Err(etag_mismatch()),
        },
    }
}

pub(super) async fn adjust_stock(
    orders: &Orders,
    request: pb::AdjustStockRequest,
) -> Result<pb::AdjustStockResponse, Error> {
    let mut violations = Violations::new();
    let id = violations.check(keel_platform::serve::rpc::uuid_field("product_id", &request.product_id));
    let request_id = violations.check(RequestId::parse("request_id", &request.request_id));
    let reason = violations.check(domain::note("reason", &request.reason));
    let delta = violations.check(domain::stock_delta("delta", request.delta));
    let (Some(id), Some(request_id), Some(reason), Some(delta)) = (id, request_id, reason, delta) else {
        return Err(violations.into_error());
    };
    let mut conn = orders.pool.get().await?;
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            // The lock orders adjustments of one product, so the replay check
            // and the insert below cannot race.
            let current = products::lock(conn, id)
                .await?
                .ok_or_else(|| Error::not_found("product"))?;
            if let Some(first) = products::find_adjustment(conn, id, request_id.as_str()).await? {
                if first.delta == delta && first.reason == reason {
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
                    reason: &reason,
                },
            )
            .await?;
            Ok(moved)
        })
        .await?;
    Ok(pb::AdjustStockResponse {
        product: Some(product_pb(&row)),
    })
}

fn etag_mismatch() -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        "the product changed since it was read; read it again and retry",
    )
}

pub(super) fn product_pb(row: &ProductRow) -> pb::Product {
    pb::Product {
        id: row.id.to_string(),
        name: row.name.clone(),
        description: row.description.clone(),
        price: Some(Money {
            amount_minor: row.price_minor,
            currency_code: row.currency.clone(),
        }),
        stock_quantity: row.stock_quantity,
        etag: etag(row.version),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}
