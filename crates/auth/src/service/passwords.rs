//! ChangePassword, RequestPasswordReset and ResetPassword.

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use keel::{
    auth::v1 as pb,
    events::v1::{PasswordResetRequested, event::Payload},
};
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    events::EventType,
    events::outbox,
    proto::timestamp,
    serve::audit,
    serve::rpc::{collect, invalid},
};

use super::{
    Auth, ClientInfo, RESET_TOKEN_TTL, SOURCE, credentials_changed,
    throttle::{LoginSubjects, address_key},
};
use crate::{
    domain::{Email, OpaqueToken, Password},
    password::Verdict,
    store::{self, TokenPurpose},
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
    let mut conn = auth.pool.get().await?;
    let user = store::find_user(&mut conn, caller.user_id)
        .await?
        .ok_or_else(|| Error::not_found("user"))?;
    if user.disabled {
        return Err(Error::unauthenticated("USER_DISABLED", "this account is disabled"));
    }
    let subjects = LoginSubjects::new(&user.email, client.address);
    // Counts as a failure until the password checks out (as at login).
    auth.admit_login(&mut conn, &subjects).await?;
    drop(conn);
    if auth.hasher.verify(&current, Some(&user.password_hash)).await? == Verdict::Invalid {
        return Err(Error::permission_denied(
            "WRONG_PASSWORD",
            "current_password is not the current password",
        ));
    }
    let password_hash = auth.hasher.hash(&new).await?;
    let mut conn = auth.pool.get().await?;
    auth.login_succeeded(&mut conn, &subjects).await?;
    let ended = conn
        .transaction::<_, Error, _>(async |conn| {
            // Only over the password just checked: a concurrent change wins.
            if !store::upgrade_password_hash(conn, user.id, &user.password_hash, &password_hash).await? {
                return Err(credentials_changed());
            }
            Ok(store::revoke_user_sessions(conn, user.id, Some(caller.session_id), "password_changed").await?)
        })
        .await?;
    audit::revoked(user.id, None, "password_changed", ended);
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
    let mut conn = auth.pool.get().await?;
    // Per email whether or not it is registered, so the limit reveals nothing;
    // it caps the mail one inbox can be sent.
    let limits = auth.call_limits;
    auth.limit_calls(
        &mut conn,
        &[
            (format!("reset:email:{}", email.as_str()), limits.reset_per_email),
            (
                format!("reset:address:{}", address_key(client.address)),
                limits.reset_per_address,
            ),
        ],
    )
    .await?;
    let user = store::find_user_by_email(&mut conn, email.as_str()).await?;
    // The answer is the same either way: nobody learns who is registered.
    if let Some(user) = user.filter(|u| !u.disabled) {
        let token = OpaqueToken::generate()?;
        let expires = Utc::now() + RESET_TOKEN_TTL;
        let sealed_token = auth.seal_token(EventType::PasswordResetRequested, user.id, &token)?;
        conn.transaction::<_, Error, _>(async |conn| {
            store::expire_one_time_tokens(conn, user.id, TokenPurpose::PasswordReset).await?;
            store::insert_one_time_token(conn, &token.hash(), user.id, TokenPurpose::PasswordReset, expires).await?;
            outbox::enqueue(
                conn,
                SOURCE,
                Payload::PasswordResetRequested(PasswordResetRequested {
                    user_id: user.id.to_string(),
                    email: user.email.clone(),
                    expire_time: Some(timestamp(expires)),
                    sealed_token,
                }),
            )
            .await?;
            Ok(())
        })
        .await?;
    }
    Ok(pb::RequestPasswordResetResponse {})
}

pub(super) async fn reset(auth: &Auth, request: pb::ResetPasswordRequest) -> Result<pb::ResetPasswordResponse, Error> {
    let (token, password) = collect(
        OpaqueToken::parse("token", &request.token),
        Password::parse("new_password", request.new_password),
    )?;
    let invalid_token = || Error::unauthenticated("INVALID_TOKEN", "the reset token is unknown, used or expired");
    let hash = token.hash();
    let mut conn = auth.pool.get().await?;
    // Hash only for a live token, outside the transaction.
    store::peek_one_time_token(&mut conn, &hash, TokenPurpose::PasswordReset)
        .await?
        .ok_or_else(invalid_token)?;
    // No connection is held while hashing.
    drop(conn);
    let password_hash = auth.hasher.hash(&password).await?;
    let mut conn = auth.pool.get().await?;
    let (user_id, ended) = conn
        .transaction::<_, Error, _>(async |conn| {
            let user_id = store::use_one_time_token(conn, &hash, TokenPurpose::PasswordReset)
                .await?
                .ok_or_else(invalid_token)?;
            let user = store::find_user(conn, user_id)
                .await?
                .ok_or_else(|| Error::not_found("user"))?;
            store::set_password_hash(conn, user_id, &password_hash).await?;
            let ended = store::revoke_user_sessions(conn, user_id, None, "password_reset").await?;
            // Whoever guessed at the old password, the owner is back in charge:
            // their failures no longer hold the account back.
            Auth::clear_login_failures(conn, &user.email).await?;
            Ok((user_id, ended))
        })
        .await?;
    audit::revoked(user_id, None, "password_reset", ended);
    Ok(pb::ResetPasswordResponse {})
}
