//! The auth service over gRPC, as a verifier reads it: its published keys
//! and its revocations.

use futures::{StreamExt as _, future::BoxFuture};
use keel::auth::v1::{GetJwksRequest, WatchRevocationsRequest, auth_service_client::AuthServiceClient};

use crate::auth::{
    revocations::{RevocationSource, RevocationStream},
    verifier::{KeySource, KeysFuture},
};

/// Fetches the JWKS from the auth service and follows its revocations.
#[derive(Debug, Clone)]
pub struct GrpcKeySource {
    channel: tonic::transport::Channel,
}

impl GrpcKeySource {
    /// A source that asks auth at `channel`.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self { channel }
    }
}

impl KeySource for GrpcKeySource {
    fn fetch(&self) -> KeysFuture<'_> {
        Box::pin(async move {
            let mut client = AuthServiceClient::new(self.channel.clone());
            let response = client.get_jwks(GetJwksRequest {}).await?;
            Ok(response.into_inner().keys)
        })
    }
}

impl RevocationSource for GrpcKeySource {
    fn watch(&self) -> BoxFuture<'_, anyhow::Result<RevocationStream>> {
        Box::pin(async move {
            let mut client = AuthServiceClient::new(self.channel.clone());
            let stream = client.watch_revocations(WatchRevocationsRequest {}).await?.into_inner();
            let batches = stream.map(|batch| Ok(batch?.revocations));
            Ok(batches.boxed())
        })
    }
}
