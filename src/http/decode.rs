//! Strict percent-decoding for keys in query strings and paths.
//!
//! `form_urlencoded` silently keeps a bad `%zz` and replaces invalid UTF-8; a cache key must
//! not change meaning on the way in, so malformed input is refused with a reason instead.

use std::borrow::Cow;

/// Why a URL component could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad percent-encoding at byte {0}")]
    BadEscape(usize),
    #[error("decoded bytes are not valid UTF-8")]
    NotUtf8,
}

/// Decodes `%XX` escapes; with `plus_is_space`, `+` means a space (query strings, and the
/// peer path GeeCache's Go client builds with `url.QueryEscape`).
pub fn decode(s: &str, plus_is_space: bool) -> Result<Cow<'_, str>, DecodeError> {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(DecodeError::BadEscape(i)),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DecodeError::NotUtf8)
}

/// Splits a query string into decoded `(name, value)` pairs, borrowing where nothing is escaped.
pub fn query_pairs(
    query: &str,
) -> impl Iterator<Item = Result<(Cow<'_, str>, Cow<'_, str>), DecodeError>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Ok((decode(k, true)?, decode(v, true)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(decode("Tom", true).unwrap(), "Tom");
        assert_eq!(decode("a%20b+c", true).unwrap(), "a b c");
        assert_eq!(decode("a+b", false).unwrap(), "a+b");
        assert_eq!(decode("%E2%82%AC", true).unwrap(), "€");
        assert_eq!(decode("%2f%2F", true).unwrap(), "//");
    }

    #[test]
    fn refuses_malformed_input() {
        assert_eq!(decode("%", true), Err(DecodeError::BadEscape(0)));
        assert_eq!(decode("ab%zz", true), Err(DecodeError::BadEscape(2)));
        assert_eq!(decode("%4", true), Err(DecodeError::BadEscape(0)));
        assert_eq!(decode("%ff", true), Err(DecodeError::NotUtf8));
    }

    #[test]
    fn splits_query_pairs() {
        let pairs: Vec<_> = query_pairs("key=Tom&group=scores&&flag")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            pairs,
            [("key", "Tom"), ("group", "scores"), ("flag", "")]
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
        );
        assert!(query_pairs("key=%zz").any(|p| p.is_err()));
    }
}
