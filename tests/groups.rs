//! Groups of the operator's own tables, from a config file, against a real PostgreSQL and real
//! node processes: values and content types, key patterns, TTL and jitter, stale-while-
//! revalidate, stale-if-error, negative caching, DELETE (and the fill-versus-invalidate race),
//! config errors, startup checks.

mod common;

use std::time::{Duration, Instant};

use common::raft::{Raft, converged};
use common::{NodeProc, Pg, free_port};
use futures_util::stream::{self, StreamExt};

const ADMIN: &str = "admin-token-0123456789";

const USER: &str = "0e2b6d3c-6f0a-4a8b-9e7d-2c1f0a9b8c7d";

/// The test's own tables: users (uuid, jsonb) and notes of every value type.
fn tables(pg: &Pg) {
    pg.psql(
        "geecache",
        &format!(
            "CREATE TABLE users (id uuid PRIMARY KEY, profile jsonb NOT NULL);
             INSERT INTO users VALUES ('{USER}', '{{\"name\": \"Ada\"}}');
             CREATE TABLE notes (id text PRIMARY KEY, body text, data bytea, n int, amount numeric, v int NOT NULL DEFAULT 1);
             INSERT INTO notes VALUES ('a', 'hello', '\\x00ff', 630, 12.50);
             INSERT INTO notes (id, body) SELECT 'k' || i, 'v1' FROM generate_series(1, 1000) i;"
        ),
    );
}

const GROUPS: &str = r#"
[[group]]
name = "users"
query = "SELECT profile FROM users WHERE id = $1::uuid"
key_pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

[[group]]
name = "text"
query = "SELECT body FROM notes WHERE id = $1"

[[group]]
name = "bytes"
query = "SELECT data FROM notes WHERE id = $1"

[[group]]
name = "int"
query = "SELECT n FROM notes WHERE id = $1"

[[group]]
name = "amount"
query = "SELECT amount FROM notes WHERE id = $1"
content_type = "text/x-amount"

[[group]]
name = "jitter"
query = "SELECT body FROM notes WHERE id = $1"
ttl = "1s"
ttl_jitter = 0.5

[[group]]
name = "swr"
query = "SELECT body FROM (SELECT body, pg_sleep(0.5) FROM notes WHERE id = $1) AS swr_reload"
ttl = "1s"
stale_while_revalidate = "30s"

[[group]]
name = "sie"
query = "SELECT body FROM notes WHERE id = $1"
ttl = "1s"
stale_if_error = "3s"

[[group]]
name = "neg"
query = "SELECT body FROM notes WHERE id = $1"
negative_ttl = "2s"

[[group]]
name = "short"
query = "SELECT body FROM notes WHERE id = $1"
ttl = "1s"

[[group]]
name = "slow"
query = "SELECT body FROM (SELECT body, pg_sleep(CASE WHEN $1 LIKE 'slow%' THEN 0.8 ELSE 0 END) FROM notes WHERE id = $1) s"
"#;

fn pg_node(pg: &Pg, file: &common::ConfigFile, extra: &[&str]) -> NodeProc {
    let url = pg.url();
    let mut args = vec![
        "--config",
        file.path.to_str().unwrap(),
        "--source",
        "postgres",
        "--database-url",
        &url,
    ];
    args.extend_from_slice(extra);
    NodeProc::spawn(&args)
}

/// Status, `X-Cache`, `Content-Type` and body of a GET.
async fn fetch(client: &reqwest::Client, url: &str) -> (u16, String, String, String) {
    let r = client.get(url).send().await.unwrap();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, cache, ct) = (
        r.status().as_u16(),
        header("x-cache"),
        header("content-type"),
    );
    (status, cache, ct, r.text().await.unwrap())
}

