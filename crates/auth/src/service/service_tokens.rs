//! IssueServiceToken and GetJwks: tokens for services, and the keys that
//! verify every token.

use keel::auth::v1 as pb;
use keel_platform::{Error, proto::timestamp};
use secrecy::{ExposeSecret as _, SecretString};

use crate::app::{Auth, ClientInfo};

pub(super) async fn issue(
    auth: &Auth,
    request: pb::IssueServiceTokenRequest,
    client: &ClientInfo,
) -> Result<pb::IssueServiceTokenResponse, Error> {
    let secret = SecretString::from(request.client_secret);
    let token = auth
        .issue_service_token(&request.client_id, &secret, &request.scopes, client)
        .await?;
    Ok(pb::IssueServiceTokenResponse {
        access_token: token.access_token.expose_secret().to_owned(),
        expire_time: Some(timestamp(token.expires)),
        scopes: token.scopes,
    })
}

pub(super) async fn jwks(auth: &Auth, _request: pb::GetJwksRequest) -> Result<pb::GetJwksResponse, Error> {
    Ok(pb::GetJwksResponse {
        keys: auth.jwks().await,
    })
}
