//! `geeload check`: the consistency checker, in the spirit of Jepsen's and Meta's Polaris.
//!
//! Writers update product rows in PostgreSQL with increasing versions (`v1`, `v2`, ...) and
//! record when each commit was acknowledged; readers ask every node (the frontend included)
//! and record what they got and when they asked. Then:
//!
//! - **stale reads**: a read is stale beyond a bound B if a newer version of its key was
//!   acknowledged more than B before the read began (reads answered `X-Cache: STALE` are
//!   counted apart);
//! - **stale forever**: after the writes stop and 1 s passes, every key on every node must
//!   equal the database;
//! - **staleness window**: for sampled writes of warm keys, from the commit's acknowledgement
//!   to the last node answering the new version;
//! - **a hot key under write churn**: one key read everywhere while written at a fixed rate:
//!   the cluster's loads per write (one reload per change, not one per node).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::NoTls;

/// What the checker runs.
#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub database_url: String,
    /// Base URL of a node's (or frontend's) client API (repeat, or comma-separate).
    #[arg(long = "target", required = true, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Nodes whose /metrics count the loads (default: the targets).
    #[arg(long = "metrics", value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Keys 1..=keys (as `{key_prefix}N`) are written and read, and key keys+1 is the hot key.
    #[arg(long, default_value_t = 200)]
    pub keys: u64,
    /// The group read (`/api/{group}/{key}`); its query must read `table` by `key_column`,
    /// and the change feed must cover the table.
    #[arg(long, default_value = "products")]
    pub group: String,
    /// The table written: `value` (text) is set to `v1`, `v2`, ... where `key_column` is the key.
    #[arg(long, default_value = "products")]
    pub table: String,
    #[arg(long, default_value = "id")]
    pub key_column: String,
    /// Prepended to each key number: `--key-prefix chk-` reads and writes `chk-1`, `chk-2`, ...
    /// (for a text key column), so that the checker's rows are apart from a load's.
    #[arg(long, default_value = "")]
    pub key_prefix: String,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 4)]
    pub writers: u64,
    /// Writes per second, all writers together.
    #[arg(long, default_value_t = 200.0)]
    pub write_rate: f64,
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Sampled writes whose staleness window is measured.
    #[arg(long, default_value_t = 100)]
    pub probes: usize,
    /// How long the hot key is written (at --hot-write-rate) and read.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hot_duration: Duration,
    #[arg(long, default_value_t = 100.0)]
    pub hot_write_rate: f64,
    /// Kill every node's feed connection this often during the main phase (0s: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub kill_feed_every: Duration,
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One read: key, version got, when it started (since the run began), X-Cache.
struct Read {
    key: u64,
    version: Option<u64>,
    started: Duration,
    stale_header: bool,
}

fn version_of(body: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(body).ok()?;
    match s.strip_prefix('v') {
        Some(n) => n.parse().ok(),
        None => Some(0), // the seeded value
    }
}

async fn db(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to the database")?;
    tokio::spawn(conn);
    Ok(client)
}

/// Where the checker's keys live: the group read, the table written, the key's SQL type.
#[derive(Clone)]
struct Rows {
    group: String,
    prefix: String,
    /// The key column is an integer (`bigint`, `int`): keys are bound as `i64`, else as text.
    integer: bool,
    update: String,
    select: String,
}