/// Executions of the statements whose text contains `fragment`.
fn calls(pg: &Pg, fragment: &str) -> i64 {
    pg.calls(&format!("%{fragment}%"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_your_own_is_served_with_its_content_type() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let node = pg_node(&pg, &file, &[]);
    let c = common::client();
    let api = &node.api;
    let cases = [
        (
            format!("/api/users/{USER}"),
            200,
            "application/json",
            r#"{"name": "Ada"}"#,
        ),
        (
            "/api/text/a".into(),
            200,
            "text/plain; charset=utf-8",
            "hello",
        ),
        (
            "/api/bytes/a".into(),
            200,
            "application/octet-stream",
            "\u{0}\u{FFFD}",
        ),
        ("/api/int/a".into(), 200, "text/plain; charset=utf-8", "630"),
        ("/api/amount/a".into(), 200, "text/x-amount", "12.50"),
        (
            "/api/text/missing".into(),
            404,
            "application/json",
            "not_found",
        ),
        // No [[group]] of that name: the demo groups are gone.
        (
            "/api/scores/Tom".into(),
            404,
            "application/json",
            "unknown_group",
        ),
    ];
    for (path, status, ct, body) in cases {
        let (s, cache, got_ct, got) = fetch(&c, &format!("{api}{path}")).await;
        assert_eq!((s, got_ct.as_str()), (status, ct), "{path}: {got}");
        assert!(got.contains(body), "{path}: {got:?}");
        assert_eq!(cache, "MISS", "{path}");
    }
    let (_, cache, _, _) = fetch(&c, &format!("{api}/api/users/{USER}")).await;
    assert_eq!(cache, "HIT");
    let (s, cache, _, body) = fetch(&c, &format!("{api}/api?key=a&group=text")).await;
    assert_eq!((s, cache.as_str(), body.as_str()), (200, "HIT", "hello"));
    // The default group of /api?key= is the first one.
    assert_eq!(fetch(&c, &format!("{api}/api?key={USER}")).await.0, 200);

    // A key the pattern refuses is a 404 that costs no query.
    let before = calls(&pg, "FROM users");
    for key in ["not-a-uuid", "1", "%27%3B%20DROP%20TABLE%20users"] {
        let (s, _, _, body) = fetch(&c, &format!("{api}/api/users/{key}")).await;
        assert_eq!(s, 404, "{key}: {body}");
    }
    assert_eq!(calls(&pg, "FROM users"), before);
    let metrics = c
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("geecache_gets_total{group=\"users\"}"),
        "labels by name"
    );
    let view: serde_json::Value = c
        .get(format!("{api}/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["groups_digest"].as_str().unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_within_its_jitter_and_spreads_the_expiry() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let node = pg_node(&pg, &file, &[]);
    let c = common::client();
    let keys: Vec<String> = (1..=1000).map(|i| format!("k{i}")).collect();
    let url = |k: &str| format!("{}/api/jitter/{k}", node.api);
    // Fill all at once, noting when each was filled.
    let start = Instant::now();
    let filled: Vec<f64> = stream::iter(&keys)
        .map(|k| {
            let c = c.clone();
            let u = url(k);
            async move {
                let (s, _, _, body) = fetch(&c, &u).await;
                assert_eq!((s, body.as_str()), (200, "v1"));
                start.elapsed().as_secs_f64()
            }
        })
        .buffered(32)
        .collect()
        .await;
    pg.psql(
        "geecache",
        "UPDATE notes SET body = 'v2' WHERE id LIKE 'k%'",
    );
    // Poll each key until it shows the new row.
    // Each key's first answer with the new row: when it was asked (bounds the expiry from
    // above) and when it came back (from below).
    let mut changed = vec![f64::NAN; keys.len()];
    let mut answered_at = vec![f64::NAN; keys.len()];
    let deadline = Instant::now() + Duration::from_secs(6);
    while changed.iter().any(|t| t.is_nan()) && Instant::now() < deadline {
        let pending: Vec<usize> = (0..keys.len()).filter(|&i| changed[i].is_nan()).collect();
        let seen: Vec<(usize, String, f64, f64)> = stream::iter(pending)
            .map(|i| {
                let c = c.clone();
                let u = url(&keys[i]);
                // When this key was asked, not when the round ended: a round of 1,000 keys
                // on a loaded machine takes long enough to blur the bound.
                async move {
                    let asked = start.elapsed().as_secs_f64();
                    let body = fetch(&c, &u).await.3;
                    (i, body, asked, start.elapsed().as_secs_f64())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (i, body, asked, answered) in seen {
            if body == "v2" {
                changed[i] = asked;
                answered_at[i] = answered;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lived: Vec<f64> = changed.iter().zip(&filled).map(|(c, f)| c - f).collect();
    assert!(lived.iter().all(|l| !l.is_nan()), "some keys never expired");
    let max = lived.iter().fold(f64::MIN, |hi, l| hi.max(*l));
    let min = answered_at
        .iter()
        .zip(&filled)
        .map(|(a, f)| a - f)
        .fold(f64::MAX, f64::min);
    eprintln!("1,000 keys with ttl 1s +- 50 %: lived {min:.3} .. {max:.3} s");
    // Never before ttl x (1 - jitter); after ttl x (1 + jitter), by the next polls.
    assert!(min >= 0.5, "a key expired after {min:.3} s");
    assert!(max <= 1.5 + 1.0, "a key lived {max:.3} s");
    // Spread over the jitter window, not all at once.
    assert!(
        max - min >= 0.6,
        "expiry spread over only {:.3} s",
        max - min
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_reloads_once() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let node = pg_node(&pg, &file, &[]);
    let c = common::client();
    let url = format!("{}/api/swr/k1", node.api);
    assert_eq!(fetch(&c, &url).await.3, "v1");
    pg.psql("geecache", "UPDATE notes SET body = 'v2' WHERE id = 'k1'");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = calls(&pg, "swr_reload");
    let started = Instant::now();
    let answers: Vec<(u16, String, String, f64)> = stream::iter(0..200)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let t = Instant::now();
                let (s, cache, _, body) = fetch(&c, &url).await;
                (s, cache, body, t.elapsed().as_secs_f64())
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let took = started.elapsed();
    for (s, cache, body, _) in &answers {
        assert_eq!((*s, cache.as_str(), body.as_str()), (200, "STALE", "v1"));
    }
    // All 200 answered while the one reload (0.5 s in PostgreSQL) was still running.
    assert!(
        took < Duration::from_millis(450),
        "200 stale answers took {took:?}"
    );
    // The reload lands about 0.5 s after it began, and is then fresh for 1 s: asked as soon
    // as it has landed (a fixed sleep raced the ttl on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (cache, body) = loop {
        let (_, cache, _, body) = fetch(&c, &url).await;
        if body == "v2" || Instant::now() > deadline {
            break (cache, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((cache.as_str(), body.as_str()), ("HIT", "v2"));
    assert_eq!(calls(&pg, "swr_reload") - before, 1, "one reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_an_outage_within_its_window() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let node = pg_node(
        &pg,
        &file,
        &["--connect-timeout", "300ms", "--statement-timeout", "300ms"],
    );
    let c = common::client();
    let url = format!("{}/api/sie/k1", node.api);
    assert_eq!(fetch(&c, &url).await.3, "v1");
    let filled = Instant::now();
    pg.psql("geecache", "UPDATE notes SET body = 'v2' WHERE id = 'k1'");
    pg.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past its ttl, the reload fails: the old value, STALE.
    let (s, cache, _, body) = fetch(&c, &url).await;
    assert_eq!((s, cache.as_str(), body.as_str()), (200, "STALE", "v1"));
    // Past ttl + stale_if_error (1 s + 3 s): the source's error.
    tokio::time::sleep(
        Duration::from_secs(4).saturating_sub(filled.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let (s, cache, _, body) = fetch(&c, &url).await;
    assert!(s == 503 || s == 504, "{s} {body}");
    assert_eq!(cache, "MISS");
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, cache, _, body) = fetch(&c, &url).await;
        if s == 200 {
            assert_eq!((cache.as_str(), body.as_str()), ("MISS", "v2"));
            break;
        }
        assert!(Instant::now() < deadline, "still {s} after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_row_is_remembered_for_negative_ttl() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let node = pg_node(&pg, &file, &[]);
    let c = common::client();
    let url = format!("{}/api/neg/ghost", node.api);
    let before = calls(&pg, "FROM notes WHERE id = $1");
    let started = Instant::now();
    let statuses: Vec<u16> = stream::iter(0..1000)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            async move { fetch(&c, &url).await.0 }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the window"
    );
    assert!(statuses.iter().all(|s| *s == 404));
    assert_eq!(calls(&pg, "FROM notes WHERE id = $1") - before, 1);
    pg.psql(
        "geecache",
        "INSERT INTO notes (id, body) VALUES ('ghost', 'boo')",
    );
    let inserted = Instant::now();
    loop {
        let (s, _, _, body) = fetch(&c, &url).await;
        if s == 200 {
            assert_eq!(body, "boo");
            break;
        }
        assert!(
            inserted.elapsed() < Duration::from_secs(3),
            "the insert was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "served after the window only"
    );
}

/// A 3-node Raft cluster on PostgreSQL with an admin token, and a frontend that has a peer URL.
struct Cluster {
    raft: Raft,
    _nodes: Vec<NodeProc>,
    front: NodeProc,
    apis: Vec<String>,
}

async fn cluster(pg: &Pg, file: &common::ConfigFile) -> Cluster {
    let c = common::client();
    let url = pg.url();
    let args = [
        "--config",
        file.path.to_str().unwrap(),
        "--source",
        "postgres",
        "--database-url",
        &url,
        "--admin-token",
        ADMIN,
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
    let front_peer = free_port();
    let front_self = format!("http://127.0.0.1:{front_peer}");
    let mut front_args = vec![
        "--role",
        "frontend",
        "--seeds",
        &seeds,
        "--self",
        &front_self,
    ];
    front_args.extend_from_slice(&args);
    let front = NodeProc::spawn_on(free_port(), front_peer, &front_args);
    let apis = (1..=3)
        .map(|id| raft.api(id))
        .chain([front.api.clone()])
        .collect();
    // Members learn of the frontend from its polls.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Cluster {
        raft,
        _nodes: nodes,
        front,
        apis,
    }
}

async fn delete(
    c: &reqwest::Client,
    api: &str,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = c.delete(format!("{api}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_needs_the_admin_token_and_reaches_every_node_and_the_frontend() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let c = common::client();
    // Without a configured token: 403.
    let lone = pg_node(&pg, &file, &[]);
    let r = delete(&c, &lone.api, "/api/text/a", Some(ADMIN)).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("admin_disabled"));
    drop(lone);

    let cl = cluster(&pg, &file).await;
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let r = delete(&c, &cl.apis[0], "/api/text/a", token).await;
        assert_eq!(r.status(), 401, "{token:?}");
    }
    // Warm the key everywhere (hot copies on the non-owners and the frontend), change the row.
    for _ in 0..3 {
        for api in &cl.apis {
            assert_eq!(fetch(&c, &format!("{api}/api/text/a")).await.3, "hello");
        }
    }
    pg.psql(
        "geecache",
        "UPDATE notes SET body = 'changed' WHERE id = 'a'",
    );
    for api in &cl.apis {
        assert_eq!(
            fetch(&c, &format!("{api}/api/text/a")).await.3,
            "hello",
            "{api} cached"
        );
    }
    let r = delete(&c, &cl.apis[1], "/api/text/a", Some(ADMIN)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["x-geecache-confirmed"],
        "4",
        "3 nodes and the frontend"
    );
    for api in &cl.apis {
        let (s, _, _, body) = fetch(&c, &format!("{api}/api/text/a")).await;
        assert_eq!((s, body.as_str()), (200, "changed"), "{api}");
    }
    // `geecache cluster purge` works on a configured group: every node and the frontend load
    // it again.
    pg.psql(
        "geecache",
        "UPDATE notes SET body = 'purged' WHERE id = 'a'",
    );
    for api in &cl.apis {
        assert_eq!(fetch(&c, &format!("{api}/api/text/a")).await.3, "changed");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["cluster", "purge", "text", "--addr", &cl.apis[2]])
        .args(["--peer-secret", common::TEST_SECRET])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("purged text"),
        "{out:?}"
    );
    for api in &cl.apis {
        let deadline = Instant::now() + Duration::from_secs(3);
        while fetch(&c, &format!("{api}/api/text/a")).await.3 != "purged" {
            assert!(Instant::now() < deadline, "{api} kept the purged value");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The query form, and a node that cannot be reached is reported.
    let r = delete(&c, &cl.apis[0], "/api?group=text&key=a", Some(ADMIN)).await;
    assert_eq!(r.status(), 204);
    drop(cl.front);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = delete(&c, &cl.apis[0], "/api/text/a", Some(ADMIN)).await;
    assert_eq!(r.status(), 207);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["confirmed"], 3);
    assert_eq!(v["unreachable"].as_array().unwrap().len(), 1);
    drop(cl.raft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_the_old_row_before_a_delete_caches_nothing() {
    let pg = Pg::start();
    tables(&pg);
    pg.psql(
        "geecache",
        "INSERT INTO notes (id, body) VALUES ('slow1', 'old')",
    );
    let file = common::config(GROUPS);
    let cl = cluster(&pg, &file).await;
    let c = common::client();
    // Through a non-owner, so that the owner loads and the asker waits on it.
    let ring = geecache::ring::Ring::new(
        geecache::ring::RingHash::Crc32,
        150,
        (1..=3).map(|id| geecache::ring::Member::new(&cl.raft.peer(id))),
    );
    let owner = ring.owner("slow1").unwrap().name.to_string();
    let owner_id = (1..=3).find(|&id| cl.raft.peer(id) == owner).unwrap();
    let asker = cl.raft.api((1..=3).find(|&id| id != owner_id).unwrap());
    let url = format!("{asker}/api/slow/slow1");
    // The load starts: its statement's snapshot holds the old row while it sleeps 0.8 s (within
    // the peer timeout, so that the asker waits on the owner's load).
    let early = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { fetch(&c, &url).await.3 }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.psql(
        "geecache",
        "UPDATE notes SET body = 'new' WHERE id = 'slow1'",
    );
    let r = delete(&c, &cl.apis[0], "/api/slow/slow1", Some(ADMIN)).await;
    assert_eq!(r.status(), 204);
    // A request after the DELETE does not join the old flight: it gets the new row.
    let late = fetch(&c, &format!("{}/api/slow/slow1", cl.raft.api(owner_id)))
        .await
        .3;
    assert_eq!(late, "new");
    assert_eq!(
        early.await.unwrap(),
        "old",
        "the early request began before the change"
    );
    // Nothing kept the old value: every node and the frontend answer the new row.
    for api in &cl.apis {
        assert_eq!(
            fetch(&c, &format!("{api}/api/slow/slow1")).await.3,
            "new",
            "{api}"
        );
    }
    let owner_api = cl.raft.api(owner_id);
    let text = c
        .get(format!("{owner_api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let discarded: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("geecache_fills_discarded_total{group=\"slow\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(discarded >= 1.0, "the owner refused the old fill");
}

/// `geecache node --config FILE` with a bad file: its exit status and what it said.
fn refused_with(toml: &str) -> String {
    let file = common::config(toml);
    let err = common::node_refused(&["--config", file.arg()]);
    assert!(err.contains(file.arg()), "the file is named: {err}");
    err
}

#[test]
fn bad_groups_stop_the_node_naming_the_file_the_group_and_the_field() {
    let group = |body: &str| format!("[[group]]\nname = \"users\"\nquery = \"SELECT 1\"\n{body}\n");
    let cases = [
        (group("tll = \"1m\""), "unknown field `tll`"),
        (group("ttl = \"5 parsecs\""), "field `ttl`"),
        (
            group("ttl = \"1m\"\nttl_jitter = 1.5"),
            "field `ttl_jitter`",
        ),
        (group("key_pattern = \"([a-z\""), "field `key_pattern`"),
        (group("negative_ttl = 5"), "field `negative_ttl`"),
        (
            "[[group]]\nname = \"Users\"\nquery = \"SELECT 1\"\n".to_owned(),
            "field `name`",
        ),
        (
            format!("{}{}", group(""), group("")),
            "another group has this name",
        ),
    ];
    for (toml, says) in cases {
        let err = refused_with(&toml);
        assert!(
            err.contains("\"users\"") || err.contains("\"Users\""),
            "the group is named: {err}"
        );
        assert!(err.contains(says), "{says}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_checks_the_queries_but_not_the_database_being_up() {
    let pg = Pg::start();
    tables(&pg);
    // A query PostgreSQL refuses stops the node, naming the group and PostgreSQL's reason.
    let bad = common::config(
        "[[group]]\nname = \"broken\"\nquery = \"SELECT body FROM nowhere WHERE id = $1\"\n",
    );
    let err = common::node_refused(&[
        "--config",
        bad.arg(),
        "--source",
        "postgres",
        "--database-url",
        &pg.url(),
    ]);
    assert!(
        err.contains("group broken") && err.contains("\"nowhere\" does not exist"),
        "{err}"
    );
    // So does a column that is not a value type, with the cast to use.
    let uuid = common::config(
        "[[group]]\nname = \"ids\"\nquery = \"SELECT id FROM users WHERE id = $1::uuid\"\n",
    );
    let err = common::node_refused(&[
        "--config",
        uuid.arg(),
        "--source",
        "postgres",
        "--database-url",
        &pg.url(),
    ]);
    assert!(err.contains("cast it"), "{err}");
    // The embedded source has only the demo tables.
    let err = common::node_refused(&["--config", bad.arg()]);
    assert!(err.contains("embedded source serves only"), "{err}");

    // A database that is down at startup: the node starts, misses are 503 until it is back.
    let file = common::config(GROUPS);
    pg.stop();
    let node = pg_node(&pg, &file, &["--connect-timeout", "300ms"]);
    let c = common::client();
    let (s, _, _, body) = fetch(&c, &format!("{}/api/text/a", node.api)).await;
    assert_eq!(s, 503, "{body}");
    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _, ct, body) = fetch(&c, &format!("{}/api/text/a", node.api)).await;
        if s == 200 {
            assert_eq!(
                (ct.as_str(), body.as_str()),
                ("text/plain; charset=utf-8", "hello")
            );
            break;
        }
        assert!(Instant::now() < deadline, "still {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_copy_lives_no_longer_than_its_ttl() {
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let cl = cluster(&pg, &file).await;
    let c = common::client();
    // The frontend owns nothing: every value it holds is a hot copy (--hot-ttl is 10 s).
    let url = format!("{}/api/short/k7", cl.front.api);
    for _ in 0..5 {
        assert_eq!(fetch(&c, &url).await.3, "v1");
    }
    let (_, cache, _, _) = fetch(&c, &url).await;
    assert_eq!(cache, "HIT", "kept hot");
    pg.psql("geecache", "UPDATE notes SET body = 'v2' WHERE id = 'k7'");
    let changed = Instant::now();
    loop {
        if fetch(&c, &url).await.3 == "v2" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_millis(2500),
            "the copy outlived the 1 s ttl"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_other_groups_is_flagged_and_keeps_serving() {
    let c = common::client();
    let raft = Raft::new(1, "30s");
    let (_nodes, _) = raft.form(&c, 1).await;
    let other = common::config(
        "[source.queries]\nscores = \"SELECT value FROM scores WHERE name = $1 AND true\"\n",
    );
    let two = raft.start_with(2, &["--config", other.path.to_str().unwrap()]);
    two.wait_ready();
    converged(&c, &raft, &[1, 2], &[1, 2], Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = common::cluster_view(&c, &raft.api(2)).await.unwrap();
        if v["groups_match"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "no mismatch seen: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(two.metric(&c, "geecache_groups_mismatch").await, 1.0);
    assert!(two.log_text().contains("differ from its cluster's"));
    let one = common::cluster_view(&c, &raft.api(1)).await.unwrap();
    assert_eq!(one["groups_match"], true);
    assert_eq!(
        fetch(&c, &format!("{}/api?key=Tom", raft.api(2))).await.0,
        200
    );
}

/// A node that left keeps answering its successors' peeks while it drains (warm handoff): a
/// DELETE made meanwhile reaches it too, or a successor would take the deleted value from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_a_node_that_left_and_still_drains() {
    use geecache::ring::{Member, Ring, RingHash};
    let pg = Pg::start();
    tables(&pg);
    let file = common::config(GROUPS);
    let c = common::client();
    let url = pg.url();
    let base = [
        "--config",
        file.path.to_str().unwrap(),
        "--source",
        "postgres",
        "--database-url",
        &url,
        "--admin-token",
        ADMIN,
    ];
    let raft = Raft::new(3, "30s");
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|id| {
            // Peeks only: a leaver that sent all it holds answers peeks for 0.3 s, not the
            // drain this test needs to reach it in.
            let drain: &[&str] = if id == 3 {
                &["--handoff-drain", "30s", "--handoff-send", "false"]
            } else {
                &["--handoff-send", "false"]
            };
            raft.start_with(id, &[&base[..], drain].concat())
        })
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    converged(&c, &raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    // Older than a burst of ring changes (`BURST_MS`), so that node 3 is the one peeked.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ring = Ring::new(
        RingHash::Crc32,
        150,
        (1..=3).map(|id| Member::new(&raft.peer(id))),
    );
    let of_three: Vec<String> = (1..=1000)
        .map(|i| format!("k{i}"))
        .filter(|k| *ring.owner(k).unwrap().name == *raft.peer(3))
        .collect();
    let (target, others) = of_three.split_first().unwrap();
    let on_three = format!("{}/api/text/{target}", raft.api(3));
    assert_eq!(fetch(&c, &on_three).await.3, "v1");
    assert_eq!(fetch(&c, &on_three).await.1, "HIT", "node 3 holds it");
    // A second key of node 3's, which no client asks while it drains: the DELETE of it will
    // reach its new owner only, as when the fan-out to a node that left does not arrive.
    let two = Ring::new(
        RingHash::Crc32,
        150,
        (1..=2).map(|id| Member::new(&raft.peer(id))),
    );
    let (missed, others) = others.split_last().unwrap();
    let heir = (1..=2)
        .find(|&id| *two.owner(missed).unwrap().name == *raft.peer(id))
        .unwrap();
    let missed_on_three = format!("{}/api/text/{missed}", raft.api(3));
    assert_eq!(fetch(&c, &missed_on_three).await.3, "v1");

    // Node 3's other keys, asked through node 1 one every 50 ms, from before node 3 leaves:
    // once the ring has changed, each is a peek at node 3, which keeps it draining.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asking = tokio::spawn({
        let (c, stop, api) = (c.clone(), stop.clone(), raft.api(1));
        let others = others.to_vec();
        async move {
            for k in others.iter().cycle() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                fetch(&c, &format!("{api}/api/text/{k}")).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    nodes[2].signal("TERM");
    converged(&c, &raft, &[1, 2], &[1, 2], Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.psql(
        "geecache",
        &format!("UPDATE notes SET body = 'v2' WHERE id = '{target}'"),
    );
    let r = delete(
        &c,
        &raft.api(1),
        &format!("/api/text/{target}"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(r.status(), 204);
    let (s, _, _, body) = fetch(&c, &format!("{}/api/text/{target}", raft.api(1))).await;
    assert_eq!((s, body.as_str()), (200, "v2"), "not the value node 3 held");
    assert!(
        nodes[2].child.try_wait().unwrap().is_none(),
        "node 3 was still draining: the peek could have reached it"
    );

    // Node 3 still holds v1 of `missed` and is asked for it (a peek) by the new owner, which
    // alone was told of the change: it refuses a value read before its invalidation.
    pg.psql(
        "geecache",
        &format!("UPDATE notes SET body = 'v2' WHERE id = '{missed}'"),
    );
    let told = c
        .delete(format!("{}/_geecache/text/{missed}", raft.peer(heir)))
        .bearer_auth(common::TEST_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(told.status(), 204);
    let refused = "geecache_handoff_peeks_total{group=\"text\",outcome=\"refused_stale\"}";
    let before = nodes[heir as usize - 1].metric(&c, refused).await;
    let (s, _, _, body) = fetch(&c, &format!("{}/api/text/{missed}", raft.api(heir))).await;
    assert_eq!(
        (s, body.as_str()),
        (200, "v2"),
        "not node 3's value from before the DELETE"
    );
    assert_eq!(
        nodes[heir as usize - 1].metric(&c, refused).await,
        before + 1.0
    );
    assert!(
        nodes[2].child.try_wait().unwrap().is_none(),
        "node 3 was still draining: the peek reached it"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    asking.await.unwrap();
}
