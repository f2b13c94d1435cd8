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
            "create product: a name of whitespace",
            orders
                .create_product(authorized(
                    pb::CreateProductRequest {
                        product: Some(pb::Product {
                            name: " \t ".into(),
                            ..product(450)
                        }),
                    },
                    token,
                ))
                .await
                .map(drop),
            "product.name",
            "string.pattern",
        ),
        (
            "update product: a mask naming the stock",
            orders
                .update_product(authorized(
                    pb::UpdateProductRequest {
                        product: Some(product(450)),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["stock_quantity".into()],
                        }),
                    },
                    token,
                ))
                .await
                .map(drop),
            "update_mask",
            "field_mask.in",
        ),
        (
            "list products: a page token that is no token",
            orders
                .list_products(authorized(
                    pb::ListProductsRequest {
                        page_size: 0,
                        page_token: "page 2".into(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "page_token",
            "string.pattern",
        ),
        (
            "adjust stock: by zero",
            orders
                .adjust_stock(authorized(
                    pb::AdjustStockRequest {
                        product_id: uuid::Uuid::now_v7().to_string(),
                        delta: 0,
                        request_id: "k".into(),
                        reason: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "delta",
            "int64.not_in",
        ),
        (
            "create order: no lines",
            orders
                .create_order(authorized(
                    pb::CreateOrderRequest {
                        request_id: "k".into(),
                        items: vec![],
                        payment_method: pb::PaymentMethod::AccountBalance as i32,
                        external_payment_method_id: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "items",
            "repeated.min_items",
        ),
        (
            "create order: a line of 1001 units",
            orders
                .create_order(authorized(
                    pb::CreateOrderRequest {
                        request_id: "k".into(),
                        items: vec![pb::create_order_request::LineItem {
                            product_id: uuid::Uuid::now_v7().to_string(),
                            quantity: 1001,
                        }],
                        payment_method: pb::PaymentMethod::AccountBalance as i32,
                        external_payment_method_id: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "items[0].quantity",
            "int32.lte",
        ),
        (
            "create order: a card payment without the card's payment method",
            orders
                .create_order(authorized(
                    pb::CreateOrderRequest {
                        request_id: "k".into(),
                        items: vec![pb::create_order_request::LineItem {
                            product_id: uuid::Uuid::now_v7().to_string(),
                            quantity: 1,
                        }],
                        payment_method: pb::PaymentMethod::External as i32,
                        external_payment_method_id: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "external_payment_method_id",
            "external_payment_method_id.required",
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
