//! The change feed with a real PostgreSQL and real node processes: changes reach every node
//! and frontend, the fill race through the feed, and every way a node can lose track of it.

mod common;

use std::time::{Duration, Instant};

use common::raft::{Raft, converged};
use common::{NodeProc, Pg, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_update_reaches_every_node_and_the_frontend() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(100);
    let url = pg.url();
    let args = [
        "--source",
        "postgres",
        "--database-url",
        &url,
        "--hot-min-qps",
        "1",
    ];
    let raft = Raft::new(3, "30s");
    let nodes: Vec<NodeProc> = (1..=3).map(|id| raft.start_with(id, &args)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    converged(&c, &raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    let seeds = (1..=3)
        .map(|id| raft.peer(id))
        .collect::<Vec<_>>()
        .join(",");
    let mut front_args = vec!["--role", "frontend", "--seeds", &seeds];
    front_args.extend_from_slice(&args);
    let front = NodeProc::spawn(&front_args);
    let apis: Vec<String> = (1..=3)
        .map(|id| raft.api(id))
        .chain([front.api.clone()])
        .collect();
    for api in &apis {
        assert_eq!(
            common::warm(&c, &format!("{api}/api?key=Tom")).await,
            b"630"
        );
    }
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '700' WHERE name = 'Tom'",
    );
    for api in &apis {
        let took = common::until(
            &c,
            &format!("{api}/api?key=Tom"),
            b"700",
            Duration::from_secs(3),
        )
        .await;
        eprintln!("{api}: the update served after {took:?}");
    }
}

/// One node on PostgreSQL through a proxy that can cut it off.
fn proxied_node(pg: &Pg, proxy: &Proxy, max_staleness: &str) -> NodeProc {
    let url = pg.url_via(proxy.port);
    let args = vec![
        "--source",
        "postgres",
        "--database-url",
        &url,
        "--max-staleness",
        max_staleness,
        "--connect-timeout",
        "500ms",
        "--statement-timeout",
        "500ms",
    ];
    NodeProc::spawn(&args)
}

use common::Proxy;

/// `--feed-poll` sets how often the feed is read: a change takes up to that long to arrive, and
/// the lag (time since the last poll) rises toward it between polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_poll_sets_how_often_a_node_reads_the_feed() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let node = pg.node(&["--feed-poll", "1s"]);
    let url = format!("{}/api?key=Tom", node.api);
    assert_eq!(common::warm(&c, &url).await, b"630");
    let mut most: f64 = 0.0;
    for _ in 0..25 {
        most = most.max(common::metric_sum(&c, &node.api, "geecache_feed_lag_seconds").await);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(
        (0.5..2.0).contains(&most),
        "the largest lag seen over 1.5 s of 1-s polls: {most}"
    );
    // A change still arrives, at the next poll.
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '777' WHERE name = 'Tom'",
    );
    common::until(&c, &url, b"777", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_feed_connection_replays_what_it_missed() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let node = pg.node(&[]);
    let url = format!("{}/api?key=Tom", node.api);
    assert_eq!(common::warm(&c, &url).await, b"630");
    // Kill the feed's connection and change the row before it can be back.
    let killed = pg.psql(
        "geecache",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'geecache-feed'",
    );
    assert_eq!(killed, "1");
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '701' WHERE name = 'Tom'",
    );
    common::until(&c, &url, b"701", Duration::from_secs(5)).await;
    assert!(common::metric_sum(&c, &node.api, "geecache_feed_replays_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_loses_no_change() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let node = pg.node(&[]);
    let url = format!("{}/api?key=Jack", node.api);
    assert_eq!(common::warm(&c, &url).await, b"589");
    pg.stop();
    pg.restart();
    // Changed the moment PostgreSQL is back, before the node's feed reconnects.
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '590' WHERE name = 'Jack'",
    );
    common::until(&c, &url, b"590", Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_starts_from_the_database() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let args = ["--source", "postgres", "--database-url", &pg.url()];
    let (api_port, peer_port) = (common::free_port(), common::free_port());
    let node = NodeProc::spawn_on(api_port, peer_port, &args);
    let url = format!("{}/api?key=Sam", node.api);
    assert_eq!(common::warm(&c, &url).await, b"567");
    drop(node);
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '568' WHERE name = 'Sam'",
    );
    let node = NodeProc::spawn_on(api_port, peer_port, &args);
    assert_eq!(get(&c, &url).await.1, b"568");
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '569' WHERE name = 'Sam'",
    );
    common::until(&c, &url, b"569", Duration::from_secs(3)).await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgresql_stops_answering_fresh_and_replays_on_healing() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let proxy = Proxy::to(pg.port);
    let node = proxied_node(&pg, &proxy, "1s");
    let url = format!("{}/api?key=Tom", node.api);
    assert_eq!(common::warm(&c, &url).await, b"630");
    // The polls are the feed's heartbeat: on an idle database its lag stays near the poll
    // interval, and it grows while the feed cannot be read.
    let lag = "geecache_feed_lag_seconds";
    let idle = common::metric_sum(&c, &node.api, lag).await;
    assert!(idle < 0.5, "an idle feed's lag: {idle}");
    let position = common::metric_sum(&c, &node.api, "geecache_feed_position").await;
    assert!(position > 0.0, "no feed position: {position}");
    proxy.cut(true);
    pg.psql(
        "geecache",
        "UPDATE scores SET value = '800' WHERE name = 'Tom'",
    );
    // Past max_staleness (1 s) without the feed, the old value is not answered as fresh.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = common::metric_sum(&c, &node.api, lag).await;
    assert!(cut >= 1.0, "the lag of a feed cut off for 1.5 s: {cut}");
    let r = c.get(&url).send().await.unwrap();
    let cache = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = (r.status().as_u16(), r.bytes().await.unwrap());
    assert!(
        !(status == 200 && body == "630" && cache.as_deref() == Some("HIT")),
        "answered the old value as fresh without the feed"
    );
    proxy.cut(false);
    common::until(&c, &url, b"800", Duration::from_secs(8)).await;
    // The feed's own connection comes back too (its stalled poll ends, or times out after 2 s
    // and it reconnects), and its lag falls back to the poll interval.
    let healed_at = Instant::now();
    loop {
        let healed = common::metric_sum(&c, &node.api, lag).await;
        if healed < 0.5 {
            break;
        }
        assert!(
            healed_at.elapsed() < Duration::from_secs(5),
            "the lag 5 s after healing: {healed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = common::metric_sum(&c, &node.api, "geecache_feed_position").await;
    assert!(
        moved > position,
        "the position after the update: {moved} <= {position}"
    );
    // Cached again once the feed is back (a load that landed before the replay's invalidation
    // may cost one more miss).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.get(&url).send().await.unwrap();
        let cache = r.headers()["x-cache"].to_str().unwrap().to_owned();
        assert_eq!(r.bytes().await.unwrap(), "800");
        if cache == "HIT" {
            break;
        }
        assert!(Instant::now() < deadline, "never cached again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_pruned_past_a_node_drops_its_groups() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let proxy = Proxy::to(pg.port);
    let node = proxied_node(&pg, &proxy, "30s");
    let url = format!("{}/api/products/3", node.api);
    common::warm(&c, &url).await;
    proxy.cut(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.psql(
        "geecache",
        "UPDATE products SET value = 'gone-3' WHERE id = 3",
    );
    // The rows the node has not read are pruned (retention 0).
    pg.psql("geecache", "SELECT geecache.prune(interval '0')");
    assert_eq!(
        pg.psql("geecache", "SELECT count(*) FROM geecache.changes"),
        "0"
    );
    proxy.cut(false);
    common::until(&c, &url, b"gone-3", Duration::from_secs(8)).await;
    let drops = common::metric_sum(&c, &node.api, "geecache_feed_drops_total").await;
    assert_eq!(drops, 1.0, "dropped, counted by cause");
}

/// `--feed-retention` on one node prunes what another, cut off, has not read; that one drops
/// its groups when it is back. (Without the retention, rows a node seen in the last minute
/// has not read are kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_retention_prunes_past_a_node_that_is_away() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let _pruner = pg.node(&["--feed-retention", "1s"]);
    let proxy = Proxy::to(pg.port);
    let away = proxied_node(&pg, &proxy, "30s");
    let url = format!("{}/api/products/4", away.api);
    common::warm(&c, &url).await;
    proxy.cut(true);
    pg.psql(
        "geecache",
        "UPDATE products SET value = 'pruned-4' WHERE id = 4",
    );
    // The pruner prunes every 5 s; the change is older than its retention by then.
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg.psql("geecache", "SELECT count(*) FROM geecache.changes") != "0" {
        assert!(Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.cut(false);
    common::until(&c, &url, b"pruned-4", Duration::from_secs(8)).await;
    let drops = common::metric_sum(&c, &away.api, "geecache_feed_drops_total").await;
    assert_eq!(drops, 1.0, "dropped, counted by cause");
}

/// A config of people(id, name) with negative caching, invalidated by its own table; and a
/// slow group whose load holds its snapshot inside PostgreSQL.
const PEOPLE: &str = r#"
[[group]]
name = "people"
query = "SELECT name FROM people WHERE id = $1"
negative_ttl = "60s"
invalidate = [ { table = "people", key = "id" } ]

[[group]]
name = "slow"
query = "SELECT name FROM (SELECT name, pg_sleep(CASE WHEN $1 LIKE 'slow%' THEN 0.8 ELSE 0 END) FROM people WHERE id = $1) s"
invalidate = [ { table = "people", key = "id" } ]
"#;

struct People {
    pg: Pg,
    _dir: tempfile::TempDir,
    config: String,
}

/// The people table, the config file, and the feed installed from it.
fn people() -> People {
    let pg = Pg::start();
    pg.psql(
        "geecache",
        "CREATE TABLE people (id text PRIMARY KEY, name text NOT NULL);
         INSERT INTO people VALUES ('ada', 'Ada'), ('bob', 'Bob'), ('slow1', 'old');",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("people.toml");
    std::fs::write(&config, PEOPLE).unwrap();
    let config = config.display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args([
            "db",
            "feed",
            "install",
            "--config",
            &config,
            "--database-url",
            &pg.url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Idempotent: a second install changes nothing and fails nothing.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args([
            "db",
            "feed",
            "install",
            "--config",
            &config,
            "--database-url",
            &pg.url(),
        ])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        pg.psql(
            "geecache",
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'geecache\\_%'"
        ),
        "4",
        "the row and TRUNCATE triggers of both groups"
    );
    People {
        pg,
        _dir: dir,
        config,
    }
}

fn people_node(p: &People) -> NodeProc {
    let url = p.pg.url();
    NodeProc::spawn(&[
        "--config",
        &p.config,
        "--source",
        "postgres",
        "--database-url",
        &url,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_deletes_and_inserts_reach_the_cache() {
    let c = common::client();
    let p = people();
    let node = people_node(&p);
    let at = |k: &str| format!("{}/api/people/{k}", node.api);
    assert_eq!(common::warm(&c, &at("ada")).await, b"Ada");
    // A missing row is remembered for 60 s ...
    assert_eq!(get(&c, &at("cy")).await.0, 404);
    let r = c.get(at("cy")).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache"].to_str().unwrap()
        ),
        (404, "HIT")
    );
    // ... and its INSERT is served at once, not after the window.
    p.pg.psql("geecache", "INSERT INTO people VALUES ('cy', 'Cy')");
    common::until(&c, &at("cy"), b"Cy", Duration::from_secs(2)).await;
    // An UPDATE of the key column invalidates the old key and the new one.
    assert_eq!(get(&c, &at("bobby")).await.0, 404);
    p.pg.psql(
        "geecache",
        "UPDATE people SET id = 'bobby' WHERE id = 'bob'",
    );
    common::until(&c, &at("bobby"), b"Bob", Duration::from_secs(2)).await;
    let start = Instant::now();
    while get(&c, &at("bob")).await.0 != 404 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the old key still answers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A DELETE of the row: the key becomes 404.
    p.pg.psql("geecache", "DELETE FROM people WHERE id = 'ada'");
    let start = Instant::now();
    while get(&c, &at("ada")).await.0 != 404 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the deleted row still answers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Status shows the node, uninstall --all removes everything.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["db", "feed", "status", "--database-url", &p.pg.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && text.contains("(node)"), "{text}");
    drop(node);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args([
            "db",
            "feed",
            "uninstall",
            "--all",
            "--database-url",
            &p.pg.url(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        p.pg.psql(
            "geecache",
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'geecache\\_%'"
        ),
        "0"
    );
    assert_eq!(
        p.pg.psql(
            "geecache",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'geecache'"
        ),
        "0"
    );
    p.pg.psql("geecache", "UPDATE people SET name = 'x'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_the_row_before_a_committed_change_caches_nothing() {
    let c = common::client();
    let p = people();
    let node = people_node(&p);
    // Following the feed (the node caches) before the race begins.
    assert_eq!(
        common::warm(&c, &format!("{}/api/slow/ada", node.api)).await,
        b"Ada"
    );
    let url = format!("{}/api/slow/slow1", node.api);
    // The load starts: its statement's snapshot holds the old row while it sleeps 0.8 s.
    let early = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { get(&c, &url).await.1 }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.pg.psql(
        "geecache",
        "UPDATE people SET name = 'new' WHERE id = 'slow1'",
    );
    assert_eq!(early.await.unwrap(), b"old", "began before the change");
    // The old value was not cached: the next read returns the new row.
    assert_eq!(get(&c, &url).await.1, b"new");
    assert!(common::metric_sum(&c, &node.api, "geecache_fills_discarded_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_value_survives_3_5_3_while_rows_change() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = common::client();
    let pg = Pg::start();
    pg.seed(300);
    let url = pg.url();
    let args = [
        "--source",
        "postgres",
        "--database-url",
        &url,
        "--hot-min-qps",
        "2",
    ];
    let raft = Raft::new(3, "30s");
    let nodes: Vec<NodeProc> = (1..=3).map(|id| raft.start_with(id, &args)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    converged(&c, &raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: one row every few milliseconds, each a new version.
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let writer = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = (n * 7919 % 300 + 1) as i64;
                db.execute(
                    "UPDATE products SET value = $1 WHERE id = $2",
                    &[&format!("v{n}"), &id],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            n
        }
    });
    // Readers on every node, so that values are cached everywhere, hot copies included.
    let reader = |api: String| {
        let (c, stop) = (c.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut i: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let _ = c
                    .get(format!("{api}/api/products/{}", i * 31 % 300 + 1))
                    .send()
                    .await;
            }
        })
    };
    let mut readers: Vec<_> = (1..=3).map(|id| reader(raft.api(id))).collect();
    let mut extra: Vec<NodeProc> = (4..=5).map(|id| raft.start_with(id, &args)).collect();
    for n in &extra {
        n.wait_ready();
    }
    converged(
        &c,
        &raft,
        &[1, 2, 3, 4, 5],
        &[1, 2, 3, 4, 5],
        Duration::from_secs(15),
    )
    .await;
    readers.extend((4..=5).map(|id| reader(raft.api(id))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in extra.iter_mut().rev() {
        n.signal("TERM");
        n.child.wait().unwrap();
    }
    converged(&c, &raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Every key on every node equals the database.
    let rows = pg.psql(
        "geecache",
        "SELECT id || '=' || value FROM products WHERE id <= 300 ORDER BY id",
    );
    let mut stale = Vec::new();
    for line in rows.lines() {
        let (id, value) = line.split_once('=').unwrap();
        for node in 1..=3 {
            let (_, body) = get(&c, &format!("{}/api/products/{id}", raft.api(node))).await;
            if body != value.as_bytes() {
                stale.push(format!(
                    "node {node} key {id}: {} != {value}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
    }
    eprintln!("{writes} writes during 3 -> 5 -> 3");
    assert!(writes > 100, "the writers ran: {writes}");
    assert!(
        stale.is_empty(),
        "{} stale: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

/// README, "the feed is not installed": the node logs an error and its feed-backed groups
/// cache nothing, every read a load (the feed's poll, prepared once per connection, fails to
/// prepare there, as its text did before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feed_installed_a_node_says_so_and_caches_nothing() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    pg.psql("geecache", "DROP SCHEMA geecache CASCADE");
    pg.psql("geecache", "SELECT pg_stat_statements_reset()");
    let node = pg.node(&[]);
    node.wait_ready();
    let url = format!("{}/api?key=Sam", node.api);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node
        .log_text()
        .contains("feed: not installed in this database")
    {
        assert!(
            Instant::now() < deadline,
            "no error logged:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_ne!(
            r.headers().get("x-cache").map(|v| v.as_bytes()),
            Some(&b"HIT"[..]),
            "a feed-backed value was cached without the feed"
        );
        assert_eq!(r.bytes().await.unwrap(), &b"567"[..]);
    }
    assert!(pg.calls("%FROM scores%") >= 3, "every read is a load");
}
