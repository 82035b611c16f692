//! geeload: the load generator of GeeCache-rs's benchmark suite (`load/bench.sh`).
//!
//! - `geeload run`: closed or open loop against one or more nodes, keys from a distribution,
//!   latency in HdrHistograms (corrected for coordinated omission in the open loop), the
//!   cluster's hit rate and database queries scraped from every node's `/metrics`; prints a
//!   table, writes JSON and SVG plots.
//! - `geeload replay`: the same key trace through one moka cache (the node's own `Store`), for
//!   the hit rate a single cache of the cluster's total size would reach.
//! - `geeload discover`: timings of the node's own discovery (DNS, Cloud Map, ECS seeds).
//! - `geeload check`: the consistency checker (stale reads, stale forever, the staleness
//!   window, a hot key under write churn) against nodes on PostgreSQL with the change feed.

mod check;
mod client;
mod keys;
mod report;
mod scrape;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use client::{Pace, Plan, Stop, Target};
use keys::Keys;

#[derive(Parser)]
#[command(
    name = "geeload",
    version,
    about = "Load generator and reporter for GeeCache-rs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(Box<RunArgs>),
    Replay(ReplayArgs),
    Discover(DiscoverArgs),
    /// Writers in PostgreSQL, readers on every node: what the nodes answered that they should
    /// not have.
    Check(Box<check::CheckArgs>),
}

/// Sends requests and reports what the clients and the cluster saw.
#[derive(clap::Args)]
struct RunArgs {
    /// Base URL of a node (repeat, or comma-separate); requests go round robin.
    #[arg(long = "target", required = true, value_delimiter = ',')]
    targets: Vec<String>,
    /// Path and query of each request; `{key}` becomes the key.
    #[arg(long, default_value = "/api?group=products&key={key}")]
    path: String,
    /// uniform:N, zipf:S:N, hot:KEY or miss:START.
    #[arg(long, default_value = "uniform:10000")]
    keys: String,
    /// Seed of the key trace (`replay` with the same seed sees the same keys).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Open loop at this many requests per second; without it, a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: concurrent requests. Open loop: most requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop after this long (e.g. 10s) ...
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// ... or after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// An extra request header, `NAME: VALUE` (repeat), e.g. the peer secret for the peer
    /// protocol: `Authorization: Bearer SECRET`.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Node API URL whose /metrics to scrape (repeat, or comma-separate).
    #[arg(long = "metrics", value_delimiter = ',')]
    metrics: Vec<String>,
    /// Count only this group's series in /metrics (the cluster's gets, hits and database
    /// queries), e.g. to leave out a consistency checker reading another group meanwhile.
    #[arg(long)]
    metrics_group: Option<String>,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    scrape_interval: Duration,
    /// A file of `LABEL UNIX_MS` lines written during the run (e.g. by the suite when it
    /// kills a node); read at the end and drawn on the plots.
    #[arg(long)]
    events: Option<PathBuf>,
    #[arg(long, default_value = "geeload")]
    title: String,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write PREFIX-latency.svg and PREFIX-cluster.svg.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// No table on stdout.
    #[arg(long)]
    quiet: bool,
}

/// Replays a key trace through one cache of the node's kind and prints its hit rate (JSON).
#[derive(clap::Args)]
struct ReplayArgs {
    /// A key spec over products (uniform:N or zipf:S:N).
    #[arg(long)]
    keys: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    requests: u64,
    /// The cache's bytes as a fraction of all products' entries (as nodes count them) ...
    #[arg(long, conflicts_with = "cache_bytes")]
    cache_fraction: Option<f64>,
    /// ... or in bytes.
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// Split the bytes over this many caches, each key in one of them (by crc32, as a ring
    /// would), to see what partitioning alone costs.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Keep this fraction of each partition's bytes out of it (a node's hot-cache share).
    #[arg(long, default_value_t = 0.0)]
    reserve: f64,
}

