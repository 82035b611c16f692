//! The command line: `geecache node`, `geecache up`, `geecache db seed`.
//!
//! Every node flag is optional and also read from a `GEECACHE_*` variable; what is given
//! overrides the config file, which overrides the built-in defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, HitPath, LogFormat, Role, SourceKind, parse_duration};
use crate::ring::RingHash;

#[derive(Debug, Parser)]
#[command(
    name = "geecache",
    version,
    about = "A distributed read-through cache in front of PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one cache node (or a frontend with --role frontend).
    Node(Box<NodeArgs>),
    /// Run a local cluster on 127.0.0.1: N nodes and a frontend on :9999, until Ctrl-C.
    Up(UpArgs),
    /// Exit 0 when a URL answers 2xx within 2 s (the container HEALTHCHECK).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:9999/health")]
        url: String,
    },
    /// Cluster tools.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Database tools.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Peer secret tools.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Write a new random peer secret (32 bytes, hex) to FILE, readable by this user only,
    /// unless FILE already holds one. Point every node at it with --peer-secret-file.
    Init { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print a node's view of the cluster (leader, term, epoch, members) as a table.
    Status {
        /// A node's client API address.
        #[arg(long, default_value = "127.0.0.1:9999")]
        addr: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the tables and fill them with the rows the embedded source serves.
    Seed {
        #[arg(long, env = "GEECACHE_DATABASE_URL")]
        database_url: String,
        /// Rows of `products` (ids 1..=rows).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Cache nodes to start (peer ports 8001.., client ports 9001..).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    #[arg(long, value_enum, default_value = "embedded")]
    pub source: SourceKind,
    #[arg(long, env = "GEECACHE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Client port of the frontend.
    #[arg(long, default_value_t = 9999)]
    pub port: u16,
    /// First peer port; node i uses peer_port + i.
    #[arg(long, default_value_t = 8001)]
    pub peer_port: u16,
    /// First client port of the nodes; node i uses api_port + i.
    #[arg(long, default_value_t = 9001)]
    pub api_port: u16,
    #[arg(long, value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Keep the nodes' Raft logs here (default: a temporary directory removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra flags passed to every node and the frontend (after `--`).
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

#[derive(Debug, Default, Args)]
pub struct NodeArgs {
    /// TOML file of settings (see config/default.toml).
    #[arg(long, env = "GEECACHE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "GEECACHE_ROLE", value_enum)]
    pub role: Option<Role>,
    /// Client API listener [default: 0.0.0.0:9999].
    #[arg(long, env = "GEECACHE_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Peer protocol listener [default: 0.0.0.0:8001].
    #[arg(long, env = "GEECACHE_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// This node's peer URL, its name on the ring, e.g. http://10.0.1.100:8001.
    #[arg(long = "self", env = "GEECACHE_SELF")]
    pub self_url: Option<String>,
    /// Every node's peer URL, comma-separated (static membership).
    #[arg(long, env = "GEECACHE_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Raft membership: candidates to find the cluster by, comma-separated peer URLs or
    /// dns://NAME:PORT.
    #[arg(long, env = "GEECACHE_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Raft id of this node (0: derived from --self) [default: 0].
    #[arg(long, env = "GEECACHE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory of the Raft log [default: data].
    #[arg(long, env = "GEECACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A new cluster forms once this many candidates see each other [default: 3].
    #[arg(long, env = "GEECACHE_BOOTSTRAP_EXPECT")]
    pub bootstrap_expect: Option<usize>,
    /// The leader removes a member silent for this long [default: 10s].
    #[arg(long, env = "GEECACHE_DEAD_AFTER", value_parser = parse_duration)]
    pub dead_after: Option<Duration>,
    /// This node's client API URL as others reach it.
    #[arg(long, env = "GEECACHE_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// Virtual nodes per member [default: 150].
    #[arg(long, env = "GEECACHE_VNODES")]
    pub vnodes: Option<usize>,
    /// Ring hash: crc32 (GeeCache-compatible) or xxh3 (better balanced) [default: crc32].
    #[arg(long, env = "GEECACHE_RING_HASH", value_enum)]
    pub ring_hash: Option<RingHash>,
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
    pub peer_secret_accept: Option<Vec<String>>,
    /// Run the peer port without a secret. Only to mix with GeeCache (Go) nodes: anyone who
    /// reaches the port can then read, poison and reconfigure the cache.
    #[arg(long, env = "GEECACHE_INSECURE_OPEN_PEER_PORT")]
    pub insecure_open_peer_port: bool,
    /// Largest value accepted from the source or a peer, in bytes [default: 16777216].
    #[arg(long, env = "GEECACHE_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    #[arg(long, env = "GEECACHE_PEER_TIMEOUT", value_parser = parse_duration)]
    pub peer_timeout: Option<Duration>,
    /// Cache size in bytes, hot cache included [default: 67108864].
    #[arg(long, env = "GEECACHE_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    #[arg(long, env = "GEECACHE_HOT_TTL", value_parser = parse_duration)]
    pub hot_ttl: Option<Duration>,
    #[arg(long, env = "GEECACHE_HOT_MIN_QPS")]
    pub hot_min_qps: Option<f64>,
    #[arg(long, env = "GEECACHE_HIT_PATH", value_enum)]
    pub hit_path: Option<HitPath>,
    #[arg(long, env = "GEECACHE_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    #[arg(long, env = "GEECACHE_LOADER_MAILBOX")]
    pub loader_mailbox: Option<usize>,
    #[arg(long, env = "GEECACHE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    #[arg(long, env = "GEECACHE_WORKERS")]
    pub workers: Option<usize>,
    #[arg(long, env = "GEECACHE_DRAIN_DELAY", value_parser = parse_duration)]
    pub drain_delay: Option<Duration>,
    #[arg(long, env = "GEECACHE_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    #[arg(long, env = "GEECACHE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Print CloudWatch Embedded Metric Format lines on stdout (namespace GeeCache).
    #[arg(long, env = "GEECACHE_EMF")]
    pub emf: bool,
    #[arg(long, env = "GEECACHE_EMF_INTERVAL", value_parser = parse_duration)]
    pub emf_interval: Option<Duration>,
    /// Source of truth [default: embedded].
    #[arg(long, env = "GEECACHE_SOURCE", value_enum)]
    pub source: Option<SourceKind>,
    #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "GEECACHE_POOL_SIZE")]
    pub pool_size: Option<usize>,
    #[arg(long, env = "GEECACHE_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    #[arg(long, env = "GEECACHE_STATEMENT_TIMEOUT", value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,
    /// Embedded source: product ids 1..=N [default: 1000000].
    #[arg(long, env = "GEECACHE_PRODUCTS")]
    pub products: Option<u64>,
    /// Embedded source: milliseconds of latency per fetch [default: 5].
    #[arg(long, env = "GEECACHE_EMBEDDED_LATENCY_MS")]
    pub embedded_latency_ms: Option<u64>,
    #[arg(long, env = "GEECACHE_EMBEDDED_ERROR_RATE")]
    pub embedded_error_rate: Option<f64>,
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

impl NodeArgs {
    /// Layers defaults, the config file and these flags (env included) into one config.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        set(&mut c.role, self.role);
        set(&mut c.api_addr, self.api_addr);
        set(&mut c.peer_addr, self.peer_addr);
        set(&mut c.self_url, self.self_url.map(Some));
        set(&mut c.peers, self.peers);
        set(&mut c.vnodes, self.vnodes);
        set(&mut c.seeds, self.seeds);
        set(&mut c.node_id, self.node_id);
        set(&mut c.data_dir, self.data_dir);
        set(&mut c.bootstrap_expect, self.bootstrap_expect);
        set(&mut c.dead_after, self.dead_after);
        set(&mut c.advertise_api, self.advertise_api.map(Some));
        set(&mut c.ring_hash, self.ring_hash);
        set(&mut c.peer_secret, self.peer_secret.map(Some));
        set(&mut c.peer_secret_file, self.peer_secret_file.map(Some));
        set(&mut c.peer_secret_accept, self.peer_secret_accept);
        c.insecure_open_peer_port |= self.insecure_open_peer_port;
        set(&mut c.max_value_bytes, self.max_value_bytes);
        set(&mut c.peer_timeout, self.peer_timeout);
        set(&mut c.cache_bytes, self.cache_bytes);
        set(&mut c.hot_ttl, self.hot_ttl);
        set(&mut c.hot_min_qps, self.hot_min_qps);
        set(&mut c.hit_path, self.hit_path);
        set(&mut c.request_timeout, self.request_timeout);
        set(&mut c.loader_mailbox, self.loader_mailbox);
        set(&mut c.max_in_flight, self.max_in_flight);
        set(&mut c.workers, self.workers);
        set(&mut c.drain_delay, self.drain_delay);
        set(&mut c.shutdown_timeout, self.shutdown_timeout);
        set(&mut c.log_format, self.log_format);
        c.emf |= self.emf;
        set(&mut c.emf_interval, self.emf_interval);
        let s = &mut c.source;
        set(&mut s.kind, self.source);
        set(&mut s.database_url, self.database_url.map(Some));
        set(&mut s.pool_size, self.pool_size);
        set(&mut s.connect_timeout, self.connect_timeout);
        set(&mut s.statement_timeout, self.statement_timeout);
        set(&mut s.products, self.products);
        set(
            &mut s.embedded_latency,
            self.embedded_latency_ms.map(Duration::from_millis),
        );
        set(&mut s.embedded_error_rate, self.embedded_error_rate);
        c.load_secret()?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults() {
        let cli = Cli::try_parse_from([
            "geecache",
            "node",
            "--cache-bytes",
            "1048576",
            "--request-timeout",
            "250ms",
            "--peers",
            "http://a:8001,http://b:8001",
            "--self",
            "http://a:8001",
            "--embedded-latency-ms",
            "0",
            "--peer-secret",
            "0123456789abcdef",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("not a node command")
        };
        let c = args.into_config().unwrap();
        assert_eq!(c.cache_bytes, 1 << 20);
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.peers, ["http://a:8001", "http://b:8001"]);
        assert_eq!(c.source.embedded_latency, Duration::ZERO);
        assert_eq!(c.vnodes, 150);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["geecache", "node", "--request-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["geecache", "node", "--source", "mysql"]).is_err());
        // Peers without knowing which one is me cannot route.
        let cli = Cli::try_parse_from(["geecache", "node", "--peers", "http://a:8001"]).unwrap();
        let Command::Node(args) = cli.command else {
            panic!("not a node command")
        };
        assert!(args.into_config().is_err());
    }

    fn config_of(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(["geecache", "node"].iter().chain(args))?;
        let Command::Node(args) = cli.command else {
            panic!("not a node command")
        };
        args.into_config()
    }

    #[test]
    fn the_peer_port_needs_a_secret_unless_told_to_run_open() {
        let e = config_of(&[]).unwrap_err().to_string();
        assert!(
            e.contains("needs a secret") && e.contains("--insecure-open-peer-port"),
            "{e}"
        );
        let e = config_of(&["--peer-secret", "short"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
        let e = config_of(&["--peer-secret", "0123456789 abcdef"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("without spaces"), "{e}");
        let both = [
            "--peer-secret",
            "0123456789abcdef",
            "--insecure-open-peer-port",
        ];
        assert!(config_of(&both).is_err());
        let open = config_of(&["--insecure-open-peer-port"]).unwrap();
        assert!(open.peer_secret.is_none() && open.insecure_open_peer_port);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
        let c = config_of(&["--peer-secret-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.peer_secret.as_deref(), Some("from-a-file-0123456789"));
        let missing = dir.path().join("nope");
        let e = config_of(&["--peer-secret-file", missing.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the peer secret file"), "{e}");
        let rotating = [
            "--peer-secret",
            "new-secret-0123456789",
            "--peer-secret-accept",
            "old-secret-0123456789",
        ];
        assert_eq!(
            config_of(&rotating).unwrap().peer_secret_accept,
            ["old-secret-0123456789"]
        );
    }
}
