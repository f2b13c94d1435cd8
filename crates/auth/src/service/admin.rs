//! SetUserRoles and DisableUser: what administrators do to users.

use keel::auth::v1 as pb;
use keel_platform::{
    Error, Role,
    auth::principal::UserPrincipal,
    error::FieldViolation,
    serve::rpc::{invalid, parse_id},
};

use super::user_pb;
use crate::{app::Auth, domain::Roles};

pub(super) async fn set_user_roles(
    auth: &Auth,
    request: pb::SetUserRolesRequest,
) -> Result<pb::SetUserRolesResponse, Error> {
    let user_id = parse_id("user_id", &request.user_id)?;
    let roles = request
        .roles
        .iter()
        .map(|r| match pb::Role::try_from(*r) {
            Ok(pb::Role::User) => Ok(Role::User),
            Ok(pb::Role::Admin) => Ok(Role::Admin),
            _ => Err(FieldViolation::new(
                "roles",
                "enum.defined_only",
                format!("{r} is not a role"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(Roles::new)
        .map_err(invalid)?;
    let user = auth.set_user_roles(user_id, &roles).await?;
    Ok(pb::SetUserRolesResponse {
        user: Some(user_pb(&user)),
    })
}

pub(super) async fn disable_user(
    auth: &Auth,
    admin: &UserPrincipal,
    request: pb::DisableUserRequest,
) -> Result<pb::DisableUserResponse, Error> {
    let user_id = parse_id("user_id", &request.user_id)?;
    let user = auth.disable_user(admin.user_id, user_id).await?;
    Ok(pb::DisableUserResponse {
        user: Some(user_pb(&user)),
    })
}
