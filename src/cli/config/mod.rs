//! Node configuration: built-in defaults < a TOML file (`--config`) < `GEECACHE_*` environment
//! variables < command-line flags.
//!
//! One struct is both the TOML schema (serde) and the flags (clap): a setting is declared once,
//! with its doc comment (the `--help` text), its flag, its variable and its default. The
//! defaults are clap's; `Config::default()` reads them back, and a test holds
//! `config/default.toml` equal to them. Layering: the file is read into a `Config`; then every
//! flag or variable that was actually given (clap's value source) replaces the file's value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::group::{GroupConfig, Groups, check_groups};
use crate::ring::RingHash;

/// Shortest peer secret accepted: long enough that it cannot be guessed over the network.
pub const MIN_SECRET_BYTES: usize = 16;
/// Largest `--max-value-bytes`: a cache entry's weight is a u32, and one value should never be
/// a large part of a node's memory.
pub const MAX_VALUE_BYTES: usize = 1 << 30;
/// Most virtual nodes per member (the ring also bounds its total points).
pub const MAX_VNODES: usize = 10_000;
/// HTTP workers per listener (and loaders) at most.
pub const MAX_WORKERS: usize = 256;
/// Connections to PostgreSQL at most (its own default `max_connections` is 100).
pub const MAX_POOL_SIZE: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Embedded,
    Postgres,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Embedded => "embedded",
            SourceKind::Postgres => "postgres",
        }
    }
}

/// A node holds a shard of the ring; a frontend holds none and asks the owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Node,
    Frontend,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Frontend => "frontend",
        }
    }
}

pub use crate::telemetry::LogFormat;

/// A rate: a finite number, 0 or more (`NaN`, `inf` and negatives are refused here, by name).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate: a number of requests per second, 0 or more"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 3s, 1m)"))
}

