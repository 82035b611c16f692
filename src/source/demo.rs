//! The demo data: the seed's `scores` and generated `products`, as the embedded source serves
//! them and as `geecache db seed` stores them, so that a node on the embedded source and a node
//! on a seeded PostgreSQL answer every key with the same bytes.

pub use crate::group::{PRODUCTS_QUERY, SCORES_QUERY};

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
