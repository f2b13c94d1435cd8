//! Logout, ListSessions and RevokeSession: a user's sessions.

use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    db::paging,
    proto::timestamp,
    serve::audit,
    serve::rpc::{invalid, parse_id},
};
use uuid::Uuid;

use super::Auth;
use crate::{
    domain::OpaqueToken,
    store::{self, SessionRow},
};

pub(super) async fn logout(auth: &Auth, request: pb::LogoutRequest) -> Result<pb::LogoutResponse, Error> {
    let token = OpaqueToken::parse("refresh_token", &request.refresh_token).map_err(invalid)?;
    let mut conn = auth.pool.get().await?;
    if let Some((_, session)) = store::lock_refresh_token(&mut conn, &token.hash()).await?
        && store::revoke_session(&mut conn, session.id, "logout").await?
    {
        audit::revoked(session.user_id, Some(session.id), "logout", 1);
    }
    Ok(pb::LogoutResponse {})
}

pub(super) async fn list(
    auth: &Auth,
    caller: &UserPrincipal,
    request: pb::ListSessionsRequest,
) -> Result<pb::ListSessionsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_token(&request.page_token)?;
    let mut conn = auth.pool.get().await?;
    let rows = store::active_sessions(&mut conn, caller.user_id, before, limit + 1).await?;
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
    let mut conn = auth.pool.get().await?;
    match store::find_session(&mut conn, session_id).await? {
        // Another user's session is reported exactly like a missing one.
        Some(session) if session.user_id == caller.user_id => {
            if store::revoke_session(&mut conn, session.id, "revoked_by_user").await? {
                audit::revoked(session.user_id, Some(session.id), "revoked_by_user", 1);
            }
            Ok(pb::RevokeSessionResponse {})
        }
        _ => Err(Error::not_found("session")),
    }
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
