//! IssueServiceToken and GetJwks: tokens for services, and the keys that
//! verify every token.

use keel::auth::v1 as pb;
use keel_platform::{Error, auth::principal::SERVICE_SUBJECT_PREFIX, proto::timestamp, serve::audit};

use super::{Auth, ClientInfo, throttle::address_key};

pub(super) async fn issue(
    auth: &Auth,
    request: pb::IssueServiceTokenRequest,
    client: &ClientInfo,
) -> Result<pb::IssueServiceTokenResponse, Error> {
    // Per client id and address: a service's own replicas are not held back
    // by someone else presenting its (public) id with wrong secrets. Unknown
    // ids share one count per address.
    let id = match auth.clients.knows(&request.client_id) {
        true => request.client_id.as_str(),
        false => "?",
    };
    // A refusal's log names the client (an unknown id, chosen by the caller,
    // is not repeated).
    audit::record_subject(&format_args!("{SERVICE_SUBJECT_PREFIX}{id}"));
    auth.limit_calls(
        &mut *auth.pool.get().await?,
        &[(
            format!("service_token:{id}@{}", address_key(client.address)),
            auth.call_limits.service_token_per_client,
        )],
    )
    .await?;
    let client = auth
        .clients
        .authenticate(&request.client_id, &request.client_secret)
        .ok_or_else(|| Error::unauthenticated("INVALID_CLIENT", "unknown client id or wrong secret"))?;
    let scopes = client.grant(&request.scopes).map_err(|scope| {
        Error::permission_denied(
            "SCOPE_NOT_ALLOWED",
            format!("client {} may not have scope {scope}", client.id),
        )
    })?;
    let (token, expires) = auth.keys.service_token(&client.id, &scopes).await?;
    Ok(pb::IssueServiceTokenResponse {
        access_token: token,
        expire_time: Some(timestamp(expires)),
        scopes,
    })
}

pub(super) async fn jwks(auth: &Auth, _request: pb::GetJwksRequest) -> Result<pb::GetJwksResponse, Error> {
    Ok(pb::GetJwksResponse {
        keys: auth.keys.jwks().await,
    })
}
