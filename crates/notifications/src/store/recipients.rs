//! Where each user's mail goes, as auth's events last said.

use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use super::QueryResult;
use crate::schema::recipients;

/// Records `email` as `user_id`'s address.
pub async fn remember(conn: &mut AsyncPgConnection, user_id: Uuid, email: &str) -> QueryResult<()> {
    diesel::insert_into(recipients::table)
        .values((recipients::user_id.eq(user_id), recipients::email.eq(email)))
        .on_conflict(recipients::user_id)
        .do_update()
        .set((
            recipients::email.eq(excluded(recipients::email)),
            recipients::update_time.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The user's address, if an event has named one.
pub async fn email_of(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<String>> {
    recipients::table
        .find(user_id)
        .select(recipients::email)
        .first(conn)
        .await
        .optional()
}
