//! Profiles over gRPC: reading one's own account (created on first access),
//! who may read and change which account, optimistic concurrency with etags,
//! and the admin listing.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use keel::accounts::v1 as pb;
use keel_testkit::{
    Suite, authorized, spawn_suite,
    status::{reason, violated_fields},
};
use prost_types::FieldMask;
use tonic::{Code, Status};
use uuid::Uuid;

async fn get_account(suite: &Suite, token: &str, account_id: &str) -> Result<pb::Account, Status> {
    let response = suite
        .accounts()
        .get_account(authorized(
            pb::GetAccountRequest {
                account_id: account_id.into(),
            },
            token,
        ))
        .await?;
    Ok(response.into_inner().account.unwrap_or_default())
}

/// UpdateProfile of `account_id`'s display name; `etag` empty to skip the
/// check, `mask` empty for no field mask.
async fn update_name(
    suite: &Suite,
    token: &str,
    account_id: &str,
    display_name: &str,
    etag: &str,
    mask: &[&str],
) -> Result<pb::Account, Status> {
    let update_mask = (!mask.is_empty()).then(|| FieldMask {
        paths: mask.iter().map(|p| (*p).to_owned()).collect(),
    });
    let response = suite
        .accounts()
        .update_profile(authorized(
            pb::UpdateProfileRequest {
                account: Some(pb::Account {
                    id: account_id.into(),
                    display_name: display_name.into(),
                    etag: etag.into(),
                    ..Default::default()
                }),
                update_mask,
            },
            token,
        ))
        .await?;
    Ok(response.into_inner().account.unwrap_or_default())
}

