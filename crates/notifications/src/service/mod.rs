//! `keel.notifications.v1.NotificationsService` and the notifications
//! EventSink.
//!
//! The trait impls below only adapt gRPC to the handlers: each reads the
//! caller from the request and hands the message to a function of the
//! resource's module, which reads it, calls the operation of [`crate::app`]
//! and shapes the answer, returning `Result<_, Error>`.

mod dead_letters;
mod event_sink;
mod inbox;
mod preferences;
mod webhook_endpoints;

use keel::{
    events::v1::{DeliverRequest, DeliverResponse, event_sink_server::EventSink},
    notifications::v1::{self as pb, notifications_service_server::NotificationsService},
};
use keel_platform::{
    auth::{lifetime::verified, principal::principal},
    events,
    serve::rpc::Reply,
};
use tonic::{Request, Response};

pub use inbox::NotificationStream;

use crate::{app::Notifications, domain};

#[tonic::async_trait]
impl NotificationsService for Notifications {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Reply<pb::ListNotificationsResponse> {
        let user_id = principal(&request)?.user()?.user_id;
        Ok(Response::new(
            inbox::list_notifications(self, user_id, request.into_inner()).await?,
        ))
    }

    async fn mark_read(&self, request: Request<pb::MarkReadRequest>) -> Reply<pb::MarkReadResponse> {
        let user_id = principal(&request)?.user()?.user_id;
        Ok(Response::new(
            inbox::mark_read(self, user_id, request.into_inner()).await?,
        ))
    }

    type StreamNotificationsStream = NotificationStream;

    async fn stream_notifications(
        &self,
        request: Request<pb::StreamNotificationsRequest>,
    ) -> Reply<Self::StreamNotificationsStream> {
        let token = verified(&request)?.clone();
        let user_id = token.principal().user()?.user_id;
        Ok(Response::new(
            inbox::stream_notifications(self, user_id, token, request.into_inner()).await?,
        ))
    }

    async fn unsubscribe(&self, request: Request<pb::UnsubscribeRequest>) -> Reply<pb::UnsubscribeResponse> {
        Ok(Response::new(
            preferences::unsubscribe(self, request.into_inner()).await?,
        ))
    }

    async fn get_preferences(&self, request: Request<pb::GetPreferencesRequest>) -> Reply<pb::GetPreferencesResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            preferences::get_preferences(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Reply<pb::UpdatePreferencesResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            preferences::update_preferences(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Reply<pb::CreateWebhookEndpointResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            webhook_endpoints::create_webhook_endpoint(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn rotate_webhook_endpoint_secret(
        &self,
        request: Request<pb::RotateWebhookEndpointSecretRequest>,
    ) -> Reply<pb::RotateWebhookEndpointSecretResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            webhook_endpoints::rotate_webhook_endpoint_secret(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Reply<pb::ListWebhookEndpointsResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            webhook_endpoints::list_webhook_endpoints(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Reply<pb::DeleteWebhookEndpointResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            webhook_endpoints::delete_webhook_endpoint(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Reply<pb::ListDeadLettersResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(
            dead_letters::list_dead_letters(self, request.into_inner()).await?,
        ))
    }

    async fn redeliver_dead_letter(
        &self,
        request: Request<pb::RedeliverDeadLetterRequest>,
    ) -> Reply<pb::RedeliverDeadLetterResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(
            dead_letters::redeliver_dead_letter(self, request.into_inner()).await?,
        ))
    }
}

#[tonic::async_trait]
impl EventSink for Notifications {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Reply<DeliverResponse> {
        let delivery = events::delivery(request, &self.event_producers)?;
        let span = delivery.consume_span(domain::NAME);
        Ok(Response::new(
            tracing::Instrument::instrument(event_sink::deliver(self, delivery), span).await?,
        ))
    }
}
