//! GetAccount, UpdateProfile and ListAccounts: the accounts themselves.

use keel::accounts::v1 as pb;
use keel_platform::{
    Error, Principal,
    db::paging,
    serve::rpc::{invalid, parse_etag},
};

use super::{Accounts, account_pb, target};
use crate::{domain, store};

pub(super) async fn get_account(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::GetAccountRequest,
) -> Result<pb::GetAccountResponse, Error> {
    let target = target(caller, &request.account_id)?;
    let account = accounts.account(target).await?;
    Ok(pb::GetAccountResponse {
        account: Some(account_pb(&account)),
    })
}

pub(super) async fn update_profile(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::UpdateProfileRequest,
) -> Result<pb::UpdateProfileResponse, Error> {
    let account = request
        .account
        .ok_or_else(|| Error::invalid_field("account", "is required"))?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if let Some(path) = paths.iter().find(|p| p.as_str() != "display_name") {
        return Err(Error::invalid_field("update_mask", format!("{path} cannot be updated")));
    }
    let display_name = domain::display_name(&account.display_name).map_err(invalid)?;
    let expected = parse_etag("account.etag", &account.etag)?;
    let target = target(caller, &account.id)?;
    let current = accounts.account(target).await?;
    // Without a mask only the fields set in `account` change (AIP-134), and
    // an empty string is proto3's "unset": then there is nothing to change.
    if paths.is_empty() && display_name.is_empty() {
        if expected.is_some_and(|version| version != current.version) {
            return Err(etag_mismatch());
        }
        return Ok(pb::UpdateProfileResponse {
            account: Some(account_pb(&current)),
        });
    }
    let mut conn = accounts.pool.get().await?;
    let updated = store::update_display_name(&mut conn, current.id, &display_name, expected)
        .await?
        .ok_or_else(etag_mismatch)?;
    Ok(pb::UpdateProfileResponse {
        account: Some(account_pb(&updated)),
    })
}

pub(super) async fn list_accounts(
    accounts: &Accounts,
    request: pb::ListAccountsRequest,
) -> Result<pb::ListAccountsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let after = paging::decode_token(&request.page_token)?;
    let mut conn = accounts.pool.get().await?;
    let rows = store::list_accounts(&mut conn, after, limit + 1).await?;
    let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
    Ok(pb::ListAccountsResponse {
        accounts: page.iter().map(account_pb).collect(),
        next_page_token,
    })
}

fn etag_mismatch() -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        "the account changed since it was read; read it again and retry",
    )
}