impl Rows {
    /// Checks the names (SQL identifiers are spliced into the statements) and asks PostgreSQL
    /// the key column's type; inserts `v0` rows for keys that have none (`1..=last`).
    async fn new(
        a: &CheckArgs,
        client: &tokio_postgres::Client,
        last: u64,
    ) -> anyhow::Result<Rows> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !s.as_bytes()[0].is_ascii_digit()
        };
        anyhow::ensure!(
            ident(&a.table) && ident(&a.key_column),
            "--table and --key-column must be lower-case SQL identifiers, got {:?} and {:?}",
            a.table,
            a.key_column
        );
        let (t, k) = (&a.table, &a.key_column);
        let update = format!("UPDATE {t} SET value = $1 WHERE {k} = $2");
        let stmt = client
            .prepare(&update)
            .await
            .with_context(|| format!("table {t} with columns {k} and value (text)"))?;
        let ty = stmt.params()[1].clone();
        let integer = [
            tokio_postgres::types::Type::INT8,
            tokio_postgres::types::Type::INT4,
        ]
        .contains(&ty);
        anyhow::ensure!(
            integer || ty == tokio_postgres::types::Type::TEXT,
            "{t}.{k} is {ty}: the checker writes integer or text keys"
        );
        anyhow::ensure!(
            !integer || a.key_prefix.is_empty(),
            "--key-prefix needs a text key column; {t}.{k} is {ty}"
        );
        let rows = Rows {
            group: a.group.clone(),
            prefix: a.key_prefix.clone(),
            integer,
            update,
            select: format!("SELECT value FROM {t} WHERE {k} = $1"),
        };
        let insert =
            format!("INSERT INTO {t} ({k}, value) VALUES ($1, 'v0') ON CONFLICT ({k}) DO NOTHING");
        for key in 1..=last {
            rows.exec(client, &insert, None, key).await?;
        }
        Ok(rows)
    }

    fn name(&self, key: u64) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `sql` with `$1 = value` and `$2 = key` (or `$1 = key` without a value).
    async fn exec(
        &self,
        client: &tokio_postgres::Client,
        sql: &str,
        value: Option<&str>,
        key: u64,
    ) -> Result<u64, tokio_postgres::Error> {
        let (int, text) = (key as i64, self.name(key));
        let key: &(dyn tokio_postgres::types::ToSql + Sync) =
            if self.integer { &int } else { &text };
        match value {
            Some(v) => client.execute(sql, &[&v, key]).await,
            None => client.execute(sql, &[key]).await,
        }
    }

    async fn write(
        &self,
        client: &tokio_postgres::Client,
        key: u64,
        version: u64,
    ) -> Result<u64, tokio_postgres::Error> {
        self.exec(client, &self.update, Some(&format!("v{version}")), key)
            .await
    }

    /// The key's version in the database (`None`: no row, or a value not written as `vN`
    /// nor seeded).
    async fn truth(
        &self,
        client: &tokio_postgres::Client,
        key: u64,
    ) -> anyhow::Result<Option<u64>> {
        let (int, text) = (key as i64, self.name(key));
        let k: &(dyn tokio_postgres::types::ToSql + Sync) = if self.integer { &int } else { &text };
        let row = client.query_opt(&self.select, &[k]).await?;
        Ok(row.and_then(|r| version_of(r.get::<_, String>(0).as_bytes())))
    }
}

/// A GET of one of the checker's keys: (version, X-Cache was STALE), or `None` on an error.
async fn read(
    http: &reqwest::Client,
    target: &str,
    rows: &Rows,
    key: u64,
) -> Option<(Option<u64>, bool)> {
    let r = http
        .get(format!("{target}/api/{}/{}", rows.group, rows.name(key)))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let stale = r.headers().get("x-cache").is_some_and(|v| v == "STALE");
    let body = r.bytes().await.ok()?;
    Some((version_of(&body), stale))
}

/// Acknowledged versions of each key: (version, when acknowledged), in order.
type Acks = HashMap<u64, Vec<(u64, Duration)>>;

/// Writers for `duration`: each owns the keys congruent to its number, versions counted from
/// `first`. Returns the acknowledgements.
async fn write(
    a: &CheckArgs,
    rows: &Rows,
    start: Instant,
    duration: Duration,
    first: Arc<AtomicU64>,
) -> anyhow::Result<Acks> {
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let url = a.database_url.clone();
        let (keys, writers) = (a.keys, a.writers);
        let every = Duration::from_secs_f64(a.writers as f64 / a.write_rate);
        let first = Arc::clone(&first);
        let rows = rows.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = db(&url).await?;
            let mut acks: Acks = HashMap::new();
            let mut i = 0u64;
            let deadline = start + duration;
            let mut tick = tokio::time::interval(every);
            while Instant::now() < deadline {
                tick.tick().await;
                let key = (i * writers + w) % keys + 1;
                i += 1;
                let version = first.fetch_add(1, Ordering::SeqCst);
                match rows.write(&client, key, version).await {
                    Ok(_) => acks
                        .entry(key)
                        .or_default()
                        .push((version, start.elapsed())),
                    // PostgreSQL restarted under us: reconnect; an unacknowledged write is not
                    // counted.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let Ok(c) = db(&url).await {
                            client = c;
                        }
                    }
                }
            }
            anyhow::Ok(acks)
        }));
    }
    let mut all: Acks = HashMap::new();
    for t in tasks {
        for (k, mut v) in t.await?? {
            all.entry(k).or_default().append(&mut v);
        }
    }
    for v in all.values_mut() {
        v.sort_by_key(|(version, _)| *version);
    }
    Ok(all)
}

