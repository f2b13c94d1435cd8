//! A `bytea` column that holds a secret (a private key, a signing secret,
//! sealed or not): its `Debug` never shows the bytes and its memory is wiped
//! when it is dropped.

use diesel::{
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::{Pg, PgValue},
    serialize::{self, Output, ToSql},
    sql_types::Binary,
};
use secrecy::{ExposeSecret as _, SecretSlice};

/// Secret bytes as a row holds them.
#[derive(Debug, Clone, AsExpression, FromSqlRow)]
#[diesel(sql_type = Binary)]
pub struct SecretBytes(SecretSlice<u8>);

impl SecretBytes {
    /// The bytes, to open or to use.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl ToSql<Binary, Pg> for SecretBytes {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <[u8] as ToSql<Binary, Pg>>::to_sql(self.expose(), out)
    }
}

impl FromSql<Binary, Pg> for SecretBytes {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        <Vec<u8> as FromSql<Binary, Pg>>::from_sql(value).map(Self::from)
    }
}
