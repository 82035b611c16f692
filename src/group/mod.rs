//! The cache groups a node serves, as the operator configures them (`[[group]]` in the config
//! file), and what a key must be before any lookup.
//!
//! A group is a namespace of keys with its own source query and freshness rules. Groups are
//! fixed for the life of the process: they are built once at startup and leaked, so that a
//! [`Group`] is a `Copy` handle (`&'static`), its name a `&'static str` fit for metric labels
//! (bounded by [`MAX_GROUPS`]), and nothing on the request path looks a group up by name twice.

pub mod table;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest key accepted anywhere (client API, peer protocol), in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// What a group name may be.
pub const NAME_RULE: &str = "1 to 64 bytes of a-z, 0-9, '_' and '-'";

/// Whether `name` is a group name: [`NAME_RULE`].
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The query a PostgreSQL source runs for the demo group `scores`; `$1` is the key as text.
pub const SCORES_QUERY: &str = "SELECT value FROM scores WHERE name = $1";
/// The same for `products`. Non-numeric product ids match no row instead of failing the cast.
pub const PRODUCTS_QUERY: &str = "SELECT value FROM products WHERE id = \
     (CASE WHEN $1 ~ '^[0-9]{1,18}$' THEN $1::bigint END)";
/// Most groups one node serves.
pub const MAX_GROUPS: usize = 64;

/// How a value loaded for a group stays fresh.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Freshness {
    /// Fresh lifetime; `None`: until evicted or invalidated.
    pub ttl: Option<Duration>,
    /// Each entry's ttl is drawn from ttl × (1 ± jitter).
    pub ttl_jitter: f64,
    /// After ttl: answer the old value at once while one reload runs.
    pub stale_while_revalidate: Duration,
    /// After ttl: answer the old value when the reload fails.
    pub stale_if_error: Duration,
    /// Remember "no such row" this long (zero: not at all).
    pub negative_ttl: Duration,
}

/// The demo tables the embedded source serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demo {
    Scores,
    Products,
}

/// One group's definition.
#[derive(Debug)]
pub struct GroupDef {
    /// Its place among the node's groups (metrics, store keys, generations).
    pub index: usize,
    pub name: &'static str,
    /// `$1` is the key as text; zero or one row of one column.
    pub query: String,
    /// The `Content-Type` of its values: configured, else from the column's type once the
    /// source has prepared the query (`application/octet-stream` until then).
    content_type: OnceLock<String>,
    pub freshness: Freshness,
    /// Keys that do not match are 404 without a query.
    pub key_pattern: Option<regex::Regex>,
    /// A store budget of its own instead of the node's shared one.
    pub cache_bytes: Option<u64>,
    /// Which demo table the embedded source answers it from.
    pub demo: Option<Demo>,
    /// (table, key expression) of each table whose changes invalidate the group's keys.
    pub invalidate: Vec<(String, String)>,
}

/// A handle on a group; compares and hashes by its place.
#[derive(Clone, Copy)]
pub struct Group(&'static GroupDef);

impl Group {
    /// The group's name, in URLs and in metric labels.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn index(self) -> usize {
        self.0.index
    }

    pub fn def(self) -> &'static GroupDef {
        self.0
    }

    /// The `Content-Type` of its values.
    pub fn content_type(self) -> &'static str {
        self.0
            .content_type
            .get()
            .map_or("application/octet-stream", String::as_str)
    }

    /// Sets the content type learnt from the column's type, unless one is configured.
    pub fn learn_content_type(self, content_type: &str) {
        let _ = self.0.content_type.set(content_type.to_owned());
    }

    /// Whether changes in PostgreSQL reach this group through the change feed.
    pub fn feed_backed(self) -> bool {
        !self.0.invalidate.is_empty()
    }

    /// Whether the key passes the group's `key_pattern` (no pattern: every key does).
    pub fn accepts(self, key: &str) -> bool {
        self.0.key_pattern.as_ref().is_none_or(|p| p.is_match(key))
    }
}

