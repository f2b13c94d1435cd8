//! Login and Refresh.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    proto::timestamp,
    serve::rpc::{collect, invalid},
};
use secrecy::ExposeSecret as _;

use super::user_pb;
use crate::{
    app::{Auth, ClientInfo, Tokens},
    domain::{Email, OpaqueToken, Password},
};

pub(super) async fn login(
    auth: &Auth,
    request: pb::LoginRequest,
    client: &ClientInfo,
) -> Result<pb::LoginResponse, Error> {
    let (email, password) = collect(
        Email::parse(&request.email),
        Password::for_check("password", request.password),
    )?;
    let signed_in = auth.login(&email, &password, client).await?;
    Ok(pb::LoginResponse {
        user: Some(user_pb(&signed_in.user)),
        tokens: Some(token_pair(&signed_in.tokens)),
    })
}

pub(super) async fn refresh(auth: &Auth, request: pb::RefreshRequest) -> Result<pb::RefreshResponse, Error> {
    let presented = OpaqueToken::parse("refresh_token", &request.refresh_token).map_err(invalid)?;
    let tokens = auth.refresh(&presented).await?;
    Ok(pb::RefreshResponse {
        tokens: Some(token_pair(&tokens)),
    })
}

fn token_pair(tokens: &Tokens) -> pb::TokenPair {
    pb::TokenPair {
        access_token: tokens.access_token.expose_secret().to_owned(),
        access_token_expire_time: Some(timestamp(tokens.access_expires)),
        refresh_token: tokens.refresh_token.expose().to_owned(),
        refresh_token_expire_time: Some(timestamp(tokens.refresh_expires)),
        token_type: "Bearer".into(),
        session_id: tokens.session_id.to_string(),
    }
}
