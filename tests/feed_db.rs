//! The change feed in a real database, as a team runs it in front of its production
//! PostgreSQL: roles with only their rights, several installs in one database, rows that must
//! not wedge the feed, table names as PostgreSQL has them, loads that cannot write, and values
//! too large to read.

mod common;

use std::time::{Duration, Instant};

use common::{NodeProc, Pg};

/// `geecache ARGS`: whether it succeeded, its stdout and stderr.
fn geecache(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `geecache db feed COMMAND --config FILE --database-url URL EXTRA...`: whether it
/// succeeded, its stdout and stderr.
fn feed_try(
    command: &str,
    file: &common::ConfigFile,
    url: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        "db",
        "feed",
        command,
        "--config",
        file.arg(),
        "--database-url",
        url,
    ];
    args.extend_from_slice(extra);
    geecache(&args)
}

/// [`feed_try`], which must succeed; its stdout.
fn feed(command: &str, file: &common::ConfigFile, url: &str, extra: &[&str]) -> String {
    let (ok, out, err) = feed_try(command, file, url, extra);
    assert!(ok, "db feed {command}: {out}{err}");
    out
}

/// A node of `file`'s groups on `url`, which stops answering feed-backed values as fresh 1 s
/// after it loses track of the feed.
fn node(file: &common::ConfigFile, url: &str) -> NodeProc {
    NodeProc::spawn(&[
        "--config",
        file.arg(),
        "--source",
        "postgres",
        "--database-url",
        url,
        "--max-staleness",
        "1s",
        "--feed-poll",
        "5ms",
    ])
}

/// Status, `X-Cache` and body of a GET.
async fn read(c: &reqwest::Client, url: &str) -> (u16, String, String) {
    let r = c.get(url).send().await.unwrap();
    let cache = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), cache, r.text().await.unwrap())
}

