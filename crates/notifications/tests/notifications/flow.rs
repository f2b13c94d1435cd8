//! The whole flow: an order paid reaches the buyer's inbox, mailbox and
//! webhook endpoint, each once.

use crate::common;

use std::time::Duration;

use common::fixture;
use keel::{
    common::v1::Money,
    notifications::v1 as pb,
    orders::v1::{self as orders_pb, orders_service_client::OrdersServiceClient},
};
use keel_testkit::{authorized, webhook_receiver::WebhookReceiver};

#[tokio::test(flavor = "multi_thread")]
async fn an_order_paid_reaches_the_inbox_the_mailbox_and_the_webhook_each_once() -> anyhow::Result<()> {
    let f = fixture().await?;
    let receiver = WebhookReceiver::start().await?;
    let buyer = f.user().await?;
    f.mail_to(&buyer.email, 2).await?;
    f.deposit(&buyer, 10_000).await?;
    let (_, secret) = {
        let created = f
            .notifications()
            .create_webhook_endpoint(authorized(
                pb::CreateWebhookEndpointRequest {
                    webhook_endpoint: Some(pb::WebhookEndpoint {
                        url: receiver.url("/orders"),
                        event_types: vec!["order.paid".into()],
                        ..Default::default()
                    }),
                },
                &buyer.token,
            ))
            .await?
            .into_inner();
        (created.webhook_endpoint, created.signing_secret)
    };

    let mut orders = OrdersServiceClient::new(f.suite.channel("orders"));
    let product = orders
        .create_product(authorized(
            orders_pb::CreateProductRequest {
                product: Some(orders_pb::Product {
                    name: "Kettle".into(),
                    price: Some(Money {
                        amount_minor: 2_500,
                        currency_code: "USD".into(),
                    }),
                    stock_quantity: 5,
                    ..Default::default()
                }),
            },
            &f.admin,
        ))
        .await?
        .into_inner()
        .product
        .expect("a product");
    let order = orders
        .create_order(authorized(
            orders_pb::CreateOrderRequest {
                request_id: uuid::Uuid::now_v7().to_string(),
                items: vec![orders_pb::create_order_request::LineItem {
                    product_id: product.id.clone(),
                    quantity: 2,
                }],
                payment_method: orders_pb::PaymentMethod::AccountBalance as i32,
                external_payment_method_id: String::new(),
            },
            &buyer.token,
        ))
        .await?
        .into_inner()
        .order
        .expect("an order");
    assert_eq!(order.status, orders_pb::OrderStatus::Paid as i32);

    let inbox = f.inbox_of(&buyer, "order.paid", 1).await?;
    assert!(inbox[0].body.contains(&order.id) || inbox[0].title.contains("50.00") || inbox[0].body.contains("50.00"));
    let webhook = receiver.wait_for(1, common::PATIENCE).await?;
    assert!(webhook[0].signed_with(&secret));
    let body = webhook[0].json();
    assert_eq!(body["type"], "order.paid");
    assert_eq!(body["data"]["orderId"], order.id);
    let paid_mail = common::eventually("the order.paid mail", || async {
        Ok(f.smtp
            .messages()
            .into_iter()
            .find(|m| m.to.contains(&buyer.email) && m.text_body().unwrap_or_default().contains(&order.id)))
    })
    .await?;
    assert!(paid_mail.header("List-Unsubscribe").is_some());

    // Each once: give duplicates the time to show up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(f.inbox_of(&buyer, "order.paid", 1).await?.len(), 1);
    assert_eq!(receiver.received().len(), 1, "only order.paid was subscribed");
    let paid_mails = f
        .smtp
        .messages()
        .into_iter()
        .filter(|m| {
            m.to.contains(&buyer.email)
                && m.text_body().unwrap_or_default().contains(&order.id)
                && m.text_body().unwrap_or_default().to_lowercase().contains("paid")
        })
        .count();
    assert_eq!(paid_mails, 1);
    Ok(())
}
