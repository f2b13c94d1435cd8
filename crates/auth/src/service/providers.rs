//! ListIdentityProviders, StartProviderSignIn, FinishProviderSignIn,
//! ExchangeSignInCode, ListLinkedIdentities and UnlinkIdentity: sign-in with
//! identity providers.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    proto::timestamp,
    serve::rpc::{invalid, parse_id},
};
use uuid::Uuid;

use super::login::login_response;
use crate::{
    app::{
        Auth, ClientInfo,
        providers::{Callback, Finished, Link},
    },
    domain::{OpaqueToken, Password},
    store::identities::IdentityRow,
};

pub(super) fn list_providers(auth: &Auth) -> pb::ListIdentityProvidersResponse {
    pb::ListIdentityProvidersResponse {
        providers: auth
            .identity_providers()
            .map(|provider| pb::IdentityProvider {
                id: provider.id.clone(),
                display_name: provider.display_name.clone(),
                issuer: provider.issuer.as_str().trim_end_matches('/').to_owned(),
            })
            .collect(),
    }
}

/// `caller`: the signed-in user, when the call carried a token (linking
/// needs one).
pub(super) async fn start(
    auth: &Auth,
    caller: Option<Uuid>,
    request: pb::StartProviderSignInRequest,
) -> Result<pb::StartProviderSignInResponse, Error> {
    let link = if request.link {
        let user_id = caller
            .ok_or_else(|| Error::unauthenticated("MISSING_TOKEN", "linking needs the signed-in user's token"))?;
        let password = if request.password.is_empty() {
            None
        } else {
            Some(Password::for_check("password", request.password).map_err(invalid)?)
        };
        Some((user_id, password))
    } else {
        None
    };
    let started = auth
        .start_provider_sign_in(
            &request.provider,
            &request.return_url,
            &request.code_challenge,
            link.as_ref().map(|(user_id, password)| Link {
                user_id: *user_id,
                password: password.as_ref(),
            }),
        )
        .await?;
    Ok(pb::StartProviderSignInResponse {
        authorization_url: started.authorization_url,
        browser_binding: started.browser_binding.expose().to_owned(),
        expire_time: Some(timestamp(started.expires)),
    })
}

pub(super) async fn finish(
    auth: &Auth,
    request: pb::FinishProviderSignInRequest,
) -> Result<pb::FinishProviderSignInResponse, Error> {
    let given = |value: &str| Some(value.to_owned()).filter(|v| !v.is_empty());
    let (code, error, iss) = (given(&request.code), given(&request.error), given(&request.iss));
    let finished = auth
        .finish_provider_sign_in(Callback {
            provider: &request.provider,
            state: &request.state,
            code: code.as_deref(),
            error: error.as_deref(),
            iss: iss.as_deref(),
            browser_binding: &request.browser_binding,
        })
        .await?;
    Ok(match finished {
        Finished::SignedIn { return_url, code } => pb::FinishProviderSignInResponse {
            return_url,
            sign_in_code: code.expose().to_owned(),
            ..Default::default()
        },
        Finished::Refused {
            return_url,
            reason,
            description,
        } => pb::FinishProviderSignInResponse {
            return_url,
            error: reason.to_owned(),
            error_description: description,
            ..Default::default()
        },
    })
}

pub(super) async fn exchange(
    auth: &Auth,
    request: pb::ExchangeSignInCodeRequest,
    client: &ClientInfo,
) -> Result<pb::ExchangeSignInCodeResponse, Error> {
    let code = OpaqueToken::parse("code", &request.code).map_err(invalid)?;
    let answer = login_response(
        auth.exchange_sign_in_code(&code, &request.code_verifier, client)
            .await?,
    );
    Ok(pb::ExchangeSignInCodeResponse {
        user: answer.user,
        tokens: answer.tokens,
        second_factor_challenge: answer.second_factor_challenge,
    })
}

pub(super) async fn list_identities(auth: &Auth, user_id: Uuid) -> Result<pb::ListLinkedIdentitiesResponse, Error> {
    Ok(pb::ListLinkedIdentitiesResponse {
        identities: auth
            .linked_identities(user_id)
            .await?
            .into_iter()
            .map(identity_pb)
            .collect(),
    })
}

pub(super) async fn unlink(
    auth: &Auth,
    user_id: Uuid,
    request: pb::UnlinkIdentityRequest,
) -> Result<pb::UnlinkIdentityResponse, Error> {
    let identity_id = parse_id("identity_id", &request.identity_id)?;
    auth.unlink_identity(user_id, identity_id).await?;
    Ok(pb::UnlinkIdentityResponse {})
}

fn identity_pb(row: IdentityRow) -> pb::LinkedIdentity {
    pb::LinkedIdentity {
        id: row.id.to_string(),
        provider: row.provider,
        issuer: row.issuer,
        subject: row.subject,
        email: row.email.unwrap_or_default(),
        create_time: Some(timestamp(row.created_at)),
        last_sign_in_time: Some(timestamp(row.last_sign_in_at)),
    }
}