impl PartialEq for Group {
    fn eq(&self, other: &Group) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Group {}

impl Hash for Group {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.index.hash(state);
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The groups of a node, fixed for its life.
#[derive(Debug, Clone, Copy)]
pub struct Groups(&'static [GroupDef]);

impl Groups {
    /// Builds (and leaks) the groups of a configuration.
    pub fn new(configs: &[GroupConfig]) -> Result<Groups, GroupError> {
        check_groups(configs)?;
        let defs = configs
            .iter()
            .enumerate()
            .map(|(index, c)| c.build(index))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Groups(Vec::leak(defs)))
    }

    /// Checks a configuration's groups as [`Groups::new`] does, without building (and leaking)
    /// them.
    pub fn check(configs: &[GroupConfig]) -> Result<(), GroupError> {
        check_groups(configs)?;
        configs.iter().try_for_each(|c| c.compile().map(drop))
    }

    /// The demo groups, `scores` and `products`, with these queries.
    pub fn demo_with(scores: &str, products: &str) -> Groups {
        let mut scores = GroupConfig::demo("scores", scores);
        scores.invalidate = vec![InvalidateConfig::new("scores", "name")];
        let mut products = GroupConfig::demo("products", products);
        products.invalidate = vec![InvalidateConfig::new("products", "id::text")];
        let defs = [(scores, Demo::Scores), (products, Demo::Products)]
            .into_iter()
            .enumerate()
            .map(|(index, (c, demo))| GroupDef {
                demo: Some(demo),
                ..c.build(index).expect("the demo groups are valid")
            })
            .collect();
        Groups(Vec::leak(defs))
    }

    /// The demo groups with their default queries (one copy per process).
    pub fn demo() -> Groups {
        static DEMO: OnceLock<Groups> = OnceLock::new();
        *DEMO.get_or_init(|| Groups::demo_with(SCORES_QUERY, PRODUCTS_QUERY))
    }

    pub fn get(self, name: &str) -> Option<Group> {
        self.0.iter().find(|d| d.name == name).map(Group)
    }

    /// The group `/api?key=K` reads without `&group=`: the first one (`scores` for the demo).
    pub fn default_group(self) -> Group {
        Group(&self.0[0])
    }

    pub fn all(self) -> impl Iterator<Item = Group> {
        self.0.iter().map(Group)
    }

    pub fn len(self) -> usize {
        self.0.len()
    }

    pub fn is_empty(self) -> bool {
        self.0.is_empty()
    }

    /// Their names, comma-separated (for error messages).
    pub fn names(self) -> String {
        self.all().map(Group::name).collect::<Vec<_>>().join(", ")
    }

    /// A digest of the definitions (name, query, freshness, pattern, budget, invalidations),
    /// so that members can tell they serve the same groups. Not the content type, which a
    /// node may only learn once its database answers.
    pub fn digest(self) -> String {
        let mut text = String::new();
        for d in self.0 {
            text.push_str(&format!(
                "{}\u{1}{}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{:?}\n",
                d.name,
                d.query,
                d.freshness,
                d.key_pattern.as_ref().map(regex::Regex::as_str),
                d.cache_bytes,
                d.demo,
                d.invalidate,
            ));
        }
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }
}

/// This node's digest of its groups, and whether it matches its cluster's (the leader's, for
/// a member; the member it follows, for a frontend). A mismatch is logged when it starts and
/// ends, and exported as `geecache_groups_mismatch`; the node keeps serving, so that a rolling
/// config change works.
#[derive(Debug, Clone)]
pub struct GroupsDigest {
    mine: std::sync::Arc<str>,
    mismatch: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl GroupsDigest {
    pub fn new(groups: Groups) -> GroupsDigest {
        metrics::gauge!("geecache_groups_mismatch").set(0.0);
        GroupsDigest {
            mine: groups.digest().into(),
            mismatch: Default::default(),
        }
    }

    pub fn mine(&self) -> &str {
        &self.mine
    }

    /// Whether the last digest compared was this node's.
    pub fn matches(&self) -> bool {
        !self.mismatch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Compares with the cluster's digest.
    pub fn compare(&self, theirs: &str) {
        if theirs.is_empty() {
            return;
        }
        let differs = theirs != &*self.mine;
        let was = self
            .mismatch
            .swap(differs, std::sync::atomic::Ordering::Relaxed);
        if differs != was {
            if differs {
                tracing::warn!(mine = %self.mine, cluster = theirs, "this node's [[group]] definitions differ from its cluster's; every node should carry the same groups");
            } else {
                tracing::info!(digest = %self.mine, "this node's groups match its cluster's again");
            }
        }
        metrics::gauge!("geecache_groups_mismatch").set(f64::from(u8::from(differs)));
    }
}

/// Why a `[[group]]` is refused; `field` names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group {group:?}: field `{field}`: {why}")]
pub struct GroupError {
    pub group: String,
    pub field: &'static str,
    pub why: String,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("{e} (use e.g. 500ms, 3s, 10m)")))
        })
        .transpose()
    }
}

/// A `[[group]]` of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// `[a-z0-9_-]`, 1 to 64 bytes.
    pub name: String,
    /// `$1` is the key as text; zero or one row of one column.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub ttl_jitter: f64,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_while_revalidate: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_if_error: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub negative_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// The tables whose changes invalidate the group's keys (the change feed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalidate: Vec<InvalidateConfig>,
}

