//! Register and VerifyEmail.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    serve::rpc::{collect, invalid},
};

use super::user_pb;
use crate::{
    app::{Auth, ClientInfo},
    domain::{Email, OpaqueToken, Password},
};

/// The longest `request_id` Register takes.
const MAX_REQUEST_ID_BYTES: usize = 128;

pub(super) async fn register(
    auth: &Auth,
    request: pb::RegisterRequest,
    client: &ClientInfo,
) -> Result<pb::RegisterResponse, Error> {
    let (email, password) = collect(
        Email::parse(&request.email),
        Password::parse("password", request.password),
    )?;
    let request_id = match request.request_id.trim() {
        "" => None,
        id if id.len() > MAX_REQUEST_ID_BYTES => {
            return Err(Error::invalid_field(
                "request_id",
                "REQUEST_ID_TOO_LONG",
                format!("must be at most {MAX_REQUEST_ID_BYTES} bytes"),
            ));
        }
        id => Some(id.to_owned()),
    };
    let user = auth.register(&email, &password, request_id, client).await?;
    Ok(pb::RegisterResponse {
        user: Some(user_pb(&user)),
    })
}

pub(super) async fn verify_email(
    auth: &Auth,
    request: pb::VerifyEmailRequest,
) -> Result<pb::VerifyEmailResponse, Error> {
    let token = OpaqueToken::parse("token", &request.token).map_err(invalid)?;
    let user = auth.verify_email(&token).await?;
    Ok(pb::VerifyEmailResponse {
        user: Some(user_pb(&user)),
    })
}
