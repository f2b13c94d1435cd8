//! Revocation reaches every service within 2 seconds: a live access token of
//! a disabled user, a logged-out session or a demoted administrator is refused
//! by accounts and at the gateway, without waiting for it to expire.

use std::time::Duration;

use keel::{accounts::v1 as accounts, auth::v1 as pb};
use keel_testkit::{Suite, authorized, http::TestGateway};
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt as _;

/// The bound the design sets; polling goes a little past it to report by how
/// much a failure missed.
const WITHIN: Duration = Duration::from_secs(2);

/// GetAccount("me") with `token` at accounts.
async fn accounts_accepts(suite: &Suite, token: &str) -> Result<(), tonic::Status> {
    let request = accounts::GetAccountRequest {
        account_id: "me".into(),
    };
    suite
        .accounts()
        .get_account(authorized(request, token))
        .await
        .map(|_| ())
}

/// How long until accounts and the gateway both refuse `token` as revoked.
async fn until_refused_everywhere(suite: &Suite, gateway: &TestGateway, token: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut at_accounts, mut at_gateway) = (false, false);
    while started.elapsed() < WITHIN * 2 {
        if !at_accounts && let Err(status) = accounts_accepts(suite, token).await {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            let reason = status.get_details_error_info().map(|info| info.reason);
            assert_eq!(reason.as_deref(), Some("TOKEN_REVOKED"));
            at_accounts = true;
        }
        if !at_gateway && gateway.http().get("/v1/accounts/me", Some(token)).await?.status == 401 {
            at_gateway = true;
        }
        if at_accounts && at_gateway {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!(
        "still accepted after {:?} (accounts refused: {at_accounts}, gateway refused: {at_gateway})",
        WITHIN * 2
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_user_s_live_token_is_refused_everywhere_within_2_s() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    accounts_accepts(&suite, &tokens.access_token).await?;

    let disable = pb::DisableUserRequest { user_id: user.id };
    suite
        .auth()
        .disable_user(authorized(disable, &admin.access_token))
        .await?;
    let took = until_refused_everywhere(&suite, &gateway, &tokens.access_token).await?;
    assert!(took < WITHIN, "refused after {took:?}");
    println!("disabled user's token refused by accounts and the gateway {took:?} after DisableUser");
    // The administrator's own token is untouched.
    accounts_accepts(&suite, &admin.access_token).await?;
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logged_out_session_s_token_is_refused_and_other_sessions_go_on() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let (user, first) = suite.signed_in_user().await?;
    let second = suite
        .login(&user.email, "a perfectly fine password")
        .await?
        .tokens
        .expect("tokens");

    let logout = pb::LogoutRequest {
        refresh_token: first.refresh_token.clone(),
    };
    suite.auth().logout(logout).await?;
    let took = until_refused_everywhere(&suite, &gateway, &first.access_token).await?;
    assert!(took < WITHIN, "refused after {took:?}");
    println!("logged-out session's token refused everywhere {took:?} after Logout");
    accounts_accepts(&suite, &second.access_token).await?;
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn new_roles_apply_at_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, root) = suite.signed_in_admin().await?;
    let (demoted, tokens) = suite.signed_in_admin().await?;
    let list = || accounts::ListAccountsRequest::default();
    suite
        .accounts()
        .list_accounts(authorized(list(), &tokens.access_token))
        .await?;

    let demote = pb::SetUserRolesRequest {
        user_id: demoted.id.clone(),
        roles: vec![pb::Role::User as i32],
    };
    suite
        .auth()
        .set_user_roles(authorized(demote, &root.access_token))
        .await?;
    // The token that says "admin" stops counting...
    let started = Instant::now();
    loop {
        match suite
            .accounts()
            .list_accounts(authorized(list(), &tokens.access_token))
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => break,
            _ if started.elapsed() > WITHIN * 2 => anyhow::bail!("the admin token still counts"),
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(started.elapsed() < WITHIN, "refused after {:?}", started.elapsed());
    // ...and a refresh carries the new roles: a user, not an admin.
    let refreshed = suite.refresh(&tokens.refresh_token).await?;
    let status = suite
        .accounts()
        .list_accounts(authorized(list(), &refreshed.access_token))
        .await
        .expect_err("no longer an admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    accounts_accepts(&suite, &refreshed.access_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn verifiers_catch_up_after_auth_restarts() -> anyhow::Result<()> {
    let mut suite = keel_testkit::spawn_suite().await?;
    let (_, tokens) = suite.signed_in_user().await?;
    accounts_accepts(&suite, &tokens.access_token).await?;

    // Accounts loses its stream to auth...
    suite.stop_service("auth").await?;
    suite.start("auth").await?;
    // ...and the revocation made as auth comes back still reaches it.
    suite
        .auth()
        .logout(pb::LogoutRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await?;
    let started = Instant::now();
    while accounts_accepts(&suite, &tokens.access_token).await.is_ok() {
        anyhow::ensure!(started.elapsed() < WITHIN * 2, "still accepted after {:?}", WITHIN * 2);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started.elapsed() < WITHIN, "refused after {:?}", started.elapsed());
    suite.stop().await
}
