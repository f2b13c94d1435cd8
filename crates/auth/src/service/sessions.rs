//! Logout, ListSessions and RevokeSession: a user's sessions.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    db::paging,
    proto::timestamp,
    serve::rpc::{invalid, parse_id},
};
use uuid::Uuid;

use crate::{app::Auth, domain::OpaqueToken, store::sessions::SessionRow};

pub(super) async fn logout(auth: &Auth, request: pb::LogoutRequest) -> Result<pb::LogoutResponse, Error> {
    let token = OpaqueToken::parse("refresh_token", &request.refresh_token).map_err(invalid)?;
    auth.logout(&token).await?;
    Ok(pb::LogoutResponse {})
}

pub(super) async fn list(
    auth: &Auth,
    caller: &UserPrincipal,
    request: pb::ListSessionsRequest,
) -> Result<pb::ListSessionsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_token(&request.page_token)?;
    // One more than a page: whether there is a next one.
    let rows = auth.list_sessions(caller.user_id, before, limit + 1).await?;
    let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
    Ok(pb::ListSessionsResponse {
        sessions: page.iter().map(|s| session_pb(s, caller.session_id)).collect(),
        next_page_token,
    })
}

pub(super) async fn revoke(
    auth: &Auth,
    caller: &UserPrincipal,
    request: pb::RevokeSessionRequest,
) -> Result<pb::RevokeSessionResponse, Error> {
    let session_id = parse_id("session_id", &request.session_id)?;
    auth.revoke_session(caller.user_id, session_id).await?;
    Ok(pb::RevokeSessionResponse {})
}

fn session_pb(session: &SessionRow, current: Uuid) -> pb::Session {
    pb::Session {
        id: session.id.to_string(),
        create_time: Some(timestamp(session.created_at)),
        last_use_time: Some(timestamp(session.last_used_at)),
        expire_time: Some(timestamp(session.expires_at)),
        user_agent: session.user_agent.clone(),
        client_address: session.client_address.clone(),
        current: session.id == current,
    }
}
