//! `keel.orders.v1.OrdersService`.
//!
//! The trait impl below only adapts gRPC to the handlers: each reads the
//! caller from the request and hands the message to a function of the
//! resource's module (products, orders, webhooks), which parses it, calls
//! one operation of [`Orders`] and maps its answer back to the proto,
//! returning `Result<_, Error>`.

mod orders;
mod products;
mod webhooks;

use keel::orders::v1::{self as pb, orders_service_server::OrdersService};
use keel_platform::{auth::principal::principal, serve::rpc::Reply};
use tonic::{Request, Response};

use crate::app::Orders;

#[tonic::async_trait]
impl OrdersService for Orders {
    async fn create_product(&self, request: Request<pb::CreateProductRequest>) -> Reply<pb::CreateProductResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(
            products::create_product(self, request.into_inner()).await?,
        ))
    }

    async fn get_product(&self, request: Request<pb::GetProductRequest>) -> Reply<pb::GetProductResponse> {
        principal(&request)?.user()?;
        Ok(Response::new(products::get_product(self, request.into_inner()).await?))
    }

    async fn list_products(&self, request: Request<pb::ListProductsRequest>) -> Reply<pb::ListProductsResponse> {
        principal(&request)?.user()?;
        Ok(Response::new(
            products::list_products(self, request.into_inner()).await?,
        ))
    }

    async fn update_product(&self, request: Request<pb::UpdateProductRequest>) -> Reply<pb::UpdateProductResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(
            products::update_product(self, request.into_inner()).await?,
        ))
    }

    async fn adjust_stock(&self, request: Request<pb::AdjustStockRequest>) -> Reply<pb::AdjustStockResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(products::adjust_stock(self, request.into_inner()).await?))
    }

    async fn create_order(&self, request: Request<pb::CreateOrderRequest>) -> Reply<pb::CreateOrderResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            orders::create_order(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Reply<pb::GetOrderResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            orders::get_order(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_orders(&self, request: Request<pb::ListOrdersRequest>) -> Reply<pb::ListOrdersResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            orders::list_orders(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn cancel_order(&self, request: Request<pb::CancelOrderRequest>) -> Reply<pb::CancelOrderResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            orders::cancel_order(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn ship_order(&self, request: Request<pb::ShipOrderRequest>) -> Reply<pb::ShipOrderResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(orders::ship_order(self, request.into_inner()).await?))
    }

    async fn handle_card_gateway_webhook(
        &self,
        request: Request<pb::HandleCardGatewayWebhookRequest>,
    ) -> Reply<pb::HandleCardGatewayWebhookResponse> {
        // Public: the card gateway signs the body instead of holding a token.
        let signature = webhooks::signature(&request);
        Ok(Response::new(
            webhooks::handle(self, signature.as_deref(), request.into_inner()).await?,
        ))
    }

    async fn deliver_order(&self, request: Request<pb::DeliverOrderRequest>) -> Reply<pb::DeliverOrderResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(orders::deliver_order(self, request.into_inner()).await?))
    }
}
