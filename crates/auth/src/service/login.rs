//! Login, VerifySecondFactor (a login's second half, for a user with a
//! second factor) and Refresh.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    proto::timestamp,
    serve::rpc::{collect, invalid},
};
use secrecy::ExposeSecret as _;

use super::user_pb;
use crate::{
    app::{Auth, ClientInfo, SignIn, SignedIn, Tokens},
    domain::{Email, OpaqueToken, Password, SecondFactor},
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
    Ok(login_response(auth.login(&email, &password, client).await?))
}

/// What every sign-in answers: the user and their tokens, or the challenge
/// that asks for their second factor.
pub(super) fn login_response(sign_in: SignIn) -> pb::LoginResponse {
    match sign_in {
        SignIn::Complete(signed_in) => pb::LoginResponse {
            user: Some(user_pb(&signed_in.user)),
            tokens: Some(token_pair(&signed_in.tokens)),
            second_factor_challenge: None,
        },
        SignIn::Challenged(challenge) => pb::LoginResponse {
            user: None,
            tokens: None,
            second_factor_challenge: Some(pb::SecondFactorChallenge {
                challenge_token: challenge.token.expose().to_owned(),
                expire_time: Some(timestamp(challenge.expires)),
            }),
        },
    }
}

pub(super) async fn verify_second_factor(
    auth: &Auth,
    request: pb::VerifySecondFactorRequest,
    client: &ClientInfo,
) -> Result<pb::VerifySecondFactorResponse, Error> {
    use pb::verify_second_factor_request::Factor;
    let (code, recovery_code) = match &request.factor {
        Some(Factor::Code(code)) => (Some(code.as_str()), None),
        Some(Factor::RecoveryCode(recovery)) => (None, Some(recovery.as_str())),
        None => (None, None),
    };
    let (challenge, proof) = collect(
        OpaqueToken::parse("challenge_token", &request.challenge_token),
        SecondFactor::parse(code, recovery_code),
    )?;
    let SignedIn { user, tokens } = auth.verify_second_factor(&challenge, &proof, client).await?;
    Ok(pb::VerifySecondFactorResponse {
        user: Some(user_pb(&user)),
        tokens: Some(token_pair(&tokens)),
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
