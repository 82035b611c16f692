//! The cache groups this node serves, and what a key must be before any lookup.
//!
//! A group is a namespace of keys with its own source query (`scores`, `products`).

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

    /// The group's name, in URLs and in metric labels.
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
}