/// Durations in the TOML file are strings as the flags take them: `"500ms"`, `"3s"`, `"1m"`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Every setting of a node. Flags in `geecache node --help`, keys in `config/default.toml`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// node: holds a shard of the ring; frontend: holds none and asks the owners.
    #[arg(long, env = "GEECACHE_ROLE", value_enum, default_value_t = Role::Node)]
    pub role: Role,
    /// Client API listener: /api, /health, /ready, /metrics, /cluster.
    #[arg(long, env = "GEECACHE_API_ADDR", default_value = "0.0.0.0:9999")]
    pub api_addr: SocketAddr,
    /// Peer protocol and Raft listener; never expose it publicly.
    #[arg(long, env = "GEECACHE_PEER_ADDR", default_value = "0.0.0.0:8001")]
    pub peer_addr: SocketAddr,
    /// This node's peer URL, its name on the ring, e.g. http://10.0.1.100:8001; the host
    /// `auto` is this machine's address, `ecs` the task's (ECS task metadata).
    #[arg(long = "self", env = "GEECACHE_SELF")]
    pub self_url: Option<String>,
    /// Static membership: every node's peer URL, comma-separated.
    #[arg(long, env = "GEECACHE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Raft membership: candidates to find the cluster by, comma-separated peer URLs,
    /// dns://NAME:PORT, cloudmap://NAMESPACE/SERVICE:PORT or ecs://CLUSTER/SERVICE:PORT.
    #[arg(long, env = "GEECACHE_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Raft id of this node; 0 derives one from --self.
    #[arg(long, env = "GEECACHE_NODE_ID", default_value_t = 0)]
    pub node_id: u64,
    /// Directory of the Raft log.
    #[arg(long, env = "GEECACHE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// A new cluster forms once this many candidates see each other.
    #[arg(long, env = "GEECACHE_BOOTSTRAP_EXPECT", default_value_t = 3)]
    pub bootstrap_expect: usize,
    /// The leader removes a member silent for this long.
    #[arg(long, env = "GEECACHE_DEAD_AFTER", value_parser = parse_duration, default_value = "10s")]
    #[serde(with = "duration")]
    pub dead_after: Duration,
    /// This node's client API URL as others reach it (default: --self's host, the API port).
    #[arg(long, env = "GEECACHE_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// Virtual nodes per member on the hash ring.
    #[arg(long, env = "GEECACHE_VNODES", default_value_t = 150)]
    pub vnodes: usize,
    /// Ring hash: crc32 (GeeCache-compatible) or xxh3 (better balanced).
    #[arg(long, env = "GEECACHE_RING_HASH", value_enum, default_value_t = RingHash::Crc32)]
    pub ring_hash: RingHash,
    /// Shared secret of the peer port (Authorization: Bearer), at least 16 characters, the
    /// same on every node. Required unless --insecure-open-peer-port.
    #[arg(long, env = "GEECACHE_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,
    /// Read the peer secret from this file (its first line) instead.
    #[arg(long, env = "GEECACHE_PEER_SECRET_FILE")]
    pub peer_secret_file: Option<PathBuf>,
    /// Further peer secrets accepted but not sent, comma-separated (rotation).
    #[arg(
        long,
        env = "GEECACHE_PEER_SECRET_ACCEPT",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub peer_secret_accept: Vec<String>,
    /// Run the peer port without a secret. Only to mix with GeeCache (Go) nodes: anyone who
    /// reaches the port can then read, poison and reconfigure the cache.
    #[arg(long, env = "GEECACHE_INSECURE_OPEN_PEER_PORT")]
    pub insecure_open_peer_port: bool,
    /// Token that DELETE on the client API needs (Authorization: Bearer), at least 16
    /// characters; without one, DELETE answers 403.
    #[arg(long, env = "GEECACHE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest value accepted from the source or a peer, in bytes.
    #[arg(long, env = "GEECACHE_MAX_VALUE_BYTES", default_value_t = 16 << 20)]
    pub max_value_bytes: usize,
    /// Values of groups with `invalidate` entries are not answered as fresh while the node has
    /// not read the change feed for this long (the group's stale windows apply from then).
    #[arg(long, env = "GEECACHE_MAX_STALENESS", value_parser = parse_duration, default_value = "5s")]
    #[serde(with = "duration")]
    pub max_staleness: Duration,
    /// How often a node polls the change feed: its latency, and its load on PostgreSQL (a
    /// small index probe per poll).
    #[arg(long, env = "GEECACHE_FEED_POLL", value_parser = parse_duration, default_value = "5ms")]
    #[serde(with = "duration")]
    pub feed_poll: Duration,
    /// Rows of the change feed older than this are pruned even if a node has not read them
    /// (that node then drops its feed-backed groups).
    #[arg(long, env = "GEECACHE_FEED_RETENTION", value_parser = parse_duration, default_value = "1h")]
    #[serde(with = "duration")]
    pub feed_retention: Duration,
    /// After a ring change, for this long, a new owner's miss on a key that moved asks its
    /// previous owner before the source (a warm handoff), and what a leaving node sent is
    /// kept; 0s: never (a leaving node sends nothing, and nothing a neighbour sends is kept).
    #[arg(long, env = "GEECACHE_HANDOFF_GRACE", value_parser = parse_duration, default_value = "60s")]
    #[serde(with = "duration")]
    pub handoff_grace: Duration,
    /// After SIGTERM and leaving the ring: send this node's values to their new owners (for
    /// half of this at most), then answer their peeks: for 0.3 s when every value went,
    /// else until they stop coming (1 s without one), at most this long in all.
    #[arg(long, env = "GEECACHE_HANDOFF_DRAIN", value_parser = parse_duration, default_value = "5s")]
    #[serde(with = "duration")]
    pub handoff_drain: Duration,
    /// On leave, send this node's values to their new owners; when a node joins (or comes
    /// back), send it what this node holds for it, and drop that here (`false`: neither,
    /// only peeks, as `load/bench.sh handoff --variants pull` compares).
    #[arg(long, env = "GEECACHE_HANDOFF_SEND", default_value_t = true, action = clap::ArgAction::Set)]
    pub handoff_send: bool,
    /// Deadline of a fetch from a peer.
    #[arg(long, env = "GEECACHE_PEER_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    #[serde(with = "duration")]
    pub peer_timeout: Duration,
    /// Most fetches sent to one peer in one request (1..=64): fetches that wait for a busy
    /// peer at the same time go out together. 1: one request per fetch.
    #[arg(long, env = "GEECACHE_PEER_BATCH", default_value_t = 64)]
    pub peer_batch: usize,
    /// Memory of the caches in bytes (key + value + per-entry overhead), hot cache included.
    #[arg(long, env = "GEECACHE_CACHE_BYTES", default_value_t = 64 << 20)]
    pub cache_bytes: u64,
    /// Longest life of a copy of a key cached away from its owner.
    #[arg(long, env = "GEECACHE_HOT_TTL", value_parser = parse_duration, default_value = "10s")]
    #[serde(with = "duration")]
    pub hot_ttl: Duration,
    /// Requests per second, here or on every member, that make a remote key hot.
    #[arg(long, env = "GEECACHE_HOT_MIN_QPS", value_parser = parse_rate, default_value_t = 10.0)]
    pub hot_min_qps: f64,
    /// Deadline of a client request that misses the cache.
    #[arg(long, env = "GEECACHE_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Misses queued at a loader before they are shed with 503.
    #[arg(long, env = "GEECACHE_LOADER_MAILBOX", default_value_t = 4096)]
    pub loader_mailbox: usize,
    /// Distinct keys loading at once before misses are shed with 503.
    #[arg(long, env = "GEECACHE_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// HTTP worker threads per listener, and loaders; 0: one per core.
    #[arg(long, env = "GEECACHE_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Pending connections the kernel queues per listener (capped by net.core.somaxconn).
    #[arg(long, env = "GEECACHE_LISTEN_BACKLOG", default_value_t = 2048)]
    pub listen_backlog: u32,
    /// Open connections per listener before it stops accepting (the rest wait in the
    /// backlog); 0: from the descriptor limit, leaving room for the node's own connections.
    #[arg(long, env = "GEECACHE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// A connection that has not sent its first whole request head this long after it opened
    /// is closed (408): the bound on a slowloris.
    #[arg(long, env = "GEECACHE_CLIENT_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    #[serde(with = "duration")]
    pub client_request_timeout: Duration,
    /// An idle keep-alive connection is closed after this long. Longer than the idle timeout
    /// of whatever pools connections to the node (an ALB's is 60 s), so that the node never
    /// closes a connection a client is about to send on: that race is a client's
    /// `IncompleteMessage` or an ALB's 502. The peer client keeps its own idle connections
    /// half as long.
    #[arg(long, env = "GEECACHE_KEEP_ALIVE", value_parser = parse_duration, default_value = "75s")]
    #[serde(with = "duration")]
    pub keep_alive: Duration,
    /// After SIGTERM: how long /ready answers 503 before the listeners stop accepting.
    #[arg(long, env = "GEECACHE_DRAIN_DELAY", value_parser = parse_duration, default_value = "0s")]
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// Then: how long in-flight requests get to finish.
    #[arg(long, env = "GEECACHE_SHUTDOWN_TIMEOUT", value_parser = parse_duration, default_value = "8s")]
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Logs on stdout: JSON lines (CloudWatch-ready) or pretty; RUST_LOG filters.
    #[arg(long, env = "GEECACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Also print CloudWatch Embedded Metric Format lines on stdout (namespace GeeCache).
    #[arg(long, env = "GEECACHE_EMF")]
    pub emf: bool,
    /// How often an EMF line is printed.
    #[arg(long, env = "GEECACHE_EMF_INTERVAL", value_parser = parse_duration, default_value = "60s")]
    #[serde(with = "duration")]
    pub emf_interval: Duration,
    #[command(flatten)]
    pub source: SourceConfig,
    /// The operator's groups: `[[group]]` tables of the file. None: the demo groups.
    #[arg(skip)]
    #[serde(rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupConfig>,
}

