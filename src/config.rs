//! Node configuration: built-in defaults < a TOML file (`--config`) < `GEECACHE_*` environment
//! variables < command-line flags. `config/default.toml` spells out the defaults.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::groups::Group;
use crate::ring::RingHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Embedded,
    Postgres,
}

/// A node holds a shard of the ring; a frontend holds none and asks the owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Node,
    Frontend,
}

/// How the request path reads the local cache on a hit.
///
/// `direct` reads moka from the HTTP worker's thread (moka is a concurrent map); `actor` asks
/// `ShardActor` through its mailbox. Measured by `load/bench-hit.sh`: see the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HitPath {
    Direct,
    Actor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Shortest peer secret accepted: long enough that it cannot be guessed over the network.
pub const MIN_SECRET_BYTES: usize = 16;
/// Largest `--max-value-bytes`: a cache entry's weight is a u32, and one value should never be
/// a large part of a node's memory.
pub const MAX_VALUE_BYTES: usize = 1 << 30;
/// Most virtual nodes per member (the ring also bounds its total points).
pub const MAX_VNODES: usize = 10_000;

/// A peer secret goes in an HTTP header: visible ASCII, no spaces, long enough.
fn check_secret(s: &str) -> anyhow::Result<()> {
    if s.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "the peer secret is {} characters; it must have at least {MIN_SECRET_BYTES} \
             (e.g. `openssl rand -hex 32`)",
            s.len()
        );
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("the peer secret must be printable ASCII without spaces");
    }
    Ok(())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 3s, 1m)"))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub role: Role,
    pub api_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// This node's peer URL, its name on the ring (e.g. `http://10.0.1.100:8001`).
    pub self_url: Option<String>,
    /// Static membership: every node's peer URL (this one included or not).
    pub peers: Vec<String>,
    pub vnodes: usize,
    /// Ring hash: crc32 (GeeCache-compatible) or xxh3 (better balanced).
    pub ring_hash: RingHash,
    /// Shared secret of the peer port: sent and accepted as `Authorization: Bearer`.
    pub peer_secret: Option<String>,
    /// Read the peer secret from this file instead (its first line).
    pub peer_secret_file: Option<std::path::PathBuf>,
    /// Further secrets the peer port accepts but does not send (rotation).
    pub peer_secret_accept: Vec<String>,
    /// Run the peer port without a secret: only to mix with GeeCache (Go) nodes, which cannot
    /// send one. Anyone who reaches the port can then read, poison and reconfigure the cache.
    pub insecure_open_peer_port: bool,
    /// Largest value accepted from the source or from a peer, in bytes.
    pub max_value_bytes: usize,
    #[serde(deserialize_with = "de_duration")]
    pub peer_timeout: Duration,
    /// Raft membership: candidates to find the cluster by (peer URLs, or `dns://NAME:PORT`).
    /// Empty: static membership (`peers`) or a lone node.
    pub seeds: Vec<String>,
    /// Raft id of this node; 0 derives one from `self_url`.
    pub node_id: u64,
    /// Where the Raft log lives.
    pub data_dir: std::path::PathBuf,
    /// A new cluster forms once this many candidates are visible.
    pub bootstrap_expect: usize,
    /// The leader removes a member it has not heard from for this long.
    #[serde(deserialize_with = "de_duration")]
    pub dead_after: Duration,
    /// This node's client API URL as others reach it (default: self_url's host, api port).
    pub advertise_api: Option<String>,
    pub cache_bytes: u64,
    /// Hot cache TTL: the staleness bound of keys cached away from their owner.
    #[serde(deserialize_with = "de_duration")]
    pub hot_ttl: Duration,
    /// Requests per second, counted on this node, that make a remote key hot.
    pub hot_min_qps: f64,
    pub hit_path: HitPath,
    /// Deadline of one client request that misses the cache.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Bound of the loader's mailbox; past it, misses are shed with 503.
    pub loader_mailbox: usize,
    /// Bound of distinct keys loading at once.
    pub max_in_flight: usize,
    /// HTTP worker threads per listener (0 = one per core).
    pub workers: usize,
    /// After SIGTERM: how long `/ready` says 503 before the listeners stop accepting.
    #[serde(deserialize_with = "de_duration")]
    pub drain_delay: Duration,
    /// After that: how long in-flight requests may take to finish.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// Print CloudWatch Embedded Metric Format lines on stdout.
    pub emf: bool,
    #[serde(deserialize_with = "de_duration")]
    pub emf_interval: Duration,
    pub source: SourceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub database_url: Option<String>,
    pub pool_size: usize,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub statement_timeout: Duration,
    pub queries: Queries,
    /// Embedded source: rows of `products` (ids 1..=products).
    pub products: u64,
    #[serde(deserialize_with = "de_duration")]
    pub embedded_latency: Duration,
    pub embedded_error_rate: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Queries {
    pub scores: String,
    pub products: String,
}

