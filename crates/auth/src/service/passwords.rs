//! ChangePassword, RequestPasswordReset and ResetPassword.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    serve::rpc::{collect, invalid},
};

use crate::{
    app::{Auth, ClientInfo},
    domain::{Email, OpaqueToken, Password},
};

pub(super) async fn change(
    auth: &Auth,
    caller: &UserPrincipal,
    request: pb::ChangePasswordRequest,
    client: &ClientInfo,
) -> Result<pb::ChangePasswordResponse, Error> {
    let (current, new) = collect(
        Password::for_check("current_password", request.current_password),
        Password::parse("new_password", request.new_password),
    )?;
    let ended = auth.change_password(caller, &current, &new, client).await?;
    Ok(pb::ChangePasswordResponse {
        ended_session_count: i32::try_from(ended).unwrap_or(i32::MAX),
    })
}

pub(super) async fn request_reset(
    auth: &Auth,
    request: pb::RequestPasswordResetRequest,
    client: &ClientInfo,
) -> Result<pb::RequestPasswordResetResponse, Error> {
    let email = Email::parse(&request.email).map_err(invalid)?;
    auth.request_password_reset(&email, client).await?;
    Ok(pb::RequestPasswordResetResponse {})
}

pub(super) async fn reset(auth: &Auth, request: pb::ResetPasswordRequest) -> Result<pb::ResetPasswordResponse, Error> {
    let (token, password) = collect(
        OpaqueToken::parse("token", &request.token),
        Password::parse("new_password", request.new_password),
    )?;
    auth.reset_password(&token, &password).await?;
    Ok(pb::ResetPasswordResponse {})
}
