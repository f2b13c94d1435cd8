//! Where each user's mail goes, as auth's events last said.

use diesel::{
    ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, upsert::excluded,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::recipients;

/// A user's address.
#[derive(Debug, Insertable)]
#[diesel(table_name = recipients)]
struct NewRecipient<'a> {
    user_id: Uuid,
    email: &'a str,
}

/// Records `email` as `user_id`'s address.
pub async fn remember(conn: &mut AsyncPgConnection, user_id: Uuid, email: &str) -> QueryResult<()> {
    diesel::insert_into(recipients::table)
        .values(NewRecipient { user_id, email })
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