impl Queries {
    pub fn as_array(&self) -> [String; 2] {
        let mut out = [String::new(), String::new()];
        out[Group::Scores.index()] = self.scores.clone();
        out[Group::Products.index()] = self.products.clone();
        out
    }
}

impl Default for Queries {
    fn default() -> Self {
        Queries {
            scores: Group::Scores.default_query().into(),
            products: Group::Products.default_query().into(),
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Embedded,
            database_url: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(2),
            queries: Queries::default(),
            products: 1_000_000,
            embedded_latency: Duration::from_millis(5),
            embedded_error_rate: 0.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Node,
            api_addr: ([0, 0, 0, 0], 9999).into(),
            peer_addr: ([0, 0, 0, 0], 8001).into(),
            self_url: None,
            peers: Vec::new(),
            vnodes: 150,
            ring_hash: RingHash::Crc32,
            peer_secret: None,
            peer_secret_file: None,
            peer_secret_accept: Vec::new(),
            insecure_open_peer_port: false,
            max_value_bytes: 16 << 20,
            peer_timeout: Duration::from_secs(2),
            seeds: Vec::new(),
            node_id: 0,
            data_dir: "data".into(),
            bootstrap_expect: 3,
            dead_after: Duration::from_secs(10),
            advertise_api: None,
            cache_bytes: 64 << 20,
            hot_ttl: Duration::from_secs(10),
            hot_min_qps: 10.0,
            hit_path: HitPath::Direct,
            request_timeout: Duration::from_secs(5),
            loader_mailbox: 4096,
            max_in_flight: 10_000,
            workers: 0,
            drain_delay: Duration::from_millis(0),
            shutdown_timeout: Duration::from_secs(8),
            log_format: LogFormat::Json,
            emf: false,
            emf_interval: Duration::from_secs(60),
            source: SourceConfig::default(),
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("bad config {}: {e}", path.display()))
    }

    /// Replaces the host `auto` in the self URL (`http://auto:8001`) by this machine's first
    /// non-loopback address, as its hostname resolves (a container's /etc/hosts entry), and
    /// the host `ecs` by the task's IP from the ECS task metadata endpoint.
    pub async fn resolve_self(&mut self) -> anyhow::Result<()> {
        let Some(url) = &self.self_url else {
            return Ok(());
        };
        let Some(rest) = url.strip_prefix("http://auto:") else {
            return Ok(());
        };
        let port = rest.trim_end_matches('/').to_owned();
        let host = nix::unistd::gethostname()?
            .into_string()
            .map_err(|_| anyhow::anyhow!("hostname is not UTF-8"))?;
        let ip = tokio::net::lookup_host((host.as_str(), 0))
            .await?
            .map(|a| a.ip())
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            .ok_or_else(|| anyhow::anyhow!("--self http://auto: found no address for {host}"))?;
        self.self_url = Some(format!("http://{ip}:{port}"));
        Ok(())
    }

    /// Raft membership is on when seeds are given.
    pub fn uses_raft(&self) -> bool {
        !self.seeds.is_empty()
    }

    /// The Raft id: the configured one, or one derived from the self URL (never 0).
    pub fn raft_id(&self) -> u64 {
        match self.node_id {
            0 => {
                let url = self.self_url.as_deref().unwrap_or_default();
                (xxhash_rust::xxh3::xxh3_64(url.as_bytes()) >> 1).max(1)
            }
            id => id,
        }
    }

    /// The client API URL other nodes and tools use to reach this node.
    pub fn api_url(&self) -> String {
        if let Some(url) = &self.advertise_api {
            return url.clone();
        }
        let host = self
            .self_url
            .as_deref()
            .and_then(|u| u.split("://").nth(1))
            .and_then(|h| h.rsplit_once(':').map(|(h, _)| h))
            .unwrap_or("127.0.0.1");
        format!("http://{host}:{}", self.api_addr.port())
    }

