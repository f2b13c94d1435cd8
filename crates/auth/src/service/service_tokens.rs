//! IssueServiceToken and GetJwks: tokens for services, and the keys that
//! verify every token.

use keel::auth::v1 as pb;
use keel_platform::{Error, proto::timestamp};

use super::Auth;

pub(super) async fn issue(
    auth: &Auth,
    request: pb::IssueServiceTokenRequest,
) -> Result<pb::IssueServiceTokenResponse, Error> {
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
