//! SetUserRoles and DisableUser: what administrators do to users.

use diesel_async::AsyncConnection as _;
use keel::auth::v1 as pb;
use keel_platform::{
    Error, Role,
    auth::principal::UserPrincipal,
    error::FieldViolation,
    serve::audit,
    serve::rpc::{invalid, parse_id},
};

use super::{Auth, user_pb};
use crate::{domain::Roles, store};

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
            _ => Err(FieldViolation {
                field: "roles".into(),
                description: format!("{r} is not a role"),
            }),
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(Roles::new)
        .map_err(invalid)?;
    let mut conn = auth.pool.get().await?;
    let user = conn
        .transaction::<_, Error, _>(async |conn| {
            let user = store::set_roles(conn, user_id, roles.names())
                .await?
                .ok_or_else(|| Error::not_found("user"))?;
            // Tokens carrying the old roles stop counting; a refresh gets
            // the new ones.
            store::revoke_user_tokens(conn, user_id).await?;
            Ok(user)
        })
        .await?;
    audit::revoked(user_id, None, "roles_changed", 0);
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
    if user_id == admin.user_id {
        return Err(Error::failed_precondition(
            "CANNOT_DISABLE_SELF",
            "an administrator cannot disable themselves",
        ));
    }
    let mut conn = auth.pool.get().await?;
    let (user, ended) = conn
        .transaction::<_, Error, _>(async |conn| {
            let user = store::disable_user(conn, user_id)
                .await?
                .ok_or_else(|| Error::not_found("user"))?;
            let ended = store::revoke_user_sessions(conn, user_id, None, "user_disabled").await?;
            Ok((user, ended))
        })
        .await?;
    audit::revoked(user_id, None, "user_disabled", ended);
    Ok(pb::DisableUserResponse {
        user: Some(user_pb(&user)),
    })
}
