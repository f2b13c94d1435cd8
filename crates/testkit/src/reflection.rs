//! What a port lists through gRPC server reflection, in both versions that
//! tools speak (grpcurl and older tools ask v1alpha).

use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

/// `async fn $name(channel) -> the services reflection version $version
/// lists`. The two versions are the same protocol in two generated packages.
macro_rules! list_services {
    ($name:ident, $version:ident) => {
        #[doc = concat!("The services that reflection ", stringify!($version), " lists at `channel`.")]
        pub async fn $name(channel: Channel) -> anyhow::Result<Vec<String>> {
            use $version::{server_reflection_request::MessageRequest, server_reflection_response::MessageResponse};
            let mut client = $version::server_reflection_client::ServerReflectionClient::new(channel);
            let request = $version::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = client
                .server_reflection_info(tokio_stream::once(request))
                .await?
                .into_inner();
            let response = responses
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("no reflection answer"))?;
            match response.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                    names.sort();
                    Ok(names)
                }
                other => anyhow::bail!("unexpected reflection answer: {other:?}"),
            }
        }
    };
}

list_services!(list_services_v1, v1);
list_services!(list_services_v1alpha, v1alpha);

/// `async fn $name(channel, symbol)`: the file that defines `symbol`, as
/// reflection version `$version` serves it (an error if it cannot).
macro_rules! describe {
    ($name:ident, $version:ident) => {
        #[doc = concat!("Resolves `symbol` through reflection ", stringify!($version), " at `channel`.")]
        pub async fn $name(channel: Channel, symbol: &str) -> anyhow::Result<()> {
            use $version::{server_reflection_request::MessageRequest, server_reflection_response::MessageResponse};
            let mut client = $version::server_reflection_client::ServerReflectionClient::new(channel);
            let request = $version::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
            };
            let mut responses = client
                .server_reflection_info(tokio_stream::once(request))
                .await?
                .into_inner();
            let response = responses
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("no reflection answer"))?;
            match response.message_response {
                Some(MessageResponse::FileDescriptorResponse(files)) if !files.file_descriptor_proto.is_empty() => {
                    Ok(())
                }
                other => anyhow::bail!("{symbol} does not resolve: {other:?}"),
            }
        }
    };
}

describe!(describe_v1, v1);
describe!(describe_v1alpha, v1alpha);
