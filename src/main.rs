//! The `geecache` binary: parses the command line and runs the command.

use geecache::cli::{Cli, config::LogFormat};
use geecache::cli::{ClusterCommand, Command, DbCommand, FeedCommand, SecretCommand, tools, up};
use geecache::telemetry::init_logs;

/// jemalloc keeps the RSS of a full cache close to its byte bound (glibc's per-thread arenas
/// fragment under many small entries written from several workers); see the README.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs a tool's future on a runtime of its own (the node runs on actix's).
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn main() -> anyhow::Result<()> {
    let (cli, matches) = Cli::parse_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Node(args) => {
            let given = matches.subcommand_matches("node").unwrap_or(&matches);
            let config = args.into_config(given)?;
            init_logs(config.log_format);
            actix_rt::System::new().block_on(async move {
                geecache::node::Node::start(config)
                    .await?
                    .run_until_signal()
                    .await
            })
        }
        Command::Up(args) => block_on(up::run(args)),
        Command::Health { url } => {
            if !block_on(async { Ok(tools::healthy(&url).await) })? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Cluster { command } => match command {
            ClusterCommand::Status { addr } => block_on(tools::cluster_status(&addr)),
            ClusterCommand::Purge {
                group,
                addr,
                secret,
            } => block_on(tools::cluster_purge(&group, &addr, &secret)),
        },
        Command::Secret {
            command: SecretCommand::Init { file },
        } => {
            if tools::init_secret(&file)? {
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
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = actix_rt::System::new().block_on(geecache::cli::seed::seed(
                &database_url,
                rows,
                progress,
            ))?;
            println!(
                "seeded scores (3 rows) and products ({} rows) in {:.1} s, change feed installed",
                report.products,
                report.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::Db {
            command: DbCommand::Feed { command },
        } => match command {
            FeedCommand::Install {
                config,
                database_url,
                grants,
            } => {
                let groups = tools::config_groups(config.as_deref())?;
                let n = block_on(tools::feed_install(&database_url, groups, &grants))?;
                println!(
                    "change feed installed: {n} invalidate entries of {} groups",
                    groups.len()
                );
                Ok(())
            }
            FeedCommand::Uninstall {
                config,
                all,
                database_url,
            } => {
                let groups = (!all)
                    .then(|| tools::config_groups(config.as_deref()))
                    .transpose()?;
                block_on(tools::feed_uninstall(&database_url, groups))?;
                match groups {
                    Some(g) => println!("change feed removed for {} groups", g.len()),
                    None => println!("change feed removed"),
                }
                Ok(())
            }
            FeedCommand::Status {
                config,
                database_url,
            } => {
                let groups = config.map(|c| tools::config_groups(Some(&c))).transpose()?;
                block_on(tools::feed_status(&database_url, groups))
            }
        },
    }
}