async fn list_accounts(
    suite: &Suite,
    token: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListAccountsResponse, Status> {
    let response = suite
        .accounts()
        .list_accounts(authorized(
            pb::ListAccountsRequest {
                page_size,
                page_token: page_token.into(),
            },
            token,
        ))
        .await?;
    Ok(response.into_inner())
}

/// A signed-in user whose account exists (touched once); returns its id and
/// access token.
async fn user_with_account(suite: &Suite) -> anyhow::Result<(String, String)> {
    let (user, tokens) = suite.signed_in_user().await?;
    get_account(suite, &tokens.access_token, "me").await?;
    Ok((user.id, tokens.access_token))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_account_me_right_after_registration_returns_the_users_account() -> anyhow::Result<()> {
    // No UserRegistered ever arrives: the first call alone must create it.
    let (suite, user, tokens) = keel_testkit::spawn_suite_with_withheld_registration().await?;

    let account = get_account(&suite, &tokens.access_token, "me").await?;
    assert_eq!(account.id, user.id);
    assert_eq!(account.email, "", "the email only comes with UserRegistered");
    assert!(!account.etag.is_empty());
    assert!(account.create_time.is_some());

    let by_id = get_account(&suite, &tokens.access_token, &user.id).await?;
    assert_eq!(by_id, account, "\"me\" and the own id are the same account");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_email_arrives_with_user_registered() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let account = loop {
        let account = get_account(&suite, &tokens.access_token, "me").await?;
        if !account.email.is_empty() || tokio::time::Instant::now() > deadline {
            break account;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(account.id, user.id);
    assert_eq!(account.email, user.email);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn get_account_without_a_token_is_unauthenticated() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let status = suite
        .accounts()
        .get_account(pb::GetAccountRequest {
            account_id: "me".into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_account_is_denied_whether_or_not_it_exists() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, mine) = user_with_account(&suite).await?;
    let (theirs, _) = user_with_account(&suite).await?;

    for account_id in [theirs, Uuid::now_v7().to_string()] {
        let status = get_account(&suite, &mine, &account_id)
            .await
            .expect_err("someone else's account");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "NOT_ACCOUNT_OWNER");
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_reads_any_existing_account() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (user_id, _) = user_with_account(&suite).await?;
    let (_, admin) = suite.signed_in_admin().await?;

    let account = get_account(&suite, &admin.access_token, &user_id).await?;
    assert_eq!(account.id, user_id);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_gets_not_found_for_an_unknown_account() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;

    let status = get_account(&suite, &admin.access_token, &Uuid::now_v7().to_string())
        .await
        .expect_err("nobody has this id");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_token_cannot_get_an_account() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (user_id, _) = user_with_account(&suite).await?;
    let token = suite.service_token(&[]).await?;

    for account_id in ["me", user_id.as_str()] {
        let status = get_account(&suite, &token, account_id)
            .await
            .expect_err("services have no account");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_account_id_is_invalid() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;

    for account_id in ["not-a-uuid", "", "ME"] {
        let status = get_account(&suite, &token, account_id).await.expect_err("not an id");
        assert_eq!(status.code(), Code::InvalidArgument, "{account_id:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["account_id"]);
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_with_a_display_name_mask_sets_the_name_and_a_new_etag() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;
    let before = get_account(&suite, &token, "me").await?;

    let updated = update_name(&suite, &token, "me", "  Ada Lovelace ", "", &["display_name"]).await?;
    assert_eq!(
        updated.display_name, "Ada Lovelace",
        "surrounding whitespace is removed"
    );
    assert_ne!(updated.etag, before.etag);
    assert_eq!(get_account(&suite, &token, "me").await?, updated);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_without_a_mask_sets_the_name_and_a_new_etag() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (user_id, token) = user_with_account(&suite).await?;
    let before = get_account(&suite, &token, "me").await?;

    let updated = update_name(&suite, &token, &user_id, "Grace", "", &[]).await?;
    assert_eq!(updated.display_name, "Grace");
    assert_ne!(updated.etag, before.etag);
    assert_eq!(get_account(&suite, &token, "me").await?.display_name, "Grace");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_without_a_mask_leaves_an_unset_name_alone() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;
    update_name(&suite, &token, "me", "Grace", "", &["display_name"]).await?;

    // AIP-134: without a mask only the fields that are set change; an empty
    // string is proto3's "unset".
    let unchanged = update_name(&suite, &token, "me", "", "", &[]).await?;
    assert_eq!(unchanged.display_name, "Grace");
    assert_eq!(get_account(&suite, &token, "me").await?.display_name, "Grace");

    // Naming the field in the mask is how a name is cleared.
    let cleared = update_name(&suite, &token, "me", "", "", &["display_name"]).await?;
    assert_eq!(cleared.display_name, "");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_with_the_current_etag_succeeds() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;
    let first = update_name(&suite, &token, "me", "One", "", &["display_name"]).await?;

    let second = update_name(&suite, &token, "me", "Two", &first.etag, &["display_name"]).await?;
    assert_eq!(second.display_name, "Two");
    assert_ne!(second.etag, first.etag);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_with_a_stale_etag_is_aborted_and_changes_nothing() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;
    let read = get_account(&suite, &token, "me").await?;
    let theirs = update_name(&suite, &token, "me", "Theirs", &read.etag, &["display_name"]).await?;

    let status = update_name(&suite, &token, "me", "Mine", &read.etag, &["display_name"])
        .await
        .expect_err("the etag is stale");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(reason(&status), "ETAG_MISMATCH");
    assert_eq!(get_account(&suite, &token, "me").await?, theirs);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_refuses_an_unknown_mask_path() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;
    let before = get_account(&suite, &token, "me").await?;

    for mask in [&["email"][..], &["display_name", "etag"], &["id"]] {
        let status = update_name(&suite, &token, "me", "Eve", "", mask)
            .await
            .expect_err("only display_name may be updated");
        assert_eq!(status.code(), Code::InvalidArgument, "{mask:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["update_mask"]);
    }
    assert_eq!(get_account(&suite, &token, "me").await?, before);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_display_name_of_100_characters_is_accepted() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;

    // Characters, not bytes: 100 two-byte characters fit.
    let name = "é".repeat(100);
    let updated = update_name(&suite, &token, "me", &name, "", &["display_name"]).await?;
    assert_eq!(updated.display_name, name);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_display_name_over_100_characters_is_invalid() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;
    let before = get_account(&suite, &token, "me").await?;

    let status = update_name(&suite, &token, "me", &"n".repeat(101), "", &["display_name"])
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["account.display_name"]);
    assert_eq!(get_account(&suite, &token, "me").await?, before);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_cannot_update_another_users_profile() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, mine) = user_with_account(&suite).await?;
    let (theirs, their_token) = user_with_account(&suite).await?;
    let before = get_account(&suite, &their_token, "me").await?;

    let status = update_name(&suite, &mine, &theirs, "Mallory", "", &["display_name"])
        .await
        .expect_err("not my account");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "NOT_ACCOUNT_OWNER");
    assert_eq!(get_account(&suite, &their_token, "me").await?, before);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_can_update_any_profile() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (user_id, token) = user_with_account(&suite).await?;
    let (_, admin) = suite.signed_in_admin().await?;

    let updated = update_name(&suite, &admin.access_token, &user_id, "Renamed", "", &["display_name"]).await?;
    assert_eq!(updated.id, user_id);
    assert_eq!(get_account(&suite, &token, "me").await?.display_name, "Renamed");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_accounts_is_for_admins_only() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, token) = user_with_account(&suite).await?;

    let status = list_accounts(&suite, &token, 0, "")
        .await
        .expect_err("users may not list");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "ADMIN_REQUIRED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_accounts_pages_through_every_account_once_oldest_first() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (admin_user, admin) = suite.signed_in_admin().await?;
    get_account(&suite, &admin.access_token, "me").await?;
    let registered = join_all((0..6).map(|i| {
        suite.register_as(
            format!("listed-{i}-{}@example.com", Uuid::now_v7().simple()),
            "a perfectly fine password",
        )
    }))
    .await;
    let mut expected = vec![admin_user.id];
    for user in registered {
        expected.push(user?.id);
    }
    expected.sort();

    // The users' accounts arrive with their UserRegistered events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while list_accounts(&suite, &admin.access_token, 100, "")
        .await?
        .accounts
        .len()
        < expected.len()
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "accounts never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut seen, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = list_accounts(&suite, &admin.access_token, 3, &token).await?;
        pages += 1;
        assert!(page.accounts.len() <= 3);
        seen.extend(page.accounts.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        anyhow::ensure!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3, "7 accounts in pages of 3");
    assert_eq!(seen, expected, "every account once, oldest (lowest id) first");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_accounts_refuses_a_negative_page_size() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;

    let status = list_accounts(&suite, &admin.access_token, -1, "")
        .await
        .expect_err("negative page size");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["page_size"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_accounts_refuses_a_garbage_page_token() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;

    for page_token in ["garbage!", "AAAA", "not a token at all"] {
        let status = list_accounts(&suite, &admin.access_token, 0, page_token)
            .await
            .expect_err("not a token from a previous page");
        assert_eq!(status.code(), Code::InvalidArgument, "{page_token:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
    suite.stop().await
}