/// Times the node's discovery of a seed, as `--seeds` takes it (JSON on stdout).
#[derive(clap::Args)]
struct DiscoverArgs {
    /// e.g. dns://localhost:8001 or cloudmap://geecache.local/nodes:8001
    #[arg(long)]
    seed: String,
    #[arg(long, default_value_t = 20)]
    lookups: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(a) => rt.block_on(run(*a)),
        Command::Check(a) => rt.block_on(check::check(*a)),
        Command::Replay(a) => replay(a),
        Command::Discover(a) => rt.block_on(discover(a)),
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let stop = match (a.duration, a.requests) {
        (Some(d), None) => Stop::After(d),
        (None, Some(n)) => Stop::Requests(n),
        (None, None) => Stop::After(Duration::from_secs(10)),
        (Some(_), Some(_)) => bail!("give --duration or --requests, not both"),
    };
    let pace = match a.rate {
        Some(r) if r > 0.0 => Pace::Open { rate: r },
        Some(_) => bail!("--rate must be positive"),
        None => Pace::Closed,
    };
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let targets = a
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let headers = a
        .headers
        .iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header {h:?}: expected NAME: VALUE"))?;
            Ok((
                hyper::header::HeaderName::try_from(name.trim())?,
                hyper::header::HeaderValue::try_from(value.trim())?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = Arc::new(Plan {
        headers,
        targets,
        path: a.path.clone(),
        keys: Keys::parse(&a.keys)?,
        seed: a.seed,
        pace,
        workers: a.concurrency,
        stop,
        timeout: a.timeout,
    });

    let scraper = scrape::Scraper::new(&a.metrics, a.metrics_group.clone());
    let first = if scraper.is_empty() {
        None
    } else {
        Some(scraper.snapshot(None).await)
    };
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let scraping = tokio::spawn({
        let interval = a.scrape_interval;
        async move {
            let mut snaps: Vec<scrape::Snapshot> = first.into_iter().collect();
            if snaps.is_empty() {
                return snaps;
            }
            loop {
                let stop = tokio::select! {
                    _ = tokio::time::sleep(interval) => false,
                    _ = done_rx.changed() => true,
                };
                let s = scraper.snapshot(snaps.last()).await;
                snaps.push(s);
                if stop {
                    return snaps;
                }
            }
        }
    });
    let (t0, elapsed, samples) = client::run(plan.clone()).await?;
    let _ = done_tx.send(true);
    let snapshots = scraping.await?;

    let events = match &a.events {
        Some(path) => read_events(path, t0)?,
        None => Vec::new(),
    };
    let report = report::build(report::Inputs {
        title: a.title.clone(),
        pace: match pace {
            Pace::Closed => format!("closed loop, {} concurrent", a.concurrency),
            Pace::Open { rate } => {
                format!(
                    "open loop at {rate:.0} req/s, up to {} in flight",
                    a.concurrency
                )
            }
        },
        keys: a.keys.clone(),
        targets: plan.targets.iter().map(|t| t.base.clone()).collect(),
        duration_s: elapsed.as_secs_f64(),
        samples: &samples,
        snapshots: &snapshots,
        t0,
        events,
    });
    if !a.quiet {
        print!("{}", report::table(&report));
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(prefix) = &a.plots {
        report::plots(&report, prefix).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
    }
    Ok(())
}

/// Event times are wall-clock (another process wrote them); the run's axis starts at `t0`.
fn read_events(path: &std::path::Path, t0: Instant) -> anyhow::Result<Vec<report::Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let t0_unix = SystemTime::now() - t0.elapsed();
    let t0_unix_ms = t0_unix.duration_since(UNIX_EPOCH)?.as_secs_f64() * 1000.0;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (label, ms) = line
            .trim()
            .rsplit_once(' ')
            .with_context(|| format!("event line {line:?}: expected LABEL UNIX_MS"))?;
        let ms: f64 = ms
            .parse()
            .with_context(|| format!("event line {line:?}: bad time"))?;
        out.push(report::Event {
            label: label.to_owned(),
            t: (ms - t0_unix_ms) / 1000.0,
        });
    }
    Ok(out)
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    use geecache::cache::store::{Entry, Store, entry_weight};
    use geecache::group::Groups;
    use geecache::source::demo::product_value;

    let keys = Keys::parse(&a.keys)?;
    let n = keys
        .universe()
        .context("replay needs a finite key set: uniform:N or zipf:S:N")?;
    // Every product's entry as a node would count it: group prefix (3 bytes) + key + value +
    // overhead.
    let data_bytes: u64 = (1..=n)
        .map(|id| {
            u64::from(entry_weight(
                3 + id.to_string().len(),
                product_value(id).len(),
            ))
        })
        .sum();
    let cache_bytes = match (a.cache_fraction, a.cache_bytes) {
        (Some(f), None) => (data_bytes as f64 * f) as u64,
        (None, Some(b)) => b,
        _ => bail!("give --cache-fraction or --cache-bytes"),
    };
    let parts = a.partitions.max(1);
    let each = (cache_bytes as f64 / f64::from(parts) * (1.0 - a.reserve)) as u64;
    let shards: Vec<Store> = (0..parts)
        .map(|_| Store::new("main", each.max(1024), None, Groups::demo(), None))
        .collect();
    let products = Groups::demo().get("products").expect("the demo groups");
    let mut hits = 0u64;
    for i in 0..a.requests {
        let key = keys.key(a.seed, i);
        let shard = &shards[(crc32fast::hash(key.as_bytes()) % parts) as usize];
        if shard.get(products, &key).is_some() {
            hits += 1;
        } else {
            let id: u64 = key.parse().expect("product keys are ids");
            let entry = Entry::loaded(Some(product_value(id).into()), 0, 0, None);
            shard.insert(products, &key, entry);
        }
    }
    let out = serde_json::json!({
        "keys": a.keys,
        "seed": a.seed,
        "requests": a.requests,
        "data_bytes": data_bytes,
        "cache_bytes": cache_bytes,
        "partitions": parts,
        "reserve": a.reserve,
        "hits": hits,
        "hit_rate": hits as f64 / a.requests.max(1) as f64,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn discover(a: DiscoverArgs) -> anyhow::Result<()> {
    use geecache::raft::discovery::{Discovery, Seeds};
    let seeds = Seeds(vec![a.seed.clone()]);
    let mut found = Vec::new();
    let mut ms = Vec::with_capacity(a.lookups);
    for _ in 0..a.lookups.max(1) {
        let t = Instant::now();
        found = seeds.candidates().await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    if found.is_empty() {
        bail!("{} found no candidates", a.seed);
    }
    // The first lookup also loads the SDK's configuration; report it apart.
    let first = ms[0];
    let mut rest = if ms.len() > 1 {
        ms[1..].to_vec()
    } else {
        ms.clone()
    };
    rest.sort_by(f64::total_cmp);
    let q = |p: f64| rest[((rest.len() - 1) as f64 * p).round() as usize];
    let out = serde_json::json!({
        "seed": a.seed,
        "found": found,
        "lookups": ms.len(),
        "first_ms": first,
        "median_ms": q(0.5),
        "p99_ms": q(0.99),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