/// Readers over every target and key until `stop`.
fn readers(
    a: &CheckArgs,
    rows: &Rows,
    http: &reqwest::Client,
    start: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Read>>> {
    (0..a.readers)
        .map(|r| {
            let (http, stop, targets, keys, rows) = (
                http.clone(),
                Arc::clone(stop),
                a.targets.clone(),
                a.keys,
                rows.clone(),
            );
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = r as u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let target = &targets[(i as usize) % targets.len()];
                    let key = i.wrapping_mul(2654435761) % keys + 1;
                    let started = start.elapsed();
                    if let Some((version, stale_header)) = read(&http, target, &rows, key).await {
                        out.push(Read {
                            key,
                            version,
                            started,
                            stale_header,
                        });
                    }
                }
                out
            })
        })
        .collect()
}

/// Reads stale beyond each bound, and reads answered STALE.
fn stale_counts(reads: &[Read], acks: &Acks, bounds: &[Duration]) -> (Vec<u64>, u64) {
    let mut counts = vec![0u64; bounds.len()];
    let mut flagged = 0;
    for r in reads {
        if r.stale_header {
            flagged += 1;
            continue;
        }
        let Some(got) = r.version else { continue };
        let Some(history) = acks.get(&r.key) else {
            continue;
        };
        for (i, b) in bounds.iter().enumerate() {
            let Some(before) = r.started.checked_sub(*b) else {
                continue;
            };
            // The newest version acknowledged before `before`.
            let newest = history
                .iter()
                .take_while(|(_, at)| *at <= before)
                .last()
                .map(|(v, _)| *v);
            if newest.is_some_and(|v| v > got) {
                counts[i] += 1;
            }
        }
    }
    (counts, flagged)
}

