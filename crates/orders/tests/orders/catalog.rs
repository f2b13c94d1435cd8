//! The catalog: admins create and change products and their stock; anyone
//! signed in reads it; stock never goes below zero and an adjustment applies
//! once per request id.

use crate::common;

use common::{fixture, usd};
use keel::orders::v1 as pb;
use keel_testkit::{
    authorized,
    status::{reason, violated_fields},
};
use prost_types::FieldMask;
use tonic::Code;

fn adjust(product_id: &str, delta: i64, request_id: &str) -> pb::AdjustStockRequest {
    pb::AdjustStockRequest {
        product_id: product_id.into(),
        delta,
        request_id: request_id.into(),
        reason: "restock".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_creates_a_product_and_anyone_signed_in_reads_it() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let product = fx.product("Tea", 450, 7).await?;
    assert_eq!(product.name, "Tea");
    assert_eq!(product.price, usd(450));
    assert_eq!(product.stock_quantity, 7);
    assert!(!product.etag.is_empty());

    let buyer = fx.buyer(0).await?;
    let read = fx
        .orders()
        .get_product(authorized(
            pb::GetProductRequest {
                product_id: product.id.clone(),
            },
            &buyer.token,
        ))
        .await?
        .into_inner()
        .product;
    assert_eq!(read.as_ref(), Some(&product));

    let missing = fx
        .orders()
        .get_product(authorized(
            pb::GetProductRequest {
                product_id: uuid::Uuid::now_v7().to_string(),
            },
            &buyer.token,
        ))
        .await
        .expect_err("unknown product");
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = fx
        .orders()
        .get_product(authorized(
            pb::GetProductRequest {
                product_id: "nope".into(),
            },
            &buyer.token,
        ))
        .await
        .expect_err("malformed id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&malformed), ["product_id"]);
    let anonymous = fx
        .orders()
        .get_product(pb::GetProductRequest { product_id: product.id })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_change_the_catalog() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let product = fx.product("Tea", 450, 7).await?;
    let buyer = fx.buyer(0).await?;
    let mut orders = fx.orders();
    let create = orders
        .create_product(authorized(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    name: "Contraband".into(),
                    price: usd(1),
                    ..Default::default()
                }),
            },
            &buyer.token,
        ))
        .await
        .expect_err("a user may not create products");
    assert_eq!(create.code(), Code::PermissionDenied);
    let update = orders
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id.clone(),
                    price: usd(1),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &buyer.token,
        ))
        .await
        .expect_err("a user may not change prices");
    assert_eq!(update.code(), Code::PermissionDenied);
    let adjusted = orders
        .adjust_stock(authorized(adjust(&product.id, 100, "steal"), &buyer.token))
        .await
        .expect_err("a user may not add stock");
    assert_eq!(adjusted.code(), Code::PermissionDenied);
    assert_eq!(fx.get_product(&product.id).await?, product, "nothing changed");
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_products_are_refused_naming_every_bad_field() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let refused = fx
        .orders()
        .create_product(authorized(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    name: "   ".into(),
                    price: Some(keel::common::v1::Money {
                        amount_minor: 0,
                        currency_code: "usd".into(),
                    }),
                    stock_quantity: -1,
                    ..Default::default()
                }),
            },
            &fx.admin,
        ))
        .await
        .expect_err("invalid product");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&refused),
        [
            "product.name",
            "product.stock_quantity",
            "product.price.amount_minor",
            "product.price.currency_code"
        ]
    );
    let no_price = fx
        .orders()
        .create_product(authorized(
            pb::CreateProductRequest {
                product: Some(pb::Product {
                    name: "Free lunch".into(),
                    ..Default::default()
                }),
            },
            &fx.admin,
        ))
        .await
        .expect_err("a price is required");
    assert_eq!(violated_fields(&no_price), ["product.price"]);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn products_list_oldest_first_in_pages() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(fx.product(&format!("Item {i}"), 100 + i, 1).await?.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = fx
            .orders()
            .list_products(authorized(
                pb::ListProductsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                },
                &fx.admin,
            ))
            .await?
            .into_inner();
        assert!(page.products.len() <= 2);
        seen.extend(page.products.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, created);
    let bad = fx
        .orders()
        .list_products(authorized(
            pb::ListProductsRequest {
                page_size: -1,
                page_token: "???".into(),
            },
            &fx.admin,
        ))
        .await
        .expect_err("bad paging");
    assert_eq!(bad.code(), Code::InvalidArgument);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_follow_the_mask_and_the_etag() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let product = fx.product("Tea", 450, 7).await?;
    let mut orders = fx.orders();
    let updated = orders
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id.clone(),
                    name: "Green tea".into(),
                    price: usd(999),
                    etag: product.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
            },
            &fx.admin,
        ))
        .await?
        .into_inner()
        .product
        .expect("product");
    assert_eq!(updated.name, "Green tea");
    assert_eq!(updated.price, usd(450), "the price was not in the mask");
    assert_ne!(updated.etag, product.etag);

    let stale = orders
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id.clone(),
                    price: usd(1),
                    etag: product.etag.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &fx.admin,
        ))
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(reason(&stale), "ETAG_MISMATCH");

    let stock = orders
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id.clone(),
                    stock_quantity: 1000,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["stock_quantity".into()],
                }),
            },
            &fx.admin,
        ))
        .await
        .expect_err("stock changes only through AdjustStock");
    assert_eq!(stock.code(), Code::InvalidArgument);

    let missing = orders
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: uuid::Uuid::now_v7().to_string(),
                    name: "Ghost".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &fx.admin,
        ))
        .await
        .expect_err("unknown product");
    assert_eq!(missing.code(), Code::NotFound);

    let priced = orders
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id.clone(),
                    price: usd(500),
                    etag: updated.etag.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &fx.admin,
        ))
        .await?
        .into_inner()
        .product
        .expect("product");
    assert_eq!((priced.name.as_str(), priced.price), ("Green tea", usd(500)));
    assert_eq!(priced.stock_quantity, 7);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_adjusts_once_per_request_id_and_never_below_zero() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let product = fx.product("Tea", 450, 5).await?;
    let mut orders = fx.orders();
    let added = orders
        .adjust_stock(authorized(adjust(&product.id, 10, "restock-1"), &fx.admin))
        .await?
        .into_inner()
        .product
        .expect("product");
    assert_eq!(added.stock_quantity, 15);
    assert_ne!(added.etag, product.etag, "stock changes move the etag");
    let replay = orders
        .adjust_stock(authorized(adjust(&product.id, 10, "restock-1"), &fx.admin))
        .await?
        .into_inner()
        .product
        .expect("product");
    assert_eq!(replay.stock_quantity, 15, "a retry applies nothing");
    let reused = orders
        .adjust_stock(authorized(adjust(&product.id, 3, "restock-1"), &fx.admin))
        .await
        .expect_err("same key, other delta");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason(&reused), "REQUEST_ID_REUSED");

    let too_many = orders
        .adjust_stock(authorized(adjust(&product.id, -16, "damaged"), &fx.admin))
        .await
        .expect_err("below zero");
    assert_eq!(too_many.code(), Code::FailedPrecondition);
    assert_eq!(reason(&too_many), "INSUFFICIENT_STOCK");
    assert_eq!(fx.stock(&product.id).await?, 15, "a refused adjustment changes nothing");
    let emptied = orders
        .adjust_stock(authorized(adjust(&product.id, -15, "damaged"), &fx.admin))
        .await?
        .into_inner()
        .product
        .expect("product");
    assert_eq!(emptied.stock_quantity, 0);

    let zero = orders
        .adjust_stock(authorized(adjust(&product.id, 0, ""), &fx.admin))
        .await
        .expect_err("zero delta, no key");
    assert_eq!(violated_fields(&zero), ["delta", "request_id"]);
    let huge = orders
        .adjust_stock(authorized(adjust(&product.id, i64::MAX, "huge"), &fx.admin))
        .await
        .expect_err("beyond any stock");
    assert_eq!(violated_fields(&huge), ["delta"]);
    orders
        .adjust_stock(authorized(adjust(&product.id, 1_000_000_000_000, "most"), &fx.admin))
        .await?;
    let over = orders
        .adjust_stock(authorized(adjust(&product.id, 1, "one-more"), &fx.admin))
        .await
        .expect_err("over the limit");
    assert_eq!(reason(&over), "STOCK_LIMIT_EXCEEDED");
    let missing = orders
        .adjust_stock(authorized(adjust(&uuid::Uuid::now_v7().to_string(), 1, "x"), &fx.admin))
        .await
        .expect_err("unknown product");
    assert_eq!(missing.code(), Code::NotFound);
    fx.check_invariants().await
}
