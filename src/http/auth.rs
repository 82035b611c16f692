//! Bearer tokens, as both the peer port (the peer secret) and the client API's DELETE (the
//! admin token) check them.

/// Compares in time independent of where the strings differ.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The token of `Authorization: Bearer <token>`, the scheme in any case (RFC 9110 §11.1).
pub fn bearer_token(header: Option<&[u8]>) -> Option<&str> {
    let (scheme, token) = std::str::from_utf8(header?).ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether the header carries one of `accepted`. Every one is compared, so the time taken does
/// not say which matched.
pub fn bearer_matches(header: Option<&[u8]>, accepted: &[String]) -> bool {
    bearer_token(header).is_some_and(|t| {
        accepted
            .iter()
            .fold(false, |ok, s| same_secret(t.as_bytes(), s.as_bytes()) | ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