/// `invalidate = [{ table = "users", key = "id::text" }]`: a change to a row of `table`
/// invalidates the key that the SQL expression `key` yields over that row (over the old row
/// and the new one, for an UPDATE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateConfig {
    pub table: String,
    pub key: String,
}

impl InvalidateConfig {
    pub fn new(table: &str, key: &str) -> InvalidateConfig {
        InvalidateConfig {
            table: table.into(),
            key: key.into(),
        }
    }
}

impl GroupConfig {
    pub fn demo(name: &str, query: &str) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            query: query.into(),
            // As the demo groups always answered: raw bytes.
            content_type: Some("application/octet-stream".into()),
            ttl: None,
            ttl_jitter: 0.0,
            stale_while_revalidate: None,
            stale_if_error: None,
            negative_ttl: None,
            key_pattern: None,
            cache_bytes: None,
            invalidate: Vec::new(),
        }
    }

    fn error(&self, field: &'static str, why: impl Into<String>) -> GroupError {
        GroupError {
            group: self.name.clone(),
            field,
            why: why.into(),
        }
    }

    /// Checks what one group's fields say.
    pub fn check(&self) -> Result<(), GroupError> {
        self.compile().map(|_| ())
    }

    /// Checks the group; its key pattern, compiled.
    fn compile(&self) -> Result<Option<regex::Regex>, GroupError> {
        if !valid_name(&self.name) {
            return Err(self.error("name", NAME_RULE));
        }
        if self.query.trim().is_empty() {
            return Err(self.error("query", "is empty"));
        }
        if !(0.0..1.0).contains(&self.ttl_jitter) {
            return Err(self.error("ttl_jitter", "must be within 0.0 and 1.0 (exclusive)"));
        }
        if self.ttl_jitter > 0.0 && self.ttl.is_none() {
            return Err(self.error("ttl_jitter", "needs a ttl"));
        }
        if self.ttl == Some(Duration::ZERO) {
            return Err(self.error("ttl", "must be longer than 0s (leave it out for none)"));
        }
        for (field, window) in [
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
        ] {
            if window.is_some_and(|w| !w.is_zero()) && self.ttl.is_none() {
                return Err(self.error(field, "needs a ttl (values never go stale without one)"));
            }
        }
        if let Some(ct) = &self.content_type
            && ct.parse::<mime_like::Mime>().is_err()
        {
            return Err(self.error("content_type", format!("{ct:?} is not a media type")));
        }
        if self.cache_bytes.is_some_and(|b| b < 1024) {
            return Err(self.error("cache_bytes", "must be at least 1024"));
        }
        for inv in &self.invalidate {
            table::TableName::parse(&inv.table).map_err(|e| self.error("invalidate", e))?;
            if inv.key.trim().is_empty() || inv.key.contains(';') {
                return Err(self.error(
                    "invalidate",
                    format!("key {:?} must be one SQL expression over the row", inv.key),
                ));
            }
        }
        self.key_pattern
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| self.error("key_pattern", format!("not a regex: {e}")))
    }

    /// Checks the group and builds its definition (its name leaked: groups live as long as
    /// the process).
    fn build(&self, index: usize) -> Result<GroupDef, GroupError> {
        let key_pattern = self.compile()?;
        let content_type = OnceLock::new();
        if let Some(ct) = &self.content_type {
            let _ = content_type.set(ct.clone());
        }
        Ok(GroupDef {
            index,
            name: String::leak(self.name.clone()),
            query: self.query.clone(),
            content_type,
            freshness: Freshness {
                ttl: self.ttl,
                ttl_jitter: self.ttl_jitter,
                stale_while_revalidate: self.stale_while_revalidate.unwrap_or_default(),
                stale_if_error: self.stale_if_error.unwrap_or_default(),
                negative_ttl: self.negative_ttl.unwrap_or_default(),
            },
            key_pattern,
            cache_bytes: self.cache_bytes,
            demo: None,
            invalidate: self
                .invalidate
                .iter()
                .map(|i| (i.table.clone(), i.key.clone()))
                .collect(),
        })
    }
}

/// Checks a list of groups as a whole: count, and names unique.
pub fn check_groups(configs: &[GroupConfig]) -> Result<(), GroupError> {
    if configs.len() > MAX_GROUPS {
        return Err(GroupError {
            group: configs[MAX_GROUPS].name.clone(),
            field: "name",
            why: format!("a node serves at most {MAX_GROUPS} groups"),
        });
    }
    for (i, c) in configs.iter().enumerate() {
        if configs[..i].iter().any(|o| o.name == c.name) {
            return Err(c.error("name", "another group has this name"));
        }
    }
    Ok(())
}