async fn loads(http: &reqwest::Client, nodes: &[String], group: &str) -> f64 {
    let series = format!("geecache_loads_total{{group=\"{group}\"}}");
    let mut total = 0.0;
    for n in nodes {
        if let Ok(r) = http.get(format!("{n}/metrics")).send().await
            && let Ok(text) = r.text().await
        {
            total += text
                .lines()
                .filter(|l| l.starts_with(&series))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    total
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn check(a: CheckArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()?;
    let metrics = if a.metrics.is_empty() {
        a.targets.clone()
    } else {
        a.metrics.clone()
    };
    let client = db(&a.database_url).await?;
    let rows = Rows::new(&a, &client, a.keys + 1).await?;
    let versions = Arc::new(AtomicU64::new(1));
    // 1. Writers and readers together, faults meanwhile.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = readers(&a, &rows, &http, start, &stop);
    let killer = (!a.kill_feed_every.is_zero()).then(|| {
        let (url, every, stop) = (a.database_url.clone(), a.kill_feed_every, Arc::clone(&stop));
        tokio::spawn(async move {
            let mut killed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                if let Ok(c) = db(&url).await
                    && let Ok(row) = c
                        .query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                             WHERE application_name = 'geecache-feed'",
                            &[],
                        )
                        .await
                {
                    killed += row.get::<_, i64>(0) as u64;
                }
            }
            killed
        })
    });
    let acks = write(&a, &rows, start, a.duration, Arc::clone(&versions)).await?;
    stop.store(true, Ordering::Relaxed);
    let mut reads = Vec::new();
    for r in reading {
        reads.append(&mut r.await?);
    }
    let feed_kills = match killer {
        Some(k) => k.await.unwrap_or(0),
        None => 0,
    };
    let bounds = [0, 10, 100, 1000].map(Duration::from_millis);
    let (stale, flagged) = stale_counts(&reads, &acks, &bounds);
    let writes: usize = acks.values().map(Vec::len).sum();

    // 2. Stale forever: after writes stop and 1 s passes, every key on every node.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut truth = HashMap::new();
    for k in 1..=a.keys {
        truth.insert(k, rows.truth(&client, k).await?);
    }
    let mut forever = 0u64;
    for t in &a.targets {
        for k in 1..=a.keys {
            if read(&http, t, &rows, k).await.map(|(v, _)| v) != Some(truth[&k]) {
                forever += 1;
            }
        }
    }

    // 3. The staleness window of warm keys.
    let mut windows = Vec::new();
    for p in 0..a.probes {
        let key = (p as u64 * 37) % a.keys + 1;
        for t in &a.targets {
            read(&http, t, &rows, key).await;
            read(&http, t, &rows, key).await;
        }
        let version = versions.fetch_add(1, Ordering::SeqCst);
        rows.write(&client, key, version).await?;
        let acked = Instant::now();
        let polls = a.targets.iter().map(|t| {
            let (http, rows) = (http.clone(), &rows);
            async move {
                loop {
                    if let Some((Some(v), _)) = read(&http, t, rows, key).await
                        && v >= version
                    {
                        return acked.elapsed();
                    }
                    if acked.elapsed() > Duration::from_secs(5) {
                        return acked.elapsed();
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }
        });
        let all = futures_util::future::join_all(polls).await;
        let last = all.into_iter().max().unwrap_or_default();
        windows.push(last.as_secs_f64() * 1000.0);
    }
    windows.sort_by(f64::total_cmp);

    // 4. A hot key under write churn.
    let hot = a.keys + 1;
    let before = loads(&http, &metrics, &a.group).await;
    let stop = Arc::new(AtomicBool::new(false));
    let hot_readers: Vec<_> = (0..a.readers)
        .map(|r| {
            let (http, stop, targets, rows) = (
                http.clone(),
                Arc::clone(&stop),
                a.targets.clone(),
                rows.clone(),
            );
            tokio::spawn(async move {
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    read(&http, &targets[i % targets.len()], &rows, hot).await;
                }
            })
        })
        .collect();
    let mut hot_writes = 0u64;
    let every = Duration::from_secs_f64(1.0 / a.hot_write_rate);
    let mut tick = tokio::time::interval(every);
    let hot_start = Instant::now();
    while hot_start.elapsed() < a.hot_duration {
        tick.tick().await;
        let version = versions.fetch_add(1, Ordering::SeqCst);
        rows.write(&client, hot, version).await?;
        hot_writes += 1;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for r in hot_readers {
        r.await?;
    }
    let hot_loads = loads(&http, &metrics, &a.group).await - before;

    let report = serde_json::json!({
        "keys": a.keys,
        "group": a.group,
        "targets": a.targets.len(),
        "duration_s": a.duration.as_secs_f64(),
        "writes": writes,
        "reads": reads.len(),
        "feed_connections_killed": feed_kills,
        "stale_reads": {
            "0ms": stale[0], "10ms": stale[1], "100ms": stale[2], "1s": stale[3],
        },
        "reads_answered_stale": flagged,
        "stale_forever": forever,
        "staleness_window_ms": {
            "probes": windows.len(),
            "p50": percentile(&windows, 0.5),
            "p99": percentile(&windows, 0.99),
            "max": windows.last().copied().unwrap_or(f64::NAN),
        },
        "hot_key": {
            "writes": hot_writes,
            "loads": hot_loads,
            "loads_per_write": hot_loads / hot_writes.max(1) as f64,
        },
    });
    println!(
        "consistency: {writes} writes, {} reads over {} targets; stale reads at 0/10/100/1000 ms: \
         {}/{}/{}/{} ({flagged} answered STALE); stale forever: {forever}; staleness window \
         p50 {:.2} p99 {:.2} max {:.2} ms; hot key: {hot_loads:.0} loads for {hot_writes} writes",
        reads.len(),
        a.targets.len(),
        stale[0],
        stale[1],
        stale[2],
        stale[3],
        percentile(&windows, 0.5),
        percentile(&windows, 0.99),
        windows.last().copied().unwrap_or(f64::NAN),
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_stale_beyond_a_bound_only_if_newer_was_acknowledged_before_it() {
        let ms = Duration::from_millis;
        let acks: Acks = HashMap::from([(1, vec![(1, ms(100)), (2, ms(200))])]);
        let read = |version, at| Read {
            key: 1,
            version: Some(version),
            started: ms(at),
            stale_header: false,
        };
        let reads = [
            read(0, 50),  // before any write: fresh
            read(0, 150), // v1 acknowledged 50 ms before: stale at 0 and 10 ms
            read(1, 205), // v2 acknowledged 5 ms before: stale at 0 ms only
            read(1, 400), // v2 acknowledged 200 ms before: stale at 0, 10, 100 ms
            read(2, 400), // current
        ];
        let (counts, flagged) = stale_counts(&reads, &acks, &[ms(0), ms(10), ms(100), ms(1000)]);
        assert_eq!(counts, [3, 2, 1, 0]);
        assert_eq!(flagged, 0);
        assert_eq!(version_of(b"v42"), Some(42));
        assert_eq!(version_of(b"{\"id\":1}"), Some(0));
    }
}
