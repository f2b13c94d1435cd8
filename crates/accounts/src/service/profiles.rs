//! GetAccount, UpdateProfile and ListAccounts: the accounts themselves.

use keel::accounts::v1 as pb;
use keel_platform::{
    Error, Principal,
    db::paging,
    proto::timestamp,
    serve::rpc::{invalid, parse_etag},
};

use crate::{
    app::{Accounts, ProfileUpdate, Target},
    domain,
    store::accounts::AccountRow,
};

pub(super) async fn get_account(
    accounts: &Accounts,
    caller: &Principal,
    request: pb::GetAccountRequest,
) -> Result<pb::GetAccountResponse, Error> {
    let target = Target::resolve(caller, &request.account_id)?;
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
        .ok_or_else(|| Error::invalid_field("account", "required", "is required"))?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if let Some(path) = paths.iter().find(|p| p.as_str() != "display_name") {
        return Err(Error::invalid_field(
            "update_mask",
            "field_mask.in",
            format!("{path} cannot be updated"),
        ));
    }
    let display_name = domain::display_name(&account.display_name).map_err(invalid)?;
    let expected_version = parse_etag("account.etag", &account.etag)?;
    let target = Target::resolve(caller, &account.id)?;
    // Without a mask only the fields set in `account` change (AIP-134), and
    // an empty string is proto3's "unset": then there is nothing to change.
    let display_name = if paths.is_empty() && display_name.is_empty() {
        None
    } else {
        Some(display_name)
    };
    let update = ProfileUpdate {
        display_name,
        expected_version,
    };
    let updated = accounts.update_profile(target, update).await?;
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
    let page = accounts.list_accounts(after, limit).await?;
    Ok(pb::ListAccountsResponse {
        accounts: page.items.iter().map(account_pb).collect(),
        next_page_token: page.next_page_token,
    })
}

fn account_pb(account: &AccountRow) -> pb::Account {
    pb::Account {
        id: account.id.to_string(),
        email: account.email.clone(),
        display_name: account.display_name.clone(),
        etag: format!("\"{}\"", account.version),
        create_time: Some(timestamp(account.created_at)),
        update_time: Some(timestamp(account.updated_at)),
    }
}