/// A media type as `Content-Type` takes it: `type/subtype` and optional parameters.
mod mime_like {
    pub struct Mime;

    impl std::str::FromStr for Mime {
        type Err = ();
        fn from_str(s: &str) -> Result<Mime, ()> {
            let essence = s.split(';').next().unwrap_or_default().trim();
            let token = |t: &str| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
            };
            let ok = essence
                .split_once('/')
                .is_some_and(|(t, st)| token(t) && token(st))
                && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if ok { Ok(Mime) } else { Err(()) }
        }
    }
}

/// Why a key is refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes, longer than the limit of {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("key contains the control character U+{0:04X}; keys may not contain controls")]
    Control(u32),
}

/// A key is 1 to `MAX_KEY_BYTES` bytes of UTF-8 without control characters (Unicode's Cc: NUL
/// to U+001F, DEL, U+0080 to U+009F). PostgreSQL refuses NUL in text, which turned a client's
/// `%00` into a source error; the others forge lines in logs and are no one's keys.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    match key.len() {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_BYTES => Err(KeyError::TooLong(n)),
        _ => match key.chars().find(|c| c.is_control()) {
            Some(c) => Err(KeyError::Control(c as u32)),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(toml: &str) -> Result<GroupDef, GroupError> {
        let c: GroupConfig = toml::from_str(toml).unwrap();
        c.check()?;
        c.build(0)
    }

    #[test]
    fn demo_group_names_round_trip() {
        let demo = Groups::demo();
        for g in demo.all() {
            assert_eq!(demo.get(g.name()), Some(g));
        }
        assert_eq!(demo.get("Scores"), None);
        assert_eq!(demo.get(""), None);
        assert_eq!(demo.default_group().name(), "scores");
        assert_eq!(
            demo.get("products").unwrap().def().demo,
            Some(Demo::Products)
        );
        assert_eq!(
            Groups::demo().digest(),
            demo.digest(),
            "one copy per process"
        );
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
    fn a_full_group_builds() {
        let g = group(
            r#"name = "users"
               query = "SELECT profile FROM users WHERE id = $1::uuid"
               content_type = "application/json"
               ttl = "10m"
               ttl_jitter = 0.1
               stale_while_revalidate = "30s"
               stale_if_error = "10m"
               negative_ttl = "5s"
               key_pattern = "^[0-9a-f-]{36}$"
               cache_bytes = 268435456"#,
        )
        .unwrap();
        assert_eq!(g.freshness.ttl, Some(Duration::from_secs(600)));
        assert_eq!(g.freshness.negative_ttl, Duration::from_secs(5));
        assert!(
            g.key_pattern
                .as_ref()
                .unwrap()
                .is_match("0e2b6d3c-6f0a-4a8b-9e7d-2c1f0a9b8c7d")
        );
        assert_eq!(g.cache_bytes, Some(256 << 20));
    }

    #[test]
    fn bad_groups_name_their_field() {
        let cases = [
            (
                r#"name = "Users"
                query = "q""#,
                "name",
            ),
            (
                r#"name = "u"
                query = "  ""#,
                "query",
            ),
            (
                r#"name = "u"
                query = "q"
                ttl = "1m"
                ttl_jitter = 1.5"#,
                "ttl_jitter",
            ),
            (
                r#"name = "u"
                query = "q"
                ttl_jitter = 0.1"#,
                "ttl_jitter",
            ),
            (
                r#"name = "u"
                query = "q"
                stale_if_error = "1m""#,
                "stale_if_error",
            ),
            (
                r#"name = "u"
                query = "q"
                key_pattern = "([a-z""#,
                "key_pattern",
            ),
            (
                r#"name = "u"
                query = "q"
                content_type = "json""#,
                "content_type",
            ),
            (
                r#"name = "u"
                query = "q"
                cache_bytes = 10"#,
                "cache_bytes",
            ),
        ];
        for (toml, field) in cases {
            let e = group(toml).unwrap_err();
            assert_eq!(e.field, field, "{toml}: {e}");
        }
        let dup: Vec<GroupConfig> = ["a", "b", "a"]
            .iter()
            .map(|n| GroupConfig::demo(n, "q"))
            .collect();
        assert_eq!(check_groups(&dup).unwrap_err().group, "a");
        let many: Vec<GroupConfig> = (0..=MAX_GROUPS)
            .map(|i| GroupConfig::demo(&format!("g{i}"), "q"))
            .collect();
        assert!(check_groups(&many).is_err());
    }
}
