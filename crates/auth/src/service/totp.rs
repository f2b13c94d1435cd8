//! EnrollTotp, ConfirmTotp and DisableTotp: the caller's TOTP second factor.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    serve::rpc::{collect, invalid},
};
use secrecy::ExposeSecret as _;

use crate::{
    app::{Auth, ClientInfo},
    domain::{Password, SecondFactor, TotpCode},
};

pub(super) async fn enroll(
    auth: &Auth,
    caller: &UserPrincipal,
    _request: pb::EnrollTotpRequest,
) -> Result<pb::EnrollTotpResponse, Error> {
    let enrollment = auth.enroll_totp(caller).await?;
    Ok(pb::EnrollTotpResponse {
        secret: enrollment.secret.expose_secret().to_owned(),
        otpauth_uri: enrollment.uri.expose_secret().to_owned(),
    })
}

pub(super) async fn confirm(
    auth: &Auth,
    caller: &UserPrincipal,
    request: pb::ConfirmTotpRequest,
    client: &ClientInfo,
) -> Result<pb::ConfirmTotpResponse, Error> {
    let code = TotpCode::parse("code", &request.code).map_err(invalid)?;
    let recovery_codes = auth.confirm_totp(caller, &code, client).await?;
    Ok(pb::ConfirmTotpResponse {
        recovery_codes: recovery_codes.iter().map(|code| code.display()).collect(),
    })
}

pub(super) async fn disable(
    auth: &Auth,
    caller: &UserPrincipal,
    request: pb::DisableTotpRequest,
    client: &ClientInfo,
) -> Result<pb::DisableTotpResponse, Error> {
    use pb::disable_totp_request::Factor;
    let (code, recovery_code) = match &request.factor {
        Some(Factor::Code(code)) => (Some(code.as_str()), None),
        Some(Factor::RecoveryCode(recovery)) => (None, Some(recovery.as_str())),
        None => (None, None),
    };
    let (password, proof) = collect(
        Password::for_check("password", request.password),
        SecondFactor::parse(code, recovery_code),
    )?;
    auth.disable_totp(caller, &password, &proof, client).await?;
    Ok(pb::DisableTotpResponse {})
}
