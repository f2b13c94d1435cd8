//! The sign-in journey, black box, through the typed stubs: register, log in,
//! refresh, detect a replayed refresh token, log out.

use keel::auth::v1::{self as pb, GetJwksRequest, ListSessionsRequest, LogoutRequest, RefreshRequest};
use keel_testkit::{authorized, spawn_suite};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn register_login_refresh_reuse_logout() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let mut auth = suite.auth();

    let user = auth
        .register(pb::RegisterRequest {
            request_id: "journey-1".into(),
            email: "Journey@Example.com".into(),
            password: "a long enough passphrase".into(),
        })
        .await?
        .into_inner()
        .user
        .expect("a user");
    assert_eq!(user.email, "journey@example.com");

    let login = auth
        .login(pb::LoginRequest {
            email: "journey@example.com".into(),
            password: "a long enough passphrase".into(),
        })
        .await?
        .into_inner();
    let first = login.tokens.expect("tokens");
    assert_eq!(login.user.expect("user").id, user.id);

    // The access token's key is published, and it opens authenticated calls.
    let kid = jsonwebtoken::decode_header(&first.access_token)?.kid.expect("a kid");
    let jwks = auth.get_jwks(GetJwksRequest {}).await?.into_inner();
    assert!(jwks.keys.iter().any(|k| k.kid == kid));
    let sessions = auth
        .list_sessions(authorized(ListSessionsRequest::default(), &first.access_token))
        .await?
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current);

    // Refresh rotates the refresh token.
    let second = auth
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await?
        .into_inner()
        .tokens
        .expect("tokens");
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);

    // Replaying the spent token is refused and ends the family...
    let replay = auth
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .expect_err("a spent token is refused");
    assert_eq!(replay.code(), Code::Unauthenticated);
    // ...so even the fresh token of that family no longer works.
    let fresh = auth
        .refresh(RefreshRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .expect_err("the family is revoked");
    assert_eq!(fresh.code(), Code::Unauthenticated);

    // A new session, then logout ends it.
    let third = suite
        .login("journey@example.com", "a long enough passphrase")
        .await?
        .tokens
        .expect("tokens");
    auth.logout(LogoutRequest {
        refresh_token: third.refresh_token.clone(),
    })
    .await?;
    let after_logout = auth
        .refresh(RefreshRequest {
            refresh_token: third.refresh_token,
        })
        .await
        .expect_err("logged out");
    assert_eq!(after_logout.code(), Code::Unauthenticated);

    suite.stop().await
}