/// The source of truth behind the cache (the `[source]` table of the file).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Source of truth: embedded (deterministic demo rows) or postgres.
    #[arg(long = "source", id = "kind", env = "GEECACHE_SOURCE", value_enum, default_value_t = SourceKind::Embedded)]
    pub kind: SourceKind,
    /// PostgreSQL connection URL (postgres://user@host:port/db).
    #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections to PostgreSQL at most (a node opens more only when those it has are full).
    #[arg(long, env = "GEECACHE_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Queries one PostgreSQL connection takes at once, pipelined, before the node opens
    /// another; a slow query delays those queued behind it on its connection.
    #[arg(long, env = "GEECACHE_PIPELINE", default_value_t = 32)]
    pub pipeline: usize,
    /// Deadline of a new PostgreSQL connection.
    #[arg(long, env = "GEECACHE_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Deadline of one query (PostgreSQL's statement_timeout).
    #[arg(long, env = "GEECACHE_STATEMENT_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    #[serde(with = "duration")]
    pub statement_timeout: Duration,
    /// The query of each demo group ($1 is the key as text); the file's [source.queries].
    #[arg(skip)]
    pub queries: Queries,
    /// Embedded source: rows of products (ids 1..=N).
    #[arg(long, env = "GEECACHE_PRODUCTS", default_value_t = 1_000_000)]
    pub products: u64,
    /// Embedded source: latency of a fetch, as a slow database would have.
    #[arg(long, env = "GEECACHE_EMBEDDED_LATENCY", value_parser = parse_duration, default_value = "5ms")]
    #[serde(with = "duration")]
    pub embedded_latency: Duration,
    /// Embedded source: fraction of fetches that fail (0.0..=1.0), for failure drills.
    #[arg(long, env = "GEECACHE_EMBEDDED_ERROR_RATE", default_value_t = 0.0)]
    pub embedded_error_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Queries {
    pub scores: String,
    pub products: String,
}

