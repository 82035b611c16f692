//! The process side: the command line (`geecache node`, `up`, `cluster`, `db`, `secret`,
//! `health`), the node's configuration ([`config`]), the local cluster ([`up`]) and the
//! operators' tools ([`tools`]).

pub mod config;
pub mod seed;
pub mod tools;
pub mod up;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use config::{LogFormat, NodeArgs, SourceKind};

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

impl Cli {
    /// Parses `args` (the program's name first), keeping clap's matches: the node's config
    /// needs them to tell given flags from defaults.
    pub fn parse_from_args<I, T>(args: I) -> Result<(Cli, clap::ArgMatches), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args)?;
        Ok((Cli::from_arg_matches(&matches)?, matches))
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print a node's view of the cluster (leader, term, epoch, members) as a table.
    Status {
        /// A node's (or the frontend's) client API address.
        #[arg(long, default_value = "127.0.0.1:9999")]
        addr: String,
    },
    /// Drop every cached value of GROUP on every node and frontend (a committed purge: each
    /// value is loaded again on its next request).
    Purge {
        group: String,
        /// A node's (or the frontend's) client API address, to find the members by.
        #[arg(long, default_value = "127.0.0.1:9999")]
        addr: String,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

/// The peer secret a tool authenticates with (the nodes' own).
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    #[arg(long, env = "GEECACHE_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,
    /// The file whose first line is the peer secret (`geecache up` prints where it is).
    #[arg(long, env = "GEECACHE_PEER_SECRET_FILE")]
    pub peer_secret_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the demo tables, fill them with the rows the embedded source serves, and install
    /// the change feed for them.
    Seed {
        #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Rows of `products` (ids 1..=rows).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// The change feed that invalidates cached keys when their rows change.
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Create (or update) the feed's schema and the triggers of the config's groups'
    /// `invalidate` entries, as the connecting role (the installer); idempotent. Triggers of
    /// groups not in the config are left alone.
    Install {
        /// The nodes' config file (its [[group]] tables); default: the demo groups.
        #[arg(long, env = "GEECACHE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// A role the nodes connect as: granted what a node does with the feed (read it,
        /// record its position, prune). Repeat for several.
        #[arg(long = "grant", value_name = "ROLE")]
        grants: Vec<String>,
    },
    /// Remove the triggers and functions of the config's groups; with --all, every trigger of
    /// the feed and its schema.
    Uninstall {
        /// The config whose groups' triggers go; default: the demo groups.
        #[arg(long, env = "GEECACHE_CONFIG", conflicts_with = "all")]
        config: Option<PathBuf>,
        /// Everything of the feed, whatever config installed it.
        #[arg(long)]
        all: bool,
        #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Show the feed's triggers (group, table, owner), each node's position and lag, and what
    /// the feed holds; with --config, the triggers that config needs and lacks.
    Status {
        #[arg(long, env = "GEECACHE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Cache nodes to start (peer ports 8001.., client ports 9001..).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Source of truth of every node.
    #[arg(long, value_enum, default_value_t = SourceKind::Embedded)]
    pub source: SourceKind,
    /// PostgreSQL connection URL, with --source postgres.
    #[arg(long, env = "GEECACHE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Client port of the frontend.
    #[arg(long, default_value_t = 9999)]
    pub port: u16,
    /// Peer port of the frontend (DELETEs reach its hot cache there).
    #[arg(long, default_value_t = 8000)]
    pub frontend_peer_port: u16,
    /// First peer port; node i uses peer_port + i.
    #[arg(long, default_value_t = 8001)]
    pub peer_port: u16,
    /// First client port of the nodes; node i uses api_port + i.
    #[arg(long, default_value_t = 9001)]
    pub api_port: u16,
    /// Log format of every process (their lines are prefixed with their names).
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Keep the nodes' Raft logs here (default: a temporary directory removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra flags passed to every node and the frontend (after `--`).
    #[arg(last = true)]
    pub node_args: Vec<String>,
}