    /// Reads `peer_secret_file` into `peer_secret`.
    pub fn load_secret(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.peer_secret_file else {
            return Ok(());
        };
        if self.peer_secret.is_some() {
            anyhow::bail!("give --peer-secret or --peer-secret-file, not both");
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the peer secret file {}: {e}", path.display())
        })?;
        let secret = text.lines().next().unwrap_or_default().trim().to_owned();
        if secret.is_empty() {
            anyhow::bail!("the peer secret file {} is empty", path.display());
        }
        self.peer_secret = Some(secret);
        Ok(())
    }

    /// Checks what the types cannot: a usable combination of settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.peer_secret, self.insecure_open_peer_port) {
            (None, false) => anyhow::bail!(
                "the peer port needs a secret: set --peer-secret, GEECACHE_PEER_SECRET or \
                 --peer-secret-file (at least {MIN_SECRET_BYTES} characters, the same on every node; \
                 `geecache up` makes one), or run it open with --insecure-open-peer-port \
                 (only to mix with GeeCache (Go) nodes: anyone who reaches the port can then \
                 poison and reconfigure the cache)"
            ),
            (Some(_), true) => {
                anyhow::bail!("--insecure-open-peer-port and a peer secret exclude each other")
            }
            _ => {}
        }
        for s in self.peer_secret.iter().chain(&self.peer_secret_accept) {
            check_secret(s)?;
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES {
            anyhow::bail!("--max-value-bytes must be within 1..={MAX_VALUE_BYTES}");
        }
        if self.vnodes > MAX_VNODES {
            anyhow::bail!("--vnodes must be at most {MAX_VNODES}");
        }
        if self.source.kind == SourceKind::Postgres && self.source.database_url.is_none() {
            anyhow::bail!("--source postgres needs --database-url (or GEECACHE_DATABASE_URL)");
        }
        if self.cache_bytes < 1024 {
            anyhow::bail!("--cache-bytes must be at least 1024");
        }
        if self.vnodes == 0 {
            anyhow::bail!("--vnodes must be at least 1");
        }
        if self.role == Role::Node && !self.peers.is_empty() && self.self_url.is_none() {
            anyhow::bail!("--peers needs --self (this node's own peer URL, as the others list it)");
        }
        if self.role == Role::Frontend && self.peers.is_empty() && self.seeds.is_empty() {
            anyhow::bail!("--role frontend needs --peers or --seeds (the nodes it asks)");
        }
        if !self.seeds.is_empty() && !self.peers.is_empty() {
            anyhow::bail!("use --seeds (Raft membership) or --peers (static membership), not both");
        }
        if self.role == Role::Node && !self.seeds.is_empty() && self.self_url.is_none() {
            anyhow::bail!("--seeds needs --self (this node's own peer URL)");
        }
        if self.bootstrap_expect == 0 {
            anyhow::bail!("--bootstrap-expect must be at least 1");
        }
        for url in self.peers.iter().chain(&self.self_url) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("peer URL {url:?} must start with http:// or https://");
            }
        }
        if !(0.0..=1.0).contains(&self.source.embedded_error_rate) {
            anyhow::bail!("embedded_error_rate must be within 0.0..=1.0");
        }
        if self.loader_mailbox == 0 || self.max_in_flight == 0 {
            anyhow::bail!("loader_mailbox and max_in_flight must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let file = Config::from_file(&path).unwrap();
        // Debug output covers every field, so a default changed in one place only fails here.
        assert_eq!(format!("{file:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        assert!(toml::from_str::<Config>("cache_byte = 5").is_err());
        assert!(toml::from_str::<Config>("request_timeout = \"5 parsecs\"").is_err());
        let c: Config = toml::from_str("request_timeout = \"250ms\"").unwrap();
        assert_eq!(c.request_timeout, Duration::from_millis(250));
    }

    #[test]
    fn postgres_needs_a_url() {
        let mut c = Config {
            peer_secret: Some("0123456789abcdef".into()),
            ..Config::default()
        };
        c.source.kind = SourceKind::Postgres;
        assert!(c.validate().is_err());
        c.source.database_url = Some("postgres://localhost/x".into());
        assert!(c.validate().is_ok());
    }
}