impl Default for Queries {
    fn default() -> Self {
        use crate::source::demo::{PRODUCTS_QUERY, SCORES_QUERY};
        Queries {
            scores: SCORES_QUERY.into(),
            products: PRODUCTS_QUERY.into(),
        }
    }
}

/// The defaults clap declares, without reading the environment.
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|a| a.env(None));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse")
}

impl Default for Config {
    fn default() -> Self {
        clap_defaults()
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The `geecache node` flags: a config file, and every setting.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// TOML file of settings (see config/default.toml); flags and GEECACHE_* variables override
    /// what it says.
    #[arg(long, env = "GEECACHE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Config,
}

impl NodeArgs {
    /// Layers defaults, the config file and the flags and variables that were given (`matches`
    /// are the `node` subcommand's) into one checked config.
    pub fn into_config(self, matches: &ArgMatches) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        c.overlay(&self.settings, matches)?;
        c.load_secret()?;
        c.validate()?;
        Ok(c)
    }
}

/// The parsed flags of `geecache node ARGS...` (tests).
pub fn node_config<I, T>(args: I) -> anyhow::Result<Config>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cmd = NodeArgs::augment_args(clap::Command::new("node").no_binary_name(true));
    let matches = cmd.try_get_matches_from(args)?;
    NodeArgs::from_arg_matches(&matches)?.into_config(&matches)
}

