//! The `geecache` binary: parses the command line and runs the command.

use clap::Parser;
use geecache::cli::{Cli, ClusterCommand, Command, DbCommand, SecretCommand};
use geecache::config::LogFormat;

/// jemalloc keeps the RSS of a full cache close to its byte bound (glibc's per-thread arenas
/// fragment under many small entries written from several workers); see the README.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

async fn cluster_status(addr: &str) -> anyhow::Result<()> {
    let url = if addr.starts_with("http") {
        format!("{addr}/cluster")
    } else {
        format!("http://{addr}/cluster")
    };
    let v: serde_json::Value = reqwest::get(&url).await?.error_for_status()?.json().await?;
    let show = |k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "node {}  role {}  membership {}  leader {}  term {}  epoch {}",
        show("node_id"),
        show("role"),
        show("membership"),
        show("leader_id"),
        show("term"),
        show("epoch")
    );
    println!(
        "{:<20} {:<28} {:<28} {:<8} STATE",
        "ID", "PEER", "API", "ROLE"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let s = |k: &str| {
            m[k].as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| m[k].to_string())
        };
        let peer = m
            .get("peer_url")
            .map_or_else(|| s("name"), |_| s("peer_url"));
        println!(
            "{:<20} {:<28} {:<28} {:<8} {}",
            m.get("id").map_or("-".into(), |_| s("id")),
            peer,
            m.get("api_url").map_or("-".into(), |_| s("api_url")),
            m.get("role").map_or("-".into(), |_| s("role")),
            m.get("state").map_or("-".into(), |_| s("state")),
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => {
            let config = (*args).into_config()?;
            init_logs(config.log_format);
            actix_rt::System::new().block_on(async move {
                let node = geecache::node::Node::start(config).await?;
                node.run_until_signal().await
            })
        }
        Command::Up(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(geecache::up::run(args)),
        Command::Health { url } => {
            let ok = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    reqwest::Client::new()
                        .get(&url)
                        .timeout(std::time::Duration::from_secs(2))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                });
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Status { addr },
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cluster_status(&addr)),
        Command::Secret {
            command: SecretCommand::Init { file },
        } => {
            if geecache::up::init_secret(&file)? {
                println!("wrote a new peer secret to {}", file.display());
            } else {
                println!("{} exists; kept it", file.display());
            }
            Ok(())
        }
        Command::Db {
            command: DbCommand::Seed { database_url, rows },
        } => {
            init_logs(LogFormat::Pretty);
            let report = actix_rt::System::new().block_on(geecache::source::seed::seed(
                &database_url,
                rows,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ))?;
            println!(
                "seeded scores (3 rows) and products ({} rows) in {:.1} s",
                report.products,
                report.elapsed.as_secs_f64()
            );
            Ok(())
        }
    }
}
