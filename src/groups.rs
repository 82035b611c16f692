//! The cache groups this node serves and the deterministic data behind them.
//!
//! A group is a namespace of keys with its own source query (`scores`, `products`). The
//! embedded source and `geecache db seed` both take their rows from the functions here, so
//! that a node on the embedded source and a node on a seeded PostgreSQL answer every key with
//! the same bytes.

use std::fmt;

/// Longest key accepted anywhere (client API, peer protocol), in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// The groups known to this build. A small closed set keeps metric labels static.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Scores,
    Products,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::Scores, Group::Products];

    pub fn name(self) -> &'static str {
        match self {
            Group::Scores => "scores",
            Group::Products => "products",
        }
    }

    pub fn parse(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The query a PostgreSQL source runs for this group; `$1` is the key as text.
    /// Non-numeric product ids match no row instead of failing the cast.
    pub fn default_query(self) -> &'static str {
        match self {
            Group::Scores => "SELECT value FROM scores WHERE name = $1",
            Group::Products => {
                "SELECT value FROM products WHERE id = \
                 (CASE WHEN $1 ~ '^[0-9]{1,18}$' THEN $1::bigint END)"
            }
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key is refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes, longer than the limit of {MAX_KEY_BYTES}")]
    TooLong(usize),
}

pub fn validate_key(key: &str) -> Result<(), KeyError> {
    match key.len() {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_BYTES => Err(KeyError::TooLong(n)),
        _ => Ok(()),
    }
}

/// The seed's sample rows.
pub const SCORES: [(&str, &str); 3] = [("Tom", "630"), ("Jack", "589"), ("Sam", "567")];

const CATEGORIES: [&str; 8] = [
    "shoes", "shirts", "bags", "watches", "books", "toys", "garden", "kitchen",
];

/// splitmix64: a fixed, well-mixed function of the id, so every node derives the same row.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The JSON document of product `id` (about 100 bytes), as the embedded source serves it and
/// as `db seed` stores it.
pub fn product_value(id: u64) -> String {
    let h = mix(id);
    format!(
        r#"{{"id":{id},"name":"Product {id}","category":"{}","price_cents":{},"stock":{}}}"#,
        CATEGORIES[(h % 8) as usize],
        99 + (h >> 8) % 100_000,
        (h >> 40) % 1_000,
    )
}

/// Parses a product key the way the PostgreSQL query does: 1 to 18 ASCII digits.
pub fn product_id(key: &str) -> Option<u64> {
    if key.is_empty() || key.len() > 18 || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_round_trip() {
        for g in Group::ALL {
            assert_eq!(Group::parse(g.name()), Some(g));
        }
        assert_eq!(Group::parse("Scores"), None);
        assert_eq!(Group::parse(""), None);
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong(MAX_KEY_BYTES + 1))
        );
    }

    #[test]
    fn product_values_are_stable_json() {
        let v = product_value(42);
        assert_eq!(v, product_value(42));
        assert_ne!(v, product_value(43));
        let doc: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(doc["id"], 42);
        assert_eq!(doc["name"], "Product 42");
        // A golden value: changing the generator would silently split embedded and seeded data.
        assert_eq!(
            product_value(1),
            r#"{"id":1,"name":"Product 1","category":"shirts","price_cents":53311,"stock":325}"#
        );
        // COPY text format needs no escaping for these documents.
        assert!(!v.contains(['\t', '\n', '\\']));
    }

    #[test]
    fn product_ids_parse_like_the_sql() {
        assert_eq!(product_id("1"), Some(1));
        assert_eq!(product_id("007"), Some(7));
        assert_eq!(product_id("-1"), None);
        assert_eq!(product_id("1.5"), None);
        assert_eq!(product_id("9999999999999999999"), None);
        assert_eq!(product_id(""), None);
    }
}