impl Config {
    /// Reads a config file. Its errors name the file, and for a `[[group]]` the group and
    /// the field.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Config::from_toml(&path.display().to_string(), &text)
    }

    /// Parses a config file's text; `file` names it in the errors.
    pub fn from_toml(file: &str, text: &str) -> anyhow::Result<Config> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("bad config {file}: {e}"))?;
        let groups = table.remove("group");
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("bad config {file}: {e}"))?;
        if let Some(groups) = groups {
            config.groups =
                parse_groups(groups).map_err(|e| anyhow::anyhow!("bad config {file}: {e}"))?;
        }
        if !config.groups.is_empty() && config.source.queries != Queries::default() {
            anyhow::bail!(
                "bad config {file}: [source.queries] sets the demo groups' queries; with \
                 [[group]] tables, give each group its query instead"
            );
        }
        Ok(config)
    }

    /// The node's groups: the configured ones, else the demo groups with `[source.queries]`.
    pub fn build_groups(&self) -> anyhow::Result<Groups> {
        if self.groups.is_empty() {
            let q = &self.source.queries;
            return Ok(if *q == Queries::default() {
                Groups::demo()
            } else {
                Groups::demo_with(&q.scores, &q.products)
            });
        }
        Ok(Groups::new(&self.groups)?)
    }

    /// Replaces every setting that `matches` says was given on the command line or in the
    /// environment by `flags`' value.
    fn overlay(&mut self, flags: &Config, matches: &ArgMatches) -> anyhow::Result<()> {
        let mut base = serde_json::to_value(&*self)?;
        let given = serde_json::to_value(flags)?;
        for id in matches.ids() {
            let id = id.as_str();
            let from_user = matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !from_user {
                continue;
            }
            if let Some(v) = given.get(id) {
                base[id] = v.clone();
            } else if let Some(v) = given["source"].get(id) {
                base["source"][id] = v.clone();
            }
        }
        *self = serde_json::from_value(base)?;
        Ok(())
    }

    /// Replaces the host `auto` in the self URL (`http://auto:8001`) by this machine's first
    /// non-loopback address, as its hostname resolves (a container's /etc/hosts entry), and
    /// the host `ecs` (`http://ecs:8001`) by the task's IP from the ECS task metadata endpoint
    /// (`ECS_CONTAINER_METADATA_URI_V4`).
    pub async fn resolve_self(&mut self) -> anyhow::Result<()> {
        let Some(url) = &self.self_url else {
            return Ok(());
        };
        let (host, port) = match url.strip_prefix("http://").and_then(|r| r.split_once(':')) {
            Some((host @ ("auto" | "ecs"), port)) => (host, port.trim_end_matches('/').to_owned()),
            _ => return Ok(()),
        };
        let ip = if host == "ecs" {
            let uri = std::env::var("ECS_CONTAINER_METADATA_URI_V4").map_err(|_| {
                anyhow::anyhow!("--self http://ecs:{port} needs ECS_CONTAINER_METADATA_URI_V4 (set by ECS in every task)")
            })?;
            crate::raft::discovery::ecs_task_ip(&uri)
                .await
                .map_err(|e| anyhow::anyhow!("--self http://ecs:{port}: {e}"))?
        } else {
            let name = nix::unistd::gethostname()?
                .into_string()
                .map_err(|_| anyhow::anyhow!("hostname is not UTF-8"))?;
            tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
                .ok_or_else(|| anyhow::anyhow!("--self http://auto: found no address for {name}"))?
                .to_string()
        };
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
        self.validate_secrets()?;
        self.validate_membership()?;
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES {
            anyhow::bail!("--max-value-bytes must be within 1..={MAX_VALUE_BYTES}");
        }
        if self.source.kind == SourceKind::Postgres && self.source.database_url.is_none() {
            anyhow::bail!("--source postgres needs --database-url (or GEECACHE_DATABASE_URL)");
        }
        if self.cache_bytes < 1024 {
            anyhow::bail!("--cache-bytes must be at least 1024");
        }
        if !(0.0..=1.0).contains(&self.source.embedded_error_rate) {
            anyhow::bail!("embedded_error_rate must be within 0.0..=1.0");
        }
        if self.feed_poll < Duration::from_millis(1) {
            anyhow::bail!("--feed-poll must be at least 1ms");
        }
        // A node that polls less often than --max-staleness never has a fresh value of a
        // feed-backed group; a retention of 0 prunes what nobody has read yet, and every node
        // then drops its groups at each prune.
        if self.feed_poll >= self.max_staleness {
            anyhow::bail!(
                "--feed-poll ({:?}) must be shorter than --max-staleness ({:?})",
                self.feed_poll,
                self.max_staleness
            );
        }
        if self.feed_retention.is_zero() {
            anyhow::bail!("--feed-retention must be more than 0s");
        }
        if self.loader_mailbox == 0 || self.max_in_flight == 0 {
            anyhow::bail!("loader_mailbox and max_in_flight must be at least 1");
        }
        self.validate_limits()
    }

    /// Numbers that parse but make no node: zero deadlines, a thread per descriptor.
    fn validate_limits(&self) -> anyhow::Result<()> {
        if self.workers > MAX_WORKERS {
            anyhow::bail!(
                "--workers {} is more than {MAX_WORKERS} (each is a thread per listener, with \
                 its own loader and connections); 0 means one per core",
                self.workers
            );
        }
        let s = &self.source;
        if s.pool_size == 0 || s.pool_size > MAX_POOL_SIZE {
            anyhow::bail!("--pool-size must be within 1..={MAX_POOL_SIZE}");
        }
        if s.pipeline == 0 || s.pipeline > 1024 {
            anyhow::bail!("--pipeline must be within 1..=1024");
        }
        if !(1..=crate::peer::wire::FETCH_BATCH_MAX).contains(&self.peer_batch) {
            anyhow::bail!(
                "--peer-batch must be within 1..={}",
                crate::peer::wire::FETCH_BATCH_MAX
            );
        }
        let positive = [
            ("--request-timeout", self.request_timeout),
            ("--peer-timeout", self.peer_timeout),
            ("--dead-after", self.dead_after),
            ("--connect-timeout", s.connect_timeout),
            ("--statement-timeout", s.statement_timeout),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--emf-interval", self.emf_interval),
            ("--max-staleness", self.max_staleness),
            ("--hot-ttl", self.hot_ttl),
            ("--client-request-timeout", self.client_request_timeout),
            ("--keep-alive", self.keep_alive),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            anyhow::bail!("{flag} must be more than 0s");
        }
        if self.listen_backlog == 0 || self.listen_backlog > 65_535 {
            anyhow::bail!("--listen-backlog must be within 1..=65535");
        }
        if !self.hot_min_qps.is_finite() || self.hot_min_qps < 0.0 {
            anyhow::bail!("--hot-min-qps must be a number of requests per second, 0 or more");
        }
        Ok(())
    }

    fn validate_secrets(&self) -> anyhow::Result<()> {
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
            check_secret("peer secret", s)?;
        }
        if let Some(token) = &self.admin_token {
            check_secret("admin token", token)?;
        }
        check_groups(&self.groups)?;
        for g in &self.groups {
            g.check()?;
        }
        Ok(())
    }

    fn validate_membership(&self) -> anyhow::Result<()> {
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            anyhow::bail!("--vnodes must be within 1..={MAX_VNODES}");
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
        check_aws_seeds(&self.seeds, cfg!(feature = "aws"))
    }
}

