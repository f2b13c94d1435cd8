//! The README's orders flow through the gateway: REST/JSON routes come from
//! the contract's annotations, errors carry their reason.

use crate::common;

use common::fixture;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_orders_cancels_and_gets_the_refund_through_the_gateway() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let gateway = fx.suite.spawn_gateway(&[]).await?;
    let http = gateway.http();
    let admin = Some(fx.admin.as_str());

    let created = http
        .post(
            "/v1/products",
            admin,
            &json!({"name": "Green tea", "price": {"amountMinor": "450", "currencyCode": "USD"}, "stockQuantity": "10"}),
        )
        .await?;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json());
    let tea = created.json()["product"]["id"].as_str().unwrap_or_default().to_owned();
    let renamed = http
        .json(
            Method::PATCH,
            &format!("/v1/products/{tea}?updateMask=name"),
            admin,
            &json!({"name": "Sencha"}),
        )
        .await?;
    assert_eq!(renamed.json()["product"]["name"], "Sencha");

    let buyer = fx.buyer(2_000).await?;
    let token = Some(buyer.token.as_str());
    let order = http
        .post(
            "/v1/orders",
            token,
            &json!({"requestId": "gw-1", "items": [{"productId": tea, "quantity": 3}], "paymentMethod": "PAYMENT_METHOD_ACCOUNT_BALANCE"}),
        )
        .await?;
    assert_eq!(order.status, StatusCode::OK, "{:?}", order.json());
    let order = order.json()["order"].clone();
    assert_eq!(order["status"], "ORDER_STATUS_PAID");
    assert_eq!(order["total"]["amountMinor"], "1350");
    assert_eq!(order["items"][0]["productName"], "Sencha");
    let id = order["id"].as_str().unwrap_or_default().to_owned();
    let balance = http.get("/v1/accounts/me/balance", token).await?.json();
    assert_eq!(balance["balance"]["balance"]["amountMinor"], "650");
    let listed = http.get("/v1/orders?status=ORDER_STATUS_PAID", token).await?.json();
    assert_eq!(listed["orders"][0]["id"], id.as_str());

    let short = http
        .post(
            "/v1/orders",
            token,
            &json!({"requestId": "gw-2", "items": [{"productId": tea, "quantity": 8}], "paymentMethod": "PAYMENT_METHOD_ACCOUNT_BALANCE"}),
        )
        .await?;
    // FAILED_PRECONDITION: well-formed, refused by the state of things.
    assert_eq!(short.status, StatusCode::CONFLICT);
    assert_eq!(short.json()["details"][0]["reason"], "INSUFFICIENT_STOCK");

    let other = fx.buyer(0).await?;
    let hidden = http
        .get(&format!("/v1/orders/{id}"), Some(other.token.as_str()))
        .await?;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    let cancelled = http
        .post(
            &format!("/v1/orders/{id}:cancel"),
            token,
            &json!({"requestId": "gw-cancel"}),
        )
        .await?;
    assert_eq!(cancelled.json()["order"]["status"], "ORDER_STATUS_CANCELLED");
    let balance = http.get("/v1/accounts/me/balance", token).await?.json();
    assert_eq!(balance["balance"]["balance"]["amountMinor"], "2000");
    let product = http.get(&format!("/v1/products/{tea}"), token).await?.json();
    assert_eq!(product["product"]["stockQuantity"], "10");

    let restocked = http
        .post(
            &format!("/v1/products/{tea}:adjustStock"),
            admin,
            &json!({"delta": "5", "requestId": "restock-1"}),
        )
        .await?;
    assert_eq!(restocked.json()["product"]["stockQuantity"], "15");
    let by_user = http.post(&format!("/v1/orders/{id}:ship"), token, &json!({})).await?;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);
    gateway.stop().await?;
    fx.check_invariants().await
}
