//! The operators' tools: `geecache cluster status|purge`, `geecache secret init`,
//! `geecache health`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use super::SecretArgs;
use crate::feed::db as feed_db;
use crate::group::Groups;
use crate::peer::wire::RAFT_COMMAND;
use crate::peer::{Changed, PeerClient, PeerSettings};

/// `writeln!` into a `String`, which cannot fail.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn base_url(addr: &str) -> String {
    let addr = addr.trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A node's `/cluster` view.
async fn cluster_view(addr: &str) -> anyhow::Result<Value> {
    let url = format!("{}/cluster", base_url(addr));
    let res = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if res.status() == reqwest::StatusCode::UNAUTHORIZED {
        // The peer port answers 401 to anything without the peer secret.
        anyhow::bail!(
            "{url} answered 401: that is a peer port; give the client API's address instead \
             (--api-addr, 9999 by default; 9001.. under `geecache up`)"
        );
    }
    Ok(res.error_for_status()?.json().await?)
}

/// Writes a command's output to stdout; a reader that went away (`| head`) ends it quietly
/// instead of a panic on the broken pipe.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `geecache cluster status`: a node's view of the cluster as a table.
pub async fn cluster_status(addr: &str) -> anyhow::Result<()> {
    let v = cluster_view(addr).await?;
    let mut out = String::new();
    let show = |k: &str| match &v[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    outln!(
        out,
        "node {}  role {}  membership {}  leader {}  term {}  epoch {}",
        show("node_id"),
        show("role"),
        show("membership"),
        show("leader_id"),
        show("term"),
        show("epoch")
    );
    outln!(
        out,
        "{:<20} {:<28} {:<28} {:<8} STATE",
        "ID",
        "PEER",
        "API",
        "ROLE"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let s = |k: &str| match &m[k] {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        outln!(
            out,
            "{:<20} {:<28} {:<28} {:<8} {}",
            s("id"),
            s("peer_url"),
            s("api_url"),
            s("role"),
            s("state"),
        );
    }
    emit(&out);
    Ok(())
}

/// The secret a tool sends, from the flag, the variable or the file.
fn secret(args: &SecretArgs) -> anyhow::Result<Option<String>> {
    match (&args.peer_secret, &args.peer_secret_file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the peer secret file {}", path.display()))?;
            Ok(text.lines().next().map(|l| l.trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// `geecache cluster purge GROUP`: a committed purge, sent to the leader of the cluster that
/// the node at `addr` belongs to.
pub async fn cluster_purge(group: &str, addr: &str, auth: &SecretArgs) -> anyhow::Result<()> {
    let view = cluster_view(addr).await?;
    let peers: Vec<String> = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["peer_url"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(
        !peers.is_empty(),
        "{addr} lists no members: is it a node or frontend of a Raft cluster?"
    );
    let client = PeerClient::new(&PeerSettings {
        timeout: Duration::from_secs(5),
        secret: secret(auth)?,
        max_value_bytes: 1 << 20,
        idle_timeout: Duration::from_secs(30),
        batch_max: 1,
    })?;
    let body = serde_json::json!({ "purge_group": group });
    let mut last = String::new();
    for peer in &peers {
        match client.change(peer, RAFT_COMMAND, &body, "").await {
            Changed::Applied(v) => {
                println!(
                    "purged {group}: every node misses on its keys from epoch {}",
                    v["epoch"]
                );
                return Ok(());
            }
            Changed::Failed(0, _) => last = format!("{peer} did not answer"),
            Changed::Failed(status, v) => {
                anyhow::bail!(
                    "{peer} answered {status}: {}",
                    v["message"].as_str().unwrap_or(&v.to_string())
                );
            }
            Changed::Foreign(why) => anyhow::bail!(why),
        }
    }
    anyhow::bail!("no member accepted the purge: {last}")
}

/// Writes a new random peer secret (32 random bytes as hex, mode 0600) to `path` unless it
/// exists; true when it wrote one.
pub fn init_secret(path: &Path) -> anyhow::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.exists() {
        return Ok(false);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{hex}"))
        .with_context(|| format!("cannot write the peer secret to {}", path.display()))?;
    Ok(true)
}

/// `geecache health`: true when `url` answers 2xx within 2 s.
pub async fn healthy(url: &str) -> bool {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Runs SQL in one transaction on a fresh connection.
async fn execute(database_url: &str, sql: &str) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the database")?;
    let conn = tokio::spawn(connection);
    let tx = client.transaction().await?;
    tx.batch_execute(sql).await?;
    tx.commit().await?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// The groups of a config file, or the demo groups.
pub fn config_groups(config: Option<&std::path::Path>) -> anyhow::Result<Groups> {
    match config {
        Some(path) => crate::cli::config::Config::from_file(path)?.build_groups(),
        None => Ok(Groups::demo()),
    }
}

/// `geecache db feed install`: the schema and the triggers of `groups`' `invalidate` entries;
/// `grants` are the nodes' roles.
pub async fn feed_install(
    database_url: &str,
    groups: Groups,
    grants: &[String],
) -> anyhow::Result<usize> {
    let sql = feed_db::install_sql(groups, grants).map_err(|e| anyhow::anyhow!(e))?;
    // Each table exists, and each key expression evaluates as the triggers will evaluate it
    // (with `search_path = pg_catalog`), or the install says which group is wrong and why:
    // a key that fails there would fail the application's writes.
    let (mut client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the database")?;
    tokio::spawn(connection);
    for e in feed_db::entries(groups).map_err(|e| anyhow::anyhow!(e))? {
        let table: Option<String> = client
            .query_one(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                &[&e.table.sql()],
            )
            .await
            .ok()
            .map(|r| r.get(0));
        let Some(table) = table else {
            anyhow::bail!(
                "group {}: invalidate: no table {} in this database",
                e.group,
                e.table.sql()
            );
        };
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
            .await?;
        let probe = format!(
            // The row type alone (no right to read the table needed), and no row evaluated.
            "SELECT ({})::text FROM (SELECT (NULL::{table}).*) AS {} WHERE false",
            e.key,
            crate::group::table::quote_ident(&e.table.name)
        );
        if let Err(err) = tx.batch_execute(&probe).await {
            anyhow::bail!(
                "group {}: invalidate: key {:?} on {}: {} (the triggers evaluate it with \
                 search_path = pg_catalog: write functions of your own with their schema)",
                e.group,
                e.key,
                e.table.sql(),
                err.as_db_error()
                    .map_or(err.to_string(), |d| d.message().to_owned())
            );
        }
        drop(tx); // rolled back
    }
    let tx = client.transaction().await?;
    tx.batch_execute(&sql)
        .await
        .context("installing the change feed")?;
    tx.commit().await.context("installing the change feed")?;
    Ok(groups.all().map(|g| g.def().invalidate.len()).sum())
}

/// `geecache db feed uninstall`: the triggers of `groups`, or with `None` everything.
pub async fn feed_uninstall(database_url: &str, groups: Option<Groups>) -> anyhow::Result<()> {
    let sql = match groups {
        Some(groups) => feed_db::uninstall_sql(groups),
        None => feed_db::UNINSTALL_ALL_SQL.to_owned(),
    };
    execute(database_url, &sql)
        .await
        .context("removing the change feed")
}

/// `geecache db feed status`: the triggers, one line per node, and what the feed holds; with
/// `groups`, the triggers they need that are missing (an error if any is).
pub async fn feed_status(database_url: &str, groups: Option<Groups>) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the database")?;
    tokio::spawn(connection);
    let triggers = client
        .query(feed_db::TRIGGERS_SQL, &[])
        .await
        .context("reading the feed (is it installed? geecache db feed install)")?;
    let mut out = String::new();
    outln!(
        out,
        "{:<24} {:<32} {:<40} {:<16} FIRES",
        "GROUP",
        "TABLE",
        "TRIGGER",
        "OWNER"
    );
    for r in triggers {
        let (table, trigger, group, owner, fires): (String, String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        outln!(
            out,
            "{group:<24} {table:<32} {trigger:<40} {owner:<16} {}",
            if fires { "yes" } else { "NO (disabled)" }
        );
    }
    let rows = client.query(crate::feed::STATUS_SQL, &[]).await?;
    let head = client
        .query_one(
            "SELECT (SELECT count(*) FROM geecache.changes)::int8, \
             (SELECT extract(epoch FROM now() - min(at)) FROM geecache.changes)::float8, \
             (SELECT pruned_below::text FROM geecache.feed_state), \
             pg_snapshot_xmin(pg_current_snapshot())::text",
            &[],
        )
        .await?;
    let (count, oldest, pruned, now): (i64, Option<f64>, Option<String>, String) =
        (head.get(0), head.get(1), head.get(2), head.get(3));
    outln!(
        out,
        "feed: {count} rows (oldest {}), pruned below xid {}, database at xid {now}",
        oldest.map_or("-".into(), |s| format!("{s:.1} s ago")),
        pruned.unwrap_or_else(|| "-".into())
    );
    outln!(out, "{:<48} {:>14} {:>12}", "NODE", "POSITION", "SEEN");
    for r in rows {
        let (node, position, seen): (String, String, f64) = (r.get(0), r.get(1), r.get(2));
        outln!(out, "{node:<48} {position:>14} {:>10.1} s", seen);
    }
    let Some(groups) = groups else {
        emit(&out);
        return Ok(());
    };
    let entries = feed_db::entries(groups).map_err(|e| anyhow::anyhow!(e))?;
    let (tables, names) = feed_db::present_args(&entries);
    let present = client
        .query(feed_db::PRESENT_SQL, &[&tables, &names])
        .await?;
    let mut missing = 0;
    for ((table, trigger), row) in tables.iter().zip(&names).zip(&present) {
        if row.get::<_, Option<i64>>(1).is_none() {
            missing += 1;
            outln!(
                out,
                "missing: trigger {trigger} on {table} (or it is disabled)"
            );
        }
    }
    emit(&out);
    anyhow::ensure!(
        missing == 0,
        "{missing} triggers the config needs are missing: run geecache db feed install with it"
    );
    emit("every trigger the config needs is in place\n");
    Ok(())
}
