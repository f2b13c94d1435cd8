//! Cursor pagination (AIP-158): a page size with sane bounds, and opaque page
//! tokens that carry the last id seen (ids are UUIDv7, so they sort by time).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use crate::error::Error;

/// The page size when the caller asks for none.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// The largest page served, whatever the caller asks.
pub const MAX_PAGE_SIZE: i64 = 100;

/// Reads `page_size`: 0 means the default, above the maximum means the
/// maximum, below 0 is INVALID_ARGUMENT.
pub fn page_size(requested: i32) -> Result<i64, Error> {
    match i64::from(requested) {
        n if n < 0 => Err(Error::invalid_field("page_size", "int32.gte", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// Reads `page_token`: empty for the first page, else the cursor it carries.
pub fn decode_token(token: &str) -> Result<Option<Uuid>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            Error::invalid_field(
                "page_token",
                "PAGE_TOKEN_INVALID",
                "is not a token from a previous page",
            )
        })
}

/// The `next_page_token` after a page whose last id is `last`.
pub fn encode_token(last: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(last.as_bytes())
}

/// Reads a `page_token` that carries a position in a sequence.
pub fn decode_position(token: &str) -> Result<Option<i64>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map(|bytes| Some(i64::from_be_bytes(bytes)))
        .ok_or_else(|| {
            Error::invalid_field(
                "page_token",
                "PAGE_TOKEN_INVALID",
                "is not a token from a previous page",
            )
        })
}

/// The `next_page_token` after a page ending at sequence position `last`.
pub fn encode_position(last: i64) -> String {
    URL_SAFE_NO_PAD.encode(last.to_be_bytes())
}

/// Splits rows fetched with `limit + 1` (one more than a page, to learn
/// whether another page follows) into the page and its `next_page_token`:
/// the token of the page's last row, or empty on the last page.
pub fn page<T>(mut rows: Vec<T>, limit: i64, token: impl Fn(&T) -> String) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(&token).unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7).ok(), Some(7));
        assert_eq!(page_size(10_000).ok(), Some(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(decode_token(&encode_token(id)).ok(), Some(Some(id)));
        assert_eq!(decode_token("").ok(), Some(None));
        assert!(decode_token("garbage!").is_err());
        assert_eq!(decode_position(&encode_position(42)).ok(), Some(Some(42)));
        assert!(decode_position(&encode_token(Uuid::now_v7())).is_err());
    }

    #[test]
    fn a_page_has_a_next_token_only_when_a_row_is_left_over() {
        let (rows, next) = page(vec![1, 2, 3], 2, |n: &i32| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], "2"));
        let (rows, next) = page(vec![1, 2], 2, |n: &i32| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], ""));
    }
}
