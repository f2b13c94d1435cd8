//! A user's sessions: listing (own only, current marked, paginated),
//! revoking, and changing the password.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel::auth::v1::{self as pb};
use keel_testkit::status::{reason, violated_fields};
use keel_testkit::{Suite, authorized};
use tonic::{Code, Status};

const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "an even better passphrase";

/// Registers `email` and signs in `sessions` times; the tokens, oldest first.
async fn user_with_sessions(suite: &Suite, email: &str, sessions: usize) -> anyhow::Result<Vec<pb::TokenPair>> {
    suite.register(email, PASSWORD).await?;
    let mut tokens = Vec::new();
    for _ in 0..sessions {
        tokens.push(suite.login(email, PASSWORD).await?.tokens.expect("tokens"));
    }
    Ok(tokens)
}

async fn list_page(
    suite: &Suite,
    access_token: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListSessionsResponse, Status> {
    let request = pb::ListSessionsRequest {
        page_size,
        page_token: page_token.into(),
    };
    Ok(suite
        .auth()
        .list_sessions(authorized(request, access_token))
        .await?
        .into_inner())
}

async fn session_ids(suite: &Suite, access_token: &str) -> anyhow::Result<Vec<String>> {
    let page = list_page(suite, access_token, 0, "").await?;
    Ok(page.sessions.into_iter().map(|s| s.id).collect())
}

async fn revoke(suite: &Suite, access_token: &str, session_id: &str) -> Result<(), Status> {
    let request = pb::RevokeSessionRequest {
        session_id: session_id.into(),
    };
    suite
        .auth()
        .revoke_session(authorized(request, access_token))
        .await
        .map(drop)
}

async fn change_password(suite: &Suite, access_token: &str, current: &str, new: &str) -> Result<i32, Status> {
    let request = pb::ChangePasswordRequest {
        current_password: current.into(),
        new_password: new.into(),
    };
    let response = suite.auth().change_password(authorized(request, access_token)).await?;
    Ok(response.into_inner().ended_session_count)
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_needs_an_access_token() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let status = suite
        .auth()
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "MISSING_TOKEN");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_shows_active_sessions_newest_first_with_the_current_marked() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "many@example.com", 3).await?;
    let middle = &tokens[1];

    let sessions = list_page(&suite, &middle.access_token, 0, "").await?.sessions;
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    let newest_first: Vec<&str> = tokens.iter().rev().map(|t| t.session_id.as_str()).collect();
    assert_eq!(ids, newest_first);
    let current: Vec<&str> = sessions.iter().filter(|s| s.current).map(|s| s.id.as_str()).collect();
    assert_eq!(current, vec![middle.session_id.as_str()]);
    for session in &sessions {
        assert_eq!(session.client_address, "127.0.0.1");
        assert!(session.user_agent.contains("tonic"), "{:?}", session.user_agent);
        assert!(session.create_time.is_some() && session.last_use_time.is_some() && session.expire_time.is_some());
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_leaves_out_ended_sessions() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "ended@example.com", 2).await?;
    suite
        .auth()
        .logout(pb::LogoutRequest {
            refresh_token: tokens[0].refresh_token.clone(),
        })
        .await?;
    assert_eq!(
        session_ids(&suite, &tokens[1].access_token).await?,
        vec![tokens[1].session_id.clone()]
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_paginates_with_page_tokens() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "pages@example.com", 3).await?;
    let access = &tokens[2].access_token;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    for page_number in 1.. {
        let page = list_page(&suite, access, 1, &page_token).await?;
        assert_eq!(page.sessions.len(), 1, "page {page_number}");
        seen.push(page.sessions[0].id.clone());
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(page_number < 3, "the third page is the last");
        page_token = page.next_page_token;
    }
    let newest_first: Vec<String> = tokens.iter().rev().map(|t| t.session_id.clone()).collect();
    assert_eq!(seen, newest_first);

    let two = list_page(&suite, access, 2, "").await?;
    assert_eq!(two.sessions.len(), 2);
    let rest = list_page(&suite, access, 2, &two.next_page_token).await?;
    assert_eq!(rest.sessions.len(), 1);
    assert!(rest.next_page_token.is_empty());
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_refuses_bad_paging_input() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, tokens) = suite.signed_in_user().await?;
    let status = list_page(&suite, &tokens.access_token, -1, "")
        .await
        .expect_err("negative");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["page_size"]);
    let status = list_page(&suite, &tokens.access_token, 1, "garbage!")
        .await
        .expect_err("bad token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["page_token"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_never_shows_another_users_sessions() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let alice = user_with_sessions(&suite, "alice@example.com", 2).await?;
    let bob = user_with_sessions(&suite, "bob@example.com", 1).await?;

    let alice_sees = session_ids(&suite, &alice[0].access_token).await?;
    assert_eq!(alice_sees.len(), 2);
    assert!(!alice_sees.contains(&bob[0].session_id));
    assert_eq!(
        session_ids(&suite, &bob[0].access_token).await?,
        vec![bob[0].session_id.clone()]
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_own_session_ends_it() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "revoker@example.com", 2).await?;
    let (laptop, phone) = (&tokens[0], &tokens[1]);

    revoke(&suite, &laptop.access_token, &phone.session_id).await?;

    let status = suite.refresh(&phone.refresh_token).await.expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        session_ids(&suite, &laptop.access_token).await?,
        vec![laptop.session_id.clone()]
    );
    suite.refresh(&laptop.refresh_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_another_users_session_is_not_found() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, mallory) = suite.signed_in_user().await?;
    let (_, victim) = suite.signed_in_user().await?;

    let status = revoke(&suite, &mallory.access_token, &victim.session_id)
        .await
        .expect_err("not mallory's");
    assert_eq!(status.code(), Code::NotFound);
    // Exactly what a session that does not exist gets.
    let missing = revoke(&suite, &mallory.access_token, &uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("no such session");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), status.message());
    // The victim's session lives on.
    suite.refresh(&victim.refresh_token).await?;

    let status = revoke(&suite, &mallory.access_token, "not-a-uuid")
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn change_password_with_a_wrong_current_password_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "careful@example.com", 1).await?;
    let status = change_password(&suite, &tokens[0].access_token, "not my password", NEW_PASSWORD)
        .await
        .expect_err("wrong current password");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(keel_testkit::status::reason(&status), "WRONG_PASSWORD");
    // Nothing changed.
    suite.login("careful@example.com", PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn change_password_refuses_a_too_short_new_password() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "short@example.com", 1).await?;
    let status = change_password(&suite, &tokens[0].access_token, PASSWORD, "short")
        .await
        .expect_err("too short");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["new_password"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_wrong_current_passwords_are_throttled() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "guessed@example.com", 1).await?;
    for _ in 0..5 {
        change_password(&suite, &tokens[0].access_token, "a guessed password", NEW_PASSWORD)
            .await
            .expect_err("wrong");
    }
    let status = change_password(&suite, &tokens[0].access_token, PASSWORD, NEW_PASSWORD)
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "TOO_MANY_ATTEMPTS");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn change_password_ends_the_other_sessions_and_keeps_this_one() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let tokens = user_with_sessions(&suite, "mover@example.com", 3).await?;
    let (here, others) = (&tokens[2], &tokens[..2]);

    let ended = change_password(&suite, &here.access_token, PASSWORD, NEW_PASSWORD).await?;
    assert_eq!(ended, 2);

    for other in others {
        let status = suite.refresh(&other.refresh_token).await.expect_err("ended");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert_eq!(
        session_ids(&suite, &here.access_token).await?,
        vec![here.session_id.clone()]
    );
    suite.refresh(&here.refresh_token).await?;

    let status = suite
        .login("mover@example.com", PASSWORD)
        .await
        .expect_err("old password");
    let status = status.downcast_ref::<Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(status), "INVALID_CREDENTIALS");
    suite.login("mover@example.com", NEW_PASSWORD).await?;
    suite.stop().await
}
