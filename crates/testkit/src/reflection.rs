//! What a port offers through gRPC server reflection, in both versions that
//! tools speak (grpcurl and older tools ask v1alpha).

use tonic::transport::Channel;

/// For reflection version `$version`: `$list(channel)`, the services it
/// lists (sorted), and `$describe(channel, symbol)`, which fails unless the
/// file defining `symbol` resolves. The two versions are the same protocol in
/// two generated packages, so one body serves both.
macro_rules! reflection {
    ($version:ident, $module:ident, $list:ident, $describe:ident) => {
        mod $module {
            use pb::{server_reflection_request::MessageRequest, server_reflection_response::MessageResponse};
            use tonic::transport::Channel;
            use tonic_reflection::pb::$version as pb;

            /// Sends one request and returns its one answer.
            async fn ask(channel: Channel, request: MessageRequest) -> anyhow::Result<MessageResponse> {
                let mut client = pb::server_reflection_client::ServerReflectionClient::new(channel);
                let request = pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                };
                let mut responses = client
                    .server_reflection_info(tokio_stream::once(request))
                    .await?
                    .into_inner();
                responses
                    .message()
                    .await?
                    .and_then(|response| response.message_response)
                    .ok_or_else(|| anyhow::anyhow!("no reflection answer"))
            }

            pub(super) async fn list(channel: Channel) -> anyhow::Result<Vec<String>> {
                match ask(channel, MessageRequest::ListServices(String::new())).await? {
                    MessageResponse::ListServicesResponse(list) => {
                        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                        names.sort();
                        Ok(names)
                    }
                    other => anyhow::bail!("unexpected reflection answer: {other:?}"),
                }
            }

            pub(super) async fn describe(channel: Channel, symbol: &str) -> anyhow::Result<()> {
                match ask(channel, MessageRequest::FileContainingSymbol(symbol.to_owned())).await? {
                    MessageResponse::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty() => Ok(()),
                    other => anyhow::bail!("{symbol} does not resolve: {other:?}"),
                }
            }
        }

        #[doc = concat!("The services that reflection ", stringify!($version), " lists at `channel`, sorted.")]
        pub async fn $list(channel: Channel) -> anyhow::Result<Vec<String>> {
            $module::list(channel).await
        }

        #[doc = concat!("Resolves `symbol` through reflection ", stringify!($version), " at `channel`.")]
        pub async fn $describe(channel: Channel, symbol: &str) -> anyhow::Result<()> {
            $module::describe(channel, symbol).await
        }
    };
}

reflection!(v1, asked_v1, list_services_v1, describe_v1);
reflection!(v1alpha, asked_v1alpha, list_services_v1alpha, describe_v1alpha);
