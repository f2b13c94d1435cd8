//! CreateProduct, GetProduct, ListProducts, UpdateProduct and AdjustStock:
//! reading the requests into the catalog's operations (`app::catalog`) and
//! shaping the products they answer.

use keel::{common::v1::Money, orders::v1 as pb};
use keel_platform::{
    Error,
    db::paging,
    proto::timestamp,
    serve::rpc::{Violations, etag, parse_etag, parse_id, uuid_field},
};

use crate::{
    app::{AddProduct, AdjustStock, Orders, UpdateProduct},
    domain::{self, Price, RequestId},
    store::products::ProductRow,
};

pub(super) async fn create_product(
    orders: &Orders,
    request: pb::CreateProductRequest,
) -> Result<pb::CreateProductResponse, Error> {
    let product = request
        .product
        .ok_or_else(|| Error::invalid_field("product", "required", "is required"))?;
    let mut violations = Violations::new();
    let name = violations.check(domain::product_name("product.name", &product.name));
    let description = violations.check(domain::description("product.description", &product.description));
    let price = violations.check(Price::parse("product.price", product.price.as_ref()));
    let stock = violations.check(domain::stock("product.stock_quantity", product.stock_quantity));
    let (Some(name), Some(description), Some(price), Some(stock)) = (name, description, price, stock) else {
        return Err(violations.into_error());
    };
    let row = orders
        .create_product(&AddProduct {
            name,
            description,
            price,
            stock,
        })
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
    let row = orders.product(id).await?;
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
    let page = orders.list_products(after, limit).await?;
    Ok(pb::ListProductsResponse {
        products: page.items.iter().map(product_pb).collect(),
        next_page_token: page.next_page_token,
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
        .ok_or_else(|| Error::invalid_field("product", "required", "is required"))?;
    let id = parse_id("product.id", &product.id)?;
    let expected = parse_etag("product.etag", &product.etag)?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if let Some(path) = paths.iter().find(|p| !UPDATABLE.contains(&p.as_str())) {
        return Err(Error::invalid_field(
            "update_mask",
            "field_mask.in",
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
    let update = UpdateProduct {
        name: name.flatten(),
        description: description.flatten(),
        price: price.flatten(),
    };
    let row = orders.update_product(id, expected, &update).await?;
    Ok(pb::UpdateProductResponse {
        product: Some(product_pb(&row)),
    })
}

pub(super) async fn adjust_stock(
    orders: &Orders,
    request: pb::AdjustStockRequest,
) -> Result<pb::AdjustStockResponse, Error> {
    let mut violations = Violations::new();
    let id = violations.check(uuid_field("product_id", &request.product_id));
    let request_id = violations.check(RequestId::parse("request_id", &request.request_id));
    let reason = violations.check(domain::note("reason", &request.reason));
    let delta = violations.check(domain::stock_delta("delta", request.delta));
    let (Some(product_id), Some(request_id), Some(reason), Some(delta)) = (id, request_id, reason, delta) else {
        return Err(violations.into_error());
    };
    let row = orders
        .adjust_stock(&AdjustStock {
            product_id,
            request_id,
            reason,
            delta,
        })
        .await?;
    Ok(pb::AdjustStockResponse {
        product: Some(product_pb(&row)),
    })
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