/// AWS seeds need a build with the `aws` feature; without it, say so at startup.
fn check_aws_seeds(seeds: &[String], have_aws: bool) -> anyhow::Result<()> {
    match seeds
        .iter()
        .find(|s| crate::raft::discovery::aws_seed(s).is_some())
    {
        Some(seed) if !have_aws => {
            anyhow::bail!("--seeds {seed}: {}", crate::raft::discovery::NO_AWS)
        }
        _ => Ok(()),
    }
}

/// A secret goes in an HTTP header: visible ASCII, no spaces, long enough.
fn check_secret(what: &str, s: &str) -> anyhow::Result<()> {
    if s.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "the {what} is {} characters; it must have at least {MIN_SECRET_BYTES} \
             (e.g. `openssl rand -hex 32`, or `geecache secret init FILE`)",
            s.len()
        );
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("the {what} must be printable ASCII without spaces");
    }
    Ok(())
}

/// The `[[group]]` tables, each read with the path of a field that fails, then checked.
fn parse_groups(groups: toml::Value) -> anyhow::Result<Vec<GroupConfig>> {
    let toml::Value::Array(tables) = groups else {
        anyhow::bail!("`group` must be an array of tables: write [[group]]");
    };
    let mut out = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", i + 1), |n| format!("{n:?}"));
        let group: GroupConfig = serde_path_to_error::deserialize(table).map_err(|e| {
            match e.path().to_string().as_str() {
                "" | "." => anyhow::anyhow!("group {name}: {}", e.inner()),
                field => anyhow::anyhow!("group {name}: field `{field}`: {}", e.inner()),
            }
        })?;
        group.check()?;
        out.push(group);
    }
    check_groups(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
