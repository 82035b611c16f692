//! One real node process against a real PostgreSQL: singleflight counted at the database,
//! outages, timeouts, and byte-identical answers from the embedded and seeded sources.

mod common;

use std::time::{Duration, Instant};

use common::{NodeProc, Pg, get};
use futures_util::future::join_all;

const PRODUCTS_QUERY: &str = "%FROM products WHERE id%";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_misses_reach_postgres_once() {
    let pg = Pg::start();
    pg.seed(1000);
    let node = pg.node(&[]);
    // The node's startup ran each query once (the check that it does not write).
    pg.psql("geecache", "SELECT pg_stat_statements_reset()");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(600)
        .build()
        .unwrap();

    // Hold the table locked so that every request is in flight before the one query can run.
    let db = common::lock_products(&pg).await;

    let url = format!("{}/api?group=products&key=777", node.api);
    let requests: Vec<_> = (0..500)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node
        .metric(&client, "geecache_gets_total{group=\"products\"}")
        .await
        < 500.0
    {
        assert!(Instant::now() < deadline, "requests did not all arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.batch_execute("COMMIT").await.unwrap();

    let answers: Vec<_> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expected = geecache::source::demo::product_value(777).into_bytes();
    assert!(
        answers
            .iter()
            .all(|(s, body)| *s == 200 && *body == expected)
    );
    assert_eq!(
        pg.calls(PRODUCTS_QUERY),
        1,
        "queries that reached PostgreSQL"
    );
    assert_eq!(
        node.metric(&client, "geecache_loads_deduped_total{group=\"products\"}")
            .await,
        499.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_a_5xx_then_heals_without_restart() {
    let pg = Pg::start();
    pg.seed(100);
    let node = pg.node(&["--statement-timeout", "1s", "--connect-timeout", "1s"]);
    let client = reqwest::Client::new();
    let api = |k: &str| format!("{}/api?group=products&key={k}", node.api);

    assert_eq!(get(&client, &api("1")).await.0, 200);
    pg.stop();

    let started = Instant::now();
    let (status, body) = get(&client, &api("2")).await;
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&body);
    assert!((500..600).contains(&status), "{status} {body}");
    assert!(body.contains("database"), "reason in the body: {body}");
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    // Hits still come from memory, and the node is alive.
    let (status, body) = get(&client, &api("1")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(get(&client, &format!("{}/health", node.api)).await.0, 200);
    // The failure was not cached: the same key again is a fresh try, also failing.
    assert!(get(&client, &api("2")).await.0 >= 500);

    pg.restart();
    let (status, body) = get(&client, &api("2")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, geecache::source::demo::product_value(2).into_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_query_is_a_504_within_the_statement_timeout() {
    let pg = Pg::start();
    pg.seed(100);
    let node = pg.node(&["--statement-timeout", "500ms"]);
    let client = reqwest::Client::new();
    let db = common::lock_products(&pg).await;

    let started = Instant::now();
    let (status, body) = get(&client, &format!("{}/api/products/5", node.api)).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("source_timeout"));
    assert!(started.elapsed() < Duration::from_secs(2));
    db.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        get(&client, &format!("{}/api/products/5", node.api))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_and_seeded_postgres_answer_the_same_bytes() {
    let pg = Pg::start();
    pg.seed(1000);
    let on_pg = pg.node(&[]);
    let embedded = NodeProc::spawn(&["--products", "1000", "--embedded-latency", "0ms"]);
    let client = reqwest::Client::new();
    let mut paths: Vec<String> = ["Tom", "Jack", "Sam", "Nobody"]
        .iter()
        .map(|k| format!("/api?key={k}"))
        .collect();
    for id in ["1", "2", "500", "999", "1000", "1001", "0", "abc", "%20"] {
        paths.push(format!("/api/products/{id}"));
    }
    for path in paths {
        let a = get(&client, &format!("{}{path}", on_pg.api)).await;
        let b = get(&client, &format!("{}{path}", embedded.api)).await;
        assert_eq!(a, b, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_4xx() {
    let node = NodeProc::spawn(&["--embedded-latency", "0ms"]);
    let client = reqwest::Client::new();
    let long = "k".repeat(3000);
    let cases: Vec<(String, u16, &str)> = vec![
        ("/api?key=".into(), 400, "bad_key"),
        ("/api".into(), 400, "bad_query"),
        (format!("/api?key={long}"), 400, "bad_key"),
        (format!("/api/scores/{long}"), 400, "bad_key"),
        ("/api?key=%zz".into(), 400, "bad_query"),
        ("/api?key=%ff".into(), 400, "bad_query"),
        ("/api/scores/%g1".into(), 400, "bad_path"),
        ("/api?key=Tom&key=Sam".into(), 400, "bad_query"),
        ("/api?key=Tom&colour=red".into(), 400, "bad_query"),
        ("/api?key=Tom&group=nope".into(), 404, "unknown_group"),
        ("/api/nope/Tom".into(), 404, "unknown_group"),
        ("/api?key=Nobody".into(), 404, "not_found"),
        ("/elsewhere".into(), 404, "no_route"),
    ];
    for (path, status, code) in cases {
        let (s, body) = get(&client, &format!("{}{path}", node.api)).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(s, status, "{path}: {body}");
        assert!(body.contains(code), "{path}: {body}");
    }
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let r = client
            .request(method.clone(), format!("{}/api?key=Tom", node.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "GET, HEAD, DELETE");
    }
    // DELETE exists, and this node has no admin token.
    let r = client
        .delete(format!("{}/api?key=Tom", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // After all of that the node still answers.
    assert_eq!(
        get(&client, &format!("{}/api?key=Tom", node.api)).await,
        (200, b"630".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let mut node = NodeProc::spawn(&["--embedded-latency", "300ms"]);
    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("{}/api/products/9", node.api));
        async move { get(&client, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.signal("TERM");
    // The request in flight when SIGTERM arrived still completes.
    assert_eq!(slow.await.unwrap().0, 200);
    let status = tokio::task::spawn_blocking(move || node.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_and_the_gauges_exist_at_the_first_scrape() {
    let pg = Pg::start();
    pg.seed(10);
    let node = pg.node(&[]);
    let client = reqwest::Client::new();
    // The first scrape, before any request: the stores' gauges are there.
    let first = common::metrics_text(&client, &node.api).await;
    assert!(
        first.contains("geecache_cache_bytes{cache=\"main\"}"),
        "{first}"
    );
    assert_eq!(
        get(&client, &format!("{}/api/products/3", node.api))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&client, &format!("{}/api/products/x", node.api))
            .await
            .0,
        404
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // the pool's gauges, every second
    let body = common::metrics_text(&client, &node.api).await;
    let typed: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(typed.len() > 20, "{body}");
    let missing: Vec<&&str> = typed
        .iter()
        .filter(|name| !body.contains(&format!("# HELP {name} ")))
        .collect();
    assert!(missing.is_empty(), "no HELP for {missing:?}");
    // Prometheus's own linter (Debian's `prometheus` package, which scripts/install-deps.sh
    // installs) finds nothing: names, units, HELP and TYPE as it wants them.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh installs it)");
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );
}
