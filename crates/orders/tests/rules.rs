//! The request rules orders' protos declare (buf.validate), each broken once
//! over gRPC: INVALID_ARGUMENT with the field and the rule, before any
//! handler runs.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel::{
    common::v1::Money,
    orders::v1::{self as pb, orders_service_client::OrdersServiceClient},
};
use keel_testkit::{authorized, status::assert_rule};

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_is_enforced_with_its_field_and_rule() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let token = admin.access_token.as_str();
    let mut orders = OrdersServiceClient::new(suite.channel("orders"));
    let product = |amount_minor: i64| pb::Product {
        name: "Tea".into(),
        price: Some(Money {
            amount_minor,
            currency_code: "USD".into(),
        }),
        stock_quantity: 5,
        ..Default::default()
    };

    let cases: Vec<(&str, Result<(), tonic::Status>, &str, &str)> = vec![
        (
            "create product: none",
            orders
                .create_product(authorized(pb::CreateProductRequest { product: None }, token))
                .await
                .map(drop),
            "product",
            "required",
        ),
        (
            "create product: a zero price",
            orders
                .create_product(authorized(
                    pb::CreateProductRequest {
                        product: Some(product(0)),
                    },
                    token,
                ))
                .await
                .map(drop),
            "product.price.amount_minor",
            "int64.gt",
        ),
        (
            "get product: not a UUID",
            orders
                .get_product(authorized(pb::GetProductRequest { product_id: "x".into() }, token))
                .await
                .map(drop),
            "product_id",
            "string.uuid",
        ),
        (
            "list products: a negative page size",
            orders
                .list_products(authorized(
                    pb::ListProductsRequest {
                        page_size: -1,
                        page_token: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "page_size",
            "int32.gte",
        ),
        (
            "get order: not a UUID",
            orders
                .get_order(authorized(pb::GetOrderRequest { order_id: "x".into() }, token))
                .await
                .map(drop),
            "order_id",
            "string.uuid",
        ),
        (
            "ship: not a UUID",
            orders
                .ship_order(authorized(pb::ShipOrderRequest { order_id: "1".into() }, token))
                .await
                .map(drop),
            "order_id",
            "string.uuid",
        ),
    ];
    for (case, result, field, rule) in cases {
        assert_rule(case, result, field, rule);
    }

    // What keeps the rules goes through.
    let created = orders
        .create_product(authorized(
            pb::CreateProductRequest {
                product: Some(product(450)),
            },
            token,
        ))
        .await?;
    assert!(created.into_inner().product.is_some());
    suite.stop().await
}