/// Warms `url`, runs `update` (which sets the row to `want`), and checks that the new value is
/// served within `within` of the update's commit.
async fn fresh(c: &reqwest::Client, url: &str, update: impl FnOnce(), want: &str) -> Duration {
    common::warm(c, url).await;
    update();
    let took = common::until(c, url, want.as_bytes(), Duration::from_secs(1)).await;
    eprintln!("{url}: {want} served {took:?} after the commit");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_role_with_only_its_table_rights_writes_and_its_changes_reach_the_cache() {
    let c = common::client();
    let pg = Pg::start();
    // The installer owns the table (as a migration role would); the application has its
    // table rights and nothing else; the nodes' role reads.
    pg.psql(
        "geecache",
        "CREATE ROLE installer LOGIN; CREATE ROLE app LOGIN; CREATE ROLE cache LOGIN; \
         GRANT CREATE ON DATABASE geecache TO installer; \
         CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL); \
         ALTER TABLE accounts OWNER TO installer; \
         INSERT INTO accounts VALUES (1, 'ada'), (2, 'bob'); \
         GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO app; \
         GRANT SELECT ON accounts TO cache;",
    );
    let file = common::config(
        "[[group]]\nname = \"accounts\"\nquery = \"SELECT name FROM accounts WHERE id = $1::int\"\n\
         invalidate = [{ table = \"accounts\", key = \"id::text\" }]\n",
    );
    feed(
        "install",
        &file,
        &pg.url_as("installer"),
        &["--grant", "cache"],
    );
    let n = node(&file, &pg.url_as("cache"));
    let at = |k: &str| format!("{}/api/accounts/{k}", n.api);

    let app = |sql: &str| pg.psql_as("app", sql).unwrap();
    fresh(
        &c,
        &at("1"),
        || {
            app("UPDATE accounts SET name = 'ann' WHERE id = 1");
        },
        "ann",
    )
    .await;
    fresh(
        &c,
        &at("2"),
        || {
            app("DELETE FROM accounts WHERE id = 2; INSERT INTO accounts VALUES (2, 'bea')");
        },
        "bea",
    )
    .await;

    // Nobody but the installer writes the feed, neither the application nor the nodes.
    for role in ["app", "cache"] {
        let err = pg
            .psql_as(
                role,
                "INSERT INTO geecache.changes (grp, key) VALUES ('accounts', '1')",
            )
            .unwrap_err();
        assert!(err.contains("permission denied"), "{role}: {err}");
    }
    assert!(
        pg.psql_as("app", "SELECT count(*) FROM geecache.changes")
            .is_err(),
        "the application reads nothing of the feed"
    );
    // The nodes' role records its position (through the installer's function).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("geecache", "SELECT count(*) FROM geecache.consumers") == "0" {
        assert!(Instant::now() < deadline, "no position recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = n.log_text();
    assert!(
        !log.contains("could not record") && !log.contains("prune failed"),
        "{log}"
    );
    // The triggers write with the installer's rights, whoever wrote the row.
    let (ok, out, err) = feed_try("status", &file, &pg.url(), &[]);
    assert!(ok, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("accounts") && l.contains("installer") && l.contains("yes")),
        "{out}"
    );
}

const ALPHA: &str = "[[group]]\nname = \"alpha\"\nquery = \"SELECT v FROM t_a WHERE id = $1::int\"\n\
                     invalidate = [{ table = \"t_a\", key = \"id::text\" }]\n";
const BETA: &str = "[[group]]\nname = \"beta\"\nquery = \"SELECT v FROM t_b WHERE id = $1::int\"\n\
                    invalidate = [{ table = \"t_b\", key = \"id::text\" }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_in_one_database_leave_each_other_alone() {
    let c = common::client();
    let pg = Pg::start();
    pg.psql(
        "geecache",
        "CREATE TABLE t_a (id int PRIMARY KEY, v text); CREATE TABLE t_b (id int PRIMARY KEY, v text); \
         INSERT INTO t_a VALUES (1, 'a0'); INSERT INTO t_b VALUES (1, 'b0');",
    );
    let (a, b) = (common::config(ALPHA), common::config(BETA));
    let url = pg.url();
    feed("install", &a, &url, &[]);
    feed("install", &b, &url, &[]);
    let (na, nb) = (node(&a, &url), node(&b, &url));
    let (at_a, at_b) = (
        format!("{}/api/alpha/1", na.api),
        format!("{}/api/beta/1", nb.api),
    );
    let mut version = 0;
    let mut check = async |table: &str, url: &str| {
        version += 1;
        let v = format!("{}{version}", &table[2..]);
        let sql = format!("UPDATE {table} SET v = '{v}' WHERE id = 1");
        fresh(&c, url, || drop(pg.psql("geecache", &sql)), &v).await;
    };
    check("t_a", &at_a).await;
    check("t_b", &at_b).await;
    // Installed again, in the other order: neither loses its triggers.
    feed("install", &a, &url, &[]);
    check("t_b", &at_b).await;
    feed("install", &b, &url, &[]);
    check("t_a", &at_a).await;

    // One uninstalled: the other's changes keep reaching it ...
    feed("uninstall", &b, &url, &[]);
    check("t_a", &at_a).await;
    let (ok, out, _) = feed_try("status", &b, &url, &[]);
    assert!(!ok && out.contains("missing: trigger"), "{out}");
    // ... and the node whose triggers went stops answering its group as fresh within
    // --max-staleness (1 s): every read is a load, so a change is served at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        let (status, cache, _) = read(&c, &at_b).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
    }
    pg.psql("geecache", "UPDATE t_b SET v = 'unfed' WHERE id = 1");
    assert_eq!(read(&c, &at_b).await.2, "unfed");
    assert_eq!(
        nb.metric(&c, "geecache_feed_triggers_missing{group=\"beta\"}")
            .await,
        2.0
    );
    assert!(nb.log_text().contains("triggers are missing"));
    // Installed again: it caches again, and stays fresh.
    feed("install", &b, &url, &[]);
    check("t_b", &at_b).await;
    assert_eq!(
        nb.metric(&c, "geecache_feed_triggers_missing{group=\"beta\"}")
            .await,
        0.0
    );
    // A trigger disabled under the node counts as missing too.
    pg.psql("geecache", "ALTER TABLE t_a DISABLE TRIGGER USER");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(read(&c, &at_a).await.1, "MISS");
    assert_eq!(read(&c, &at_a).await.1, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_in_the_feed_wedges_it() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(10);
    let n = pg.node(&["--max-staleness", "1s"]);
    let tom = format!("{}/api?key=Tom", n.api);
    let mut version = 700;
    // Each written as the installer (here the superuser), which may write the feed.
    for (what, sql) in [
        (
            "a 200 MB key",
            "INSERT INTO geecache.changes (grp, key) VALUES ('scores', repeat('x', 200000000))",
        ),
        (
            "20,000 rows of 20 KB keys",
            "INSERT INTO geecache.changes (grp, key) \
             SELECT 'scores', repeat('k', 20000) || g FROM generate_series(1, 20000) g",
        ),
        (
            "1,000,000 rows in one transaction",
            "INSERT INTO geecache.changes (grp, key) \
             SELECT 'scores', 'k' || g FROM generate_series(1, 1000000) g",
        ),
    ] {
        pg.psql("geecache", sql);
        version += 1;
        let update = format!("UPDATE scores SET value = '{version}' WHERE name = 'Tom'");
        let took = fresh(
            &c,
            &tom,
            || drop(pg.psql("geecache", &update)),
            &version.to_string(),
        )
        .await;
        eprintln!("after {what}: an update served {took:?} after its commit");
    }
    assert!(!n.log_text().contains("poll_timeout"), "{}", n.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_named_as_postgresql_names_them() {
    let c = common::client();
    let pg = Pg::start();
    pg.psql(
        "geecache",
        "CREATE TABLE users (id int PRIMARY KEY, v text); \
         CREATE TABLE \"Users\" (id int PRIMARY KEY, v text); \
         CREATE SCHEMA app; CREATE TABLE app.items (id int PRIMARY KEY, v text); \
         CREATE FUNCTION app.item_key(int) RETURNS text LANGUAGE sql AS 'SELECT $1::text'; \
         CREATE TABLE \"Order Lines\" (id int PRIMARY KEY, v text); \
         INSERT INTO users VALUES (1, 'lower'); INSERT INTO \"Users\" VALUES (1, 'upper'); \
         INSERT INTO app.items VALUES (1, 'item'); INSERT INTO \"Order Lines\" VALUES (1, 'line');",
    );
    // Unquoted, `Users` would be `users`: refused, with the way to say either.
    let folded = common::config(
        "[[group]]\nname = \"upper\"\nquery = \"SELECT v FROM \\\"Users\\\" WHERE id = $1::int\"\n\
         invalidate = [{ table = \"Users\", key = \"id::text\" }]\n",
    );
    let (ok, out, err) = feed_try("install", &folded, &pg.url(), &[]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("upper") && err.contains("invalidate") && err.contains("folds"),
        "{err}"
    );
    // A function of one's own without its schema would fail every write (the triggers run
    // with search_path = pg_catalog): refused at install, naming the group.
    let unqualified = common::config(
        "[[group]]\nname = \"bare\"\nquery = \"SELECT v FROM app.items WHERE id = $1::int\"\n\
         invalidate = [{ table = \"app.items\", key = \"item_key(items.id)\" }]\n",
    );
    pg.psql(
        "geecache",
        "CREATE FUNCTION public.item_key(int) RETURNS text LANGUAGE sql AS 'SELECT $1::text'",
    );
    let (ok, _, err) = feed_try("install", &unqualified, &pg.url(), &[]);
    assert!(
        !ok && err.contains("group bare") && err.contains("item_key") && err.contains("schema"),
        "{err}"
    );
    assert_eq!(
        pg.psql("geecache", "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.items'::regclass AND NOT tgisinternal"),
        "0",
        "nothing installed"
    );
    // A table that does not exist: the group and the table are named.
    let missing = common::config(
        "[[group]]\nname = \"ghost\"\nquery = \"SELECT v FROM users WHERE id = $1::int\"\n\
         invalidate = [{ table = \"app.ghosts\", key = \"id::text\" }]\n",
    );
    let (ok, _, err) = feed_try("install", &missing, &pg.url(), &[]);
    assert!(
        !ok && err.contains("group ghost") && err.contains("\"app\".\"ghosts\""),
        "{err}"
    );
    let file = common::config(
        r#"
[[group]]
name = "upper"
query = "SELECT v FROM \"Users\" WHERE id = $1::int"
invalidate = [{ table = '"Users"', key = "id::text" }]

[[group]]
name = "items"
query = "SELECT v FROM app.items WHERE id = $1::int"
# A function of one's own in the key, with its schema (the triggers' search_path is pinned).
invalidate = [{ table = "app.items", key = "app.item_key(items.id)" }]

[[group]]
name = "lines"
query = "SELECT v FROM \"Order Lines\" WHERE id = $1::int"
invalidate = [{ table = '"Order Lines"', key = '"Order Lines".id::text' }]
"#,
    );
    let url = pg.url();
    feed("install", &file, &url, &[]);
    let on = |table: &str| {
        pg.psql(
            "geecache",
            &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND NOT tgisinternal"),
        )
    };
    assert_eq!(on("\"Users\""), "2");
    assert_eq!(on("users"), "0", "the lower-case table is another table");
    assert_eq!(on("app.items"), "2");
    assert_eq!(on("\"Order Lines\""), "2");
    let n = node(&file, &url);
    for (group, table, v) in [
        ("upper", "\"Users\"", "U2"),
        ("items", "app.items", "I2"),
        ("lines", "\"Order Lines\"", "L2"),
    ] {
        let sql = format!("UPDATE {table} SET v = '{v}' WHERE id = 1");
        let at = format!("{}/api/{group}/1", n.api);
        fresh(&c, &at, || drop(pg.psql("geecache", &sql)), v).await;
    }
    // A change to `users` is none of `upper`'s.
    let before = pg.psql("geecache", "SELECT count(*) FROM geecache.changes");
    pg.psql("geecache", "UPDATE users SET v = 'x' WHERE id = 1");
    assert_eq!(
        pg.psql("geecache", "SELECT count(*) FROM geecache.changes"),
        before
    );
}

#[test]
fn a_query_that_writes_stops_the_node_and_never_runs() {
    let pg = Pg::start();
    pg.psql(
        "geecache",
        "CREATE TABLE jobs (id int PRIMARY KEY, name text); \
         INSERT INTO jobs SELECT g, 'job' || g FROM generate_series(1, 3) g; \
         CREATE SEQUENCE tickets;",
    );
    for query in [
        "DELETE FROM jobs WHERE id = $1::int RETURNING name",
        "WITH d AS (DELETE FROM jobs WHERE id::text = $1 OR true RETURNING name) SELECT name FROM d",
        "SELECT nextval('tickets')::text || $1",
    ] {
        let file = common::config(&format!(
            "[[group]]\nname = \"eats\"\nquery = \"{query}\"\n"
        ));
        let err = common::node_refused(&[
            "--config",
            file.arg(),
            "--source",
            "postgres",
            "--database-url",
            &pg.url(),
        ]);
        assert!(
            err.contains("group eats") && err.contains("writes"),
            "{query}: {err}"
        );
    }
    assert_eq!(pg.psql("geecache", "SELECT count(*) FROM jobs"), "3");
    assert_eq!(
        pg.psql("geecache", "SELECT last_value FROM tickets"),
        "1",
        "never advanced (a fresh sequence reads 1 until its first nextval)"
    );
    assert_eq!(pg.psql("geecache", "SELECT is_called FROM tickets"), "f");
}

/// The node's peak resident memory, in bytes.
fn peak_rss(n: &NodeProc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", n.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_over_the_value_limit_are_never_read_into_the_node() {
    let c = common::client();
    let pg = Pg::start();
    // 8 rows of 100 MB (and one small), of text and of bytea.
    pg.psql(
        "geecache",
        "CREATE TABLE blobs (id text PRIMARY KEY, body text, data bytea); \
         INSERT INTO blobs SELECT 'big' || g, repeat('x', 100000000), \
             convert_to(repeat('y', 100000000), 'UTF8') FROM generate_series(1, 8) g; \
         INSERT INTO blobs VALUES ('small', 'fits', '\\x00ff');",
    );
    let file = common::config(
        "[[group]]\nname = \"text\"\nquery = \"SELECT body FROM blobs WHERE id = $1;\"\n\n\
         [[group]]\nname = \"bytes\"\nquery = \"SELECT data FROM blobs WHERE id = $1 -- the raw bytes\"\n",
    );
    let n = NodeProc::spawn(&[
        "--config",
        file.arg(),
        "--source",
        "postgres",
        "--database-url",
        &pg.url(),
        "--cache-bytes",
        "67108864",
    ]);
    let before = peak_rss(&n);
    for round in 0..3 {
        for group in ["text", "bytes"] {
            let reads = (1..=8).map(|i| {
                let (c, url) = (c.clone(), format!("{}/api/{group}/big{i}", n.api));
                tokio::spawn(async move {
                    let r = c.get(url).send().await.unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                })
            });
            for r in futures_util::future::join_all(reads).await {
                let (status, body) = r.unwrap();
                assert_eq!(status, 502, "{body}");
                assert!(
                    body.contains("value_too_large") && body.contains("100000000 bytes"),
                    "{body}"
                );
            }
        }
        if round == 0 {
            pg.psql("geecache", "SELECT pg_stat_statements_reset()");
        }
    }
    // Remembered: the later rounds did not ask PostgreSQL again.
    assert_eq!(pg.calls("%geecache_value%"), 0);
    let small = format!("{}/api/text/small", n.api);
    assert_eq!(read(&c, &small).await.2, "fits");
    let peak = peak_rss(&n);
    eprintln!(
        "peak RSS {} MiB before, {} MiB after 48 requests for 100 MB rows",
        before >> 20,
        peak >> 20
    );
    // The README's bound: --cache-bytes plus 64 MiB.
    assert!(peak < (64 << 20) + (64 << 20), "peak RSS {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_pruned_while_no_poll_gets_through() {
    let c = common::client();
    let pg = Pg::start();
    pg.psql(
        "geecache",
        "CREATE ROLE cache LOGIN; CREATE TABLE t_a (id int PRIMARY KEY, v text); \
         INSERT INTO t_a VALUES (1, 'a0'); GRANT SELECT ON t_a TO cache;",
    );
    let file = common::config(ALPHA);
    feed("install", &file, &pg.url(), &["--grant", "cache"]);
    let n = NodeProc::spawn(&[
        "--config",
        file.arg(),
        "--source",
        "postgres",
        "--database-url",
        &pg.url_as("cache"),
        "--max-staleness",
        "1s",
        "--feed-retention",
        "1s",
    ]);
    let at = format!("{}/api/alpha/1", n.api);
    common::warm(&c, &at).await;
    // The node's polls fail from now on (it may not read the feed), but it may still prune.
    pg.psql("geecache", "REVOKE SELECT ON geecache.changes FROM cache");
    pg.psql("geecache", "UPDATE t_a SET v = 'a1' WHERE id = 1");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg.psql("geecache", "SELECT count(*) FROM geecache.changes") != "0" {
        assert!(Instant::now() < deadline, "not pruned:\n{}", n.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meanwhile the value is not answered as fresh; once polls get through again, the node
    // finds the rows it missed pruned, drops the group, and serves the change.
    let (_, cache, body) = read(&c, &at).await;
    assert!(cache != "HIT" || body == "a1", "{cache} {body}");
    pg.psql("geecache", "GRANT SELECT ON geecache.changes TO cache");
    common::until(&c, &at, b"a1", Duration::from_secs(5)).await;
    assert_eq!(common::warm(&c, &at).await, b"a1");
    assert!(
        n.metric(&c, "geecache_feed_drops_total{cause=\"pruned\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_drops_the_group_and_a_key_past_1_kib_is_not_written() {
    let c = common::client();
    let pg = Pg::start();
    pg.psql(
        "geecache",
        "CREATE TABLE t_a (id int PRIMARY KEY, v text); INSERT INTO t_a VALUES (1, 'a0');",
    );
    let file = common::config(ALPHA);
    feed("install", &file, &pg.url(), &[]);
    let n = node(&file, &pg.url());
    let at = format!("{}/api/alpha/1", n.api);
    // TRUNCATE fires no row trigger: without the statement trigger the old value stayed.
    common::warm(&c, &at).await;
    pg.psql("geecache", "TRUNCATE t_a");
    let start = Instant::now();
    while read(&c, &at).await.0 != 404 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the truncated row still answers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pg.psql("geecache", "INSERT INTO t_a VALUES (1, 'a0')");
    assert!(
        common::metric(&c, &n.api, "geecache_feed_drops_total{cause=\"truncate\"}").await >= 1.0
    );
    // A key longer than a cache key takes no row in the feed (the node, which prunes, gone).
    drop(n);
    let other = common::config(
        "[[group]]\nname = \"long\"\nquery = \"SELECT v FROM t_a WHERE id::text = $1\"\n\
         invalidate = [{ table = \"t_a\", key = \"repeat('k', 2000) || id\" }]\n",
    );
    feed("install", &other, &pg.url(), &[]);
    let count = || {
        pg.psql(
            "geecache",
            "SELECT count(*) FROM geecache.changes WHERE grp = 'long'",
        )
    };
    let before = count();
    pg.psql("geecache", "UPDATE t_a SET v = 'x' WHERE id = 1");
    assert_eq!(count(), before);
}
