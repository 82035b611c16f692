//! Warm handoff with real node processes on PostgreSQL: after a ring change, a new owner asks
//! a moved key's previous owner before the source, and takes only values as fresh as a load.

mod common;

use std::time::{Duration, Instant};

use common::raft::{Raft, converged};
use common::{NodeProc, Pg, Proxy, TEST_SECRET, get, metrics_text};
use geecache::ring::{Member, Ring, RingHash};
use geecache::source::demo::product_value;

fn ring(raft: &Raft, ids: &[u64]) -> Ring {
    Ring::new(
        RingHash::Crc32,
        150,
        ids.iter().map(|&id| Member::new(&raft.peer(id))),
    )
}

/// Product keys 1..=rows whose owner is `to` under `after` and `from` under `before`.
fn moved(raft: &Raft, before: &[u64], after: &[u64], from: u64, to: u64, rows: u64) -> Vec<String> {
    let (b, a) = (ring(raft, before), ring(raft, after));
    (1..=rows)
        .map(|i| i.to_string())
        .filter(|k| {
            *b.owner(k).unwrap().name == *raft.peer(from)
                && *a.owner(k).unwrap().name == *raft.peer(to)
        })
        .collect()
}

/// Nodes 1-3 of `raft` started with `args`, ready and agreed on one ring.
async fn three_nodes(c: &reqwest::Client, raft: &Raft, args: &[&str]) -> Vec<NodeProc> {
    let nodes: Vec<NodeProc> = (1..=3).map(|id| raft.start_with(id, args)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    converged(c, raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    // A ring replaced within a second of being made is taken for one of a burst of changes,
    // whose owners are not peeked (`ring::cluster::BURST_MS`): the tests' ring changes come
    // later than that, as they would in a cluster that has been serving. (On a fast machine a
    // test warmed its keys and made node 3 leave within 0.5 s of the 3-node ring: node 2
    // peeked node 1, under the boot's 1-node ring, and loaded all of them.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    nodes
}

/// PostgreSQL with 2,000 products and three nodes on it (`extra`: more flags for each).
async fn seeded_three(c: &reqwest::Client, extra: &[&str]) -> (Pg, Raft, Vec<NodeProc>) {
    let pg = Pg::start();
    pg.seed(2000);
    let url = pg.url();
    let args = [&["--source", "postgres", "--database-url", &url][..], extra].concat();
    let raft = Raft::new(3, "30s");
    let nodes = three_nodes(c, &raft, &args).await;
    (pg, raft, nodes)
}

/// Waits (10 s at most) until `series` at `api` reaches `at_least`; else fails with `what`.
async fn until_metric(c: &reqwest::Client, api: &str, series: &str, at_least: f64, what: &str) {
    common::eventually(what, Duration::from_secs(10), async || {
        common::metric(c, api, series).await >= at_least
    })
    .await;
}

fn products_queries(pg: &Pg) -> i64 {
    pg.calls("%FROM products%")
}

/// A warm 3-node cluster (started with `three_args`), 20 keys cached on node 1 that move to
/// node 4, then node 4 (started with `four_args`) joined.
struct Joined {
    four: NodeProc,
    _nodes: Vec<NodeProc>,
    raft: Raft,
    pg: Pg,
    keys: Vec<String>,
}

/// Waits until node 4 has kept `n` entries it was sent as it joined.
async fn until_four_kept(c: &reqwest::Client, four: &NodeProc, n: usize) {
    let kept = "geecache_handoff_received_total{outcome=\"kept\"}";
    until_metric(
        c,
        &four.api,
        kept,
        n as f64,
        "node 4 was not sent the moved keys",
    )
    .await;
}

/// GETs each key at `node`, checks it answers the product's row, and says whether it was a HIT.
async fn hits_at(c: &reqwest::Client, node: &NodeProc, keys: &[String]) -> Vec<bool> {
    let mut hits = Vec::new();
    for k in keys {
        let r = c
            .get(format!("{}/api/products/{k}", node.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        hits.push(r.headers()["x-cache"] == "HIT");
        assert_eq!(
            r.bytes().await.unwrap(),
            product_value(k.parse().unwrap()).into_bytes()
        );
    }
    hits
}

async fn node_four_joins(c: &reqwest::Client, three_args: &[&str], four_args: &[&str]) -> Joined {
    let pg = Pg::start();
    pg.seed(20_000);
    let url = pg.url();
    let args = ["--source", "postgres", "--database-url", &url];
    let raft = Raft::new(3, "30s");
    let nodes = three_nodes(c, &raft, &[&args[..], three_args].concat()).await;
    // Keys that will move from node 1 to node 4, cached on node 1.
    let mut keys = moved(&raft, &[1, 2, 3], &[1, 2, 3, 4], 1, 4, 20_000);
    assert!(keys.len() >= 20, "{} keys move", keys.len());
    keys.truncate(20);
    for k in &keys {
        common::warm(c, &format!("{}/api/products/{k}", raft.api(1))).await;
    }
    let four = raft.start_with(4, &[&args[..], four_args].concat());
    four.wait_ready();
    converged(
        c,
        &raft,
        &[1, 2, 3, 4],
        &[1, 2, 3, 4],
        Duration::from_secs(15),
    )
    .await;
    Joined {
        four,
        _nodes: nodes,
        raft,
        pg,
        keys,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_takes_moved_keys_from_their_old_owners() {
    let c = common::client();
    // Peeks alone: the others do not send node 4 what they hold for it.
    let joined = node_four_joins(&c, &["--handoff-send", "false"], &[]).await;
    let (pg, four, keys) = (&joined.pg, &joined.four, &joined.keys[..]);
    let before = products_queries(pg);
    for k in keys {
        let (s, body) = get(&c, &format!("{}/api/products/{k}", four.api)).await;
        assert_eq!(s, 200);
        assert_eq!(
            body,
            geecache::source::demo::product_value(k.parse().unwrap()).into_bytes()
        );
    }
    assert_eq!(
        products_queries(pg),
        before,
        "no query: node 4 took them from node 1"
    );
    let accepted = common::metric(
        &c,
        &four.api,
        "geecache_handoff_peeks_total{group=\"products\",outcome=\"accepted\"}",
    )
    .await;
    assert_eq!(accepted, 20.0);
    assert!(
        common::metric(
            &c,
            &four.api,
            "geecache_handoff_bytes_total{group=\"products\"}"
        )
        .await
            > 0.0
    );
    // Now node 4's own: a HIT there.
    let r = c
        .get(format!("{}/api/products/{}", four.api, keys[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
}

/// With the send on (the default), the others send a node that joins what they hold for it,
/// and drop it: node 4 serves the moved keys from its own store (a HIT, no peek, no query),
/// and node 1 no longer holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_is_sent_what_the_others_hold_for_it() {
    let c = common::client();
    let joined = node_four_joins(&c, &[], &[]).await;
    let (pg, four, raft, keys) = (&joined.pg, &joined.four, &joined.raft, &joined.keys[..]);
    until_four_kept(&c, four, keys.len()).await;
    assert!(
        common::metric(&c, &raft.api(1), "geecache_handoff_pushed_total").await
            >= keys.len() as f64
    );
    let before = products_queries(pg);
    for (k, hit) in keys.iter().zip(hits_at(&c, four, keys).await) {
        assert!(hit, "{k} is in node 4's own store");
    }
    assert_eq!(products_queries(pg), before, "no query");
    let peeks = metrics_text(&c, &four.api).await;
    assert!(
        !peeks.contains("geecache_handoff_peeks_total{"),
        "no peek asked: {peeks}"
    );
    // Node 1 dropped what it sent: a peek there finds nothing.
    let r = c
        .get(format!("{}/_geecache/products/{}", raft.peer(1), keys[0]))
        .bearer_auth(TEST_SECRET)
        .header("x-geecache-peek", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "node 1 no longer holds it");
}

/// 50 requests at once for a moved key cost its old owner one peek and PostgreSQL nothing; a
/// peek at a member that does not hold the key is answered there, never forwarded to the
/// key's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_a_moved_key_costs_one_peek_and_peeks_are_not_forwarded() {
    let c = common::client();
    let joined = node_four_joins(&c, &["--handoff-send", "false"], &[]).await;
    let (pg, four, raft) = (&joined.pg, &joined.four, &joined.raft);
    let answered = "geecache_handoff_peeks_served_total{outcome=\"answered\"}";
    let (before_queries, before_peeks) = (
        products_queries(pg),
        common::metric(&c, &raft.api(1), answered).await,
    );
    let url = format!("{}/api/products/{}", four.api, joined.keys[0]);
    let herd = futures_util::future::join_all((0..50).map(|_| get(&c, &url))).await;
    assert!(herd.iter().all(|(s, _)| *s == 200));
    assert_eq!(
        common::metric(&c, &raft.api(1), answered).await - before_peeks,
        1.0,
        "one peek"
    );
    assert_eq!(products_queries(pg), before_queries, "no query");

    // Node 2 is asked for a key node 1 holds (and owned before node 4 joined): not held there.
    let served = "geecache_server_requests_total{group=\"products\"}";
    let before_served = common::metric(&c, &raft.api(1), served).await;
    let peeks_at_one = "geecache_handoff_peeks_served_total{outcome=\"not_held\"}";
    let before_at_one = common::metric(&c, &raft.api(1), peeks_at_one).await
        + common::metric(&c, &raft.api(1), answered).await;
    let r = c
        .get(format!(
            "{}/_geecache/products/{}",
            raft.peer(2),
            joined.keys[1]
        ))
        .bearer_auth(TEST_SECRET)
        .header("x-geecache-peek", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "node 2 does not hold it");
    assert_eq!(
        common::metric(&c, &raft.api(1), served).await,
        before_served,
        "not forwarded"
    );
    let after_at_one = common::metric(&c, &raft.api(1), peeks_at_one).await
        + common::metric(&c, &raft.api(1), answered).await;
    assert_eq!(
        after_at_one, before_at_one,
        "not forwarded as a peek either"
    );
    assert_eq!(products_queries(pg), before_queries, "not loaded");
}

/// `--handoff-grace 0s`: the new owner never peeks; every moved key is a load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grace_window_a_new_owner_loads_moved_keys() {
    let c = common::client();
    let joined = node_four_joins(&c, &[], &["--handoff-grace", "0s"]).await;
    let (pg, four) = (&joined.pg, &joined.four);
    let before = products_queries(pg);
    for k in &joined.keys {
        assert_eq!(
            get(&c, &format!("{}/api/products/{k}", four.api)).await.0,
            200
        );
    }
    assert_eq!(products_queries(pg) - before, 20, "one query per moved key");
    // What the others sent node 4 as it joined (they have a grace window) was not kept.
    let refused = "geecache_handoff_received_total{outcome=\"refused\"}";
    until_metric(
        &c,
        &four.api,
        refused,
        20.0,
        "node 4 was not sent the moved keys",
    )
    .await;
    let kept = "geecache_handoff_received_total{outcome=\"kept\"}";
    assert_eq!(common::metric(&c, &four.api, kept).await, 0.0);
    let peeks = metrics_text(&c, &four.api).await;
    assert!(
        !peeks.contains("geecache_handoff_peeks_total{"),
        "no peek asked: {peeks}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_before_the_ring_change_is_not_handed_off() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(2000);
    let url = pg.url();
    // Node 1 reads PostgreSQL (and its feed) through a proxy that can cut it off: it will
    // still hold the old value when node 4 asks.
    let proxy = Proxy::to(pg.port);
    let proxied = pg.url_via(proxy.port);
    let raft = Raft::new(3, "30s");
    let slow = [
        "--source",
        "postgres",
        "--database-url",
        &proxied,
        "--max-staleness",
        "60s",
    ];
    let args = ["--source", "postgres", "--database-url", &url];
    let mut nodes = vec![raft.start_with(1, &slow)];
    nodes.extend((2..=3).map(|id| raft.start_with(id, &args)));
    for n in &nodes {
        n.wait_ready();
    }
    converged(&c, &raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    let keys = moved(&raft, &[1, 2, 3], &[1, 2, 3, 4], 1, 4, 2000);
    let key = &keys[0];
    common::warm(&c, &format!("{}/api/products/{key}", raft.api(1))).await;
    proxy.cut(true);
    pg.psql(
        "geecache",
        &format!("UPDATE products SET value = 'changed' WHERE id = {key}"),
    );
    let four = raft.start_with(4, &args);
    four.wait_ready();
    converged(
        &c,
        &raft,
        &[1, 2, 3, 4],
        &[1, 2, 3, 4],
        Duration::from_secs(15),
    )
    .await;
    // Node 4 follows the feed and has seen the change; node 1 has not, and still holds the
    // old value: node 4 refuses it and loads the new row.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, body) = get(&c, &format!("{}/api/products/{key}", four.api)).await;
        assert_eq!(s, 200);
        if body == b"changed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 served {:?}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = common::metric(
        &c,
        &four.api,
        "geecache_handoff_peeks_total{group=\"products\",outcome=\"refused_stale\"}",
    )
    .await;
    assert!(refused >= 1.0, "the old value was refused");
    // Node 1 also sends node 4 what it holds for it: the old value, refused there too (node
    // 1's feed position is from before the change), and node 4 still serves the new row.
    let sent_refused = "geecache_handoff_received_total{outcome=\"refused\"}";
    until_metric(
        &c,
        &four.api,
        sent_refused,
        1.0,
        "node 1 sent nothing node 4 refused",
    )
    .await;
    let (s, body) = get(&c, &format!("{}/api/products/{key}", four.api)).await;
    assert_eq!((s, &body[..]), (200, &b"changed"[..]));
    proxy.cut(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_its_keys_to_its_successors() {
    let c = common::client();
    // Pull alone: the leaving node sends nothing, its successors peek at it.
    let (pg, raft, mut nodes) = seeded_three(&c, &["--handoff-send", "false"]).await;
    // Node 3's hot keys, requested through the others.
    let r3 = ring(&raft, &[1, 2, 3]);
    let keys: Vec<String> = (1..=2000)
        .map(|i: u64| i.to_string())
        .filter(|k| *r3.owner(k).unwrap().name == *raft.peer(3))
        .take(30)
        .collect();
    for k in &keys {
        common::warm(&c, &format!("{}/api/products/{k}", raft.api(3))).await;
    }
    let before = products_queries(&pg);
    // Under load on the survivors while node 3 leaves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (c, stop, keys) = (c.clone(), stop.clone(), keys.clone());
        let apis = [raft.api(1), raft.api(2)];
        async move {
            let mut failed = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let url = format!("{}/api/products/{}", apis[i % 2], keys[i % keys.len()]);
                if get(&c, &url).await.0 != 200 {
                    failed += 1;
                }
            }
            failed
        }
    });
    nodes[2].signal("TERM");
    converged(&c, &raft, &[1, 2], &[1, 2], Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(load.await.unwrap(), 0, "no request failed");
    let status = nodes[2].child.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        products_queries(&pg),
        before,
        "the successors served them without a query"
    );
    let log = nodes[2].log_text();
    assert!(log.contains("handoff drain over"), "{log}");
    assert!(
        !log.contains("handoff: entries sent"),
        "--handoff-send false: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peek_never_loads_and_never_forwards() {
    let c = common::client();
    let pg = Pg::start();
    pg.seed(100);
    let node = NodeProc::spawn(&["--source", "postgres", "--database-url", &pg.url()]);
    let peer = format!("http://127.0.0.1:{}", node.peer_port);
    let peek = |key: &str| {
        c.get(format!("{peer}/_geecache/products/{key}"))
            .bearer_auth(TEST_SECRET)
            .header("x-geecache-peek", "1")
            .send()
    };
    let before = products_queries(&pg);
    let r = peek("5").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("not_held"));
    assert_eq!(
        products_queries(&pg),
        before,
        "a peek of a key not held loads nothing"
    );
    common::warm(&c, &format!("{}/api/products/5", node.api)).await;
    let r = peek("5").await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    let answer = <geecache::peer::wire::Response as prost::Message>::decode(body).unwrap();
    assert_eq!(answer.value, geecache::source::demo::product_value(5));
}

/// After a node has left and exited, its successors' peeks at it fail; each successor tries
/// once, then skips it for a while instead of paying a connection attempt per moved key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_owner_that_is_gone_is_tried_once_then_skipped() {
    let c = common::client();
    let (_pg, raft, mut nodes) = seeded_three(&c, &[]).await;
    // A ring current for under a second is one of a burst of changes, and skipped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[2].signal("TERM");
    assert!(nodes[2].child.wait().unwrap().success());
    converged(&c, &raft, &[1, 2], &[1, 2], Duration::from_secs(15)).await;
    // Keys node 3 owned, never asked for anywhere: each new owner's miss would peek node 3.
    let r3 = ring(&raft, &[1, 2, 3]);
    let keys: Vec<String> = (1..=2000)
        .map(|i: u64| i.to_string())
        .filter(|k| *r3.owner(k).unwrap().name == *raft.peer(3))
        .take(20)
        .collect();
    for k in &keys {
        assert_eq!(
            get(&c, &format!("{}/api/products/{k}", raft.api(1)))
                .await
                .0,
            200
        );
    }
    let mut outcomes = [0.0; 2];
    for id in [1, 2] {
        for (i, outcome) in ["failed", "skipped"].iter().enumerate() {
            let series =
                format!("geecache_handoff_peeks_total{{group=\"products\",outcome=\"{outcome}\"}}");
            outcomes[i] += common::metric(&c, &raft.api(id), &series).await;
        }
    }
    let [failed, skipped] = outcomes;
    assert!(
        (1.0..=2.0).contains(&failed),
        "one failed peek per new owner: {failed}"
    );
    assert_eq!(failed + skipped, 20.0, "the rest skipped");
}

/// The rolling restart: node 3 leaves (SIGTERM) and sends its entries to their new owners,
/// which serve them while it is away without a query, drop one whose row changes, and hand
/// the rest back, through its peeks, when node 3 comes back with an empty cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_sends_its_entries_and_gets_them_back_when_it_returns() {
    let c = common::client();
    let (pg, raft, mut nodes) = seeded_three(&c, &[]).await;
    let (r3, r2) = (ring(&raft, &[1, 2, 3]), ring(&raft, &[1, 2]));
    let keys: Vec<String> = (1..=2000)
        .map(|i: u64| i.to_string())
        .filter(|k| *r3.owner(k).unwrap().name == *raft.peer(3))
        .take(30)
        .collect();
    for k in &keys {
        common::warm(&c, &format!("{}/api/products/{k}", raft.api(3))).await;
    }
    let heir = |k: &str| {
        let owner = r2.owner(k).unwrap().name.clone();
        (1..=2).find(|&id| *raft.peer(id) == *owner).unwrap()
    };
    // Nobody asks for node 3's keys while it leaves: what it holds can reach its successors
    // only by being sent. A writer commits all along (another row), so that the successors'
    // feed positions pass the one node 3 sends its entries with: they are kept all the same,
    // as none of the changes between is theirs.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let other = (1..=2000)
        .map(|i: u64| i.to_string())
        .find(|k| !keys.contains(k))
        .unwrap();
    let writer = tokio::spawn({
        let (writing, url) = (writing.clone(), pg.url());
        async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let sql = format!("UPDATE products SET value = value WHERE id = {other}");
            let mut commits = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                db.batch_execute(&sql).await.unwrap();
                commits += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            commits
        }
    });
    nodes[2].signal("TERM");
    converged(&c, &raft, &[1, 2], &[1, 2], Duration::from_secs(15)).await;
    assert!(nodes[2].child.wait().unwrap().success());
    // It sent everything, so it answered peeks only for a moment (not the 1 s without a peek
    // that ends a drain when something was left out).
    let log = nodes[2].log_text();
    let line = |msg: &str| {
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_default())
            .find(|j| j["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} in:\n{log}"))
    };
    assert_eq!(
        line("handoff: entries sent to their new owners")["complete"],
        true
    );
    let took = line("handoff drain over")["took"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        took.ends_with("ms") || took.ends_with("µs"),
        "the drain took {took}"
    );
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        writer.await.unwrap() > 10,
        "the writer committed while node 3 left"
    );
    let log = nodes[2].log_text();
    assert!(log.contains("handoff: entries sent"), "{log}");
    let kept: f64 = {
        let mut n = 0.0;
        for node in &nodes[..2] {
            let series = "geecache_handoff_received_total{outcome=\"kept\"}";
            n += node.metric(&c, series).await;
        }
        n
    };
    assert_eq!(kept, 30.0, "both successors kept what node 3 sent");

    let before = products_queries(&pg);
    let (asked, unasked) = keys.split_at(10);
    let (changed, asked) = asked.split_first().unwrap();
    for k in asked {
        let (s, body) = get(&c, &format!("{}/api/products/{k}", raft.api(heir(k)))).await;
        assert_eq!(s, 200);
        assert_eq!(body, product_value(k.parse().unwrap()).into_bytes());
    }
    assert_eq!(
        products_queries(&pg),
        before,
        "node 3's entries, without a query"
    );

    // A row that changes after node 3 sent it: once the feed has brought the change, the
    // sent copy is gone and the new owner loads the new row.
    let owner = &nodes[heir(changed) as usize - 1];
    let invalidations = "geecache_invalidations_total{group=\"products\"}";
    let seen = owner.metric(&c, invalidations).await;
    pg.psql(
        "geecache",
        &format!("UPDATE products SET value = 'changed' WHERE id = {changed}"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while owner.metric(&c, invalidations).await == seen {
        assert!(
            Instant::now() < deadline,
            "the feed did not bring the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("{}/api/products/{changed}", owner.api);
    assert_eq!(
        get(&c, &url).await.1,
        b"changed",
        "not the copy node 3 sent"
    );

    // Node 3 comes back with an empty cache: its misses peek the successors, which answer
    // from what it sent them, the keys nobody asked for while it was away included.
    tokio::time::sleep(Duration::from_millis(1100)).await; // the 2-node ring is not a burst
    let url = pg.url();
    let back = raft.start_with(3, &["--source", "postgres", "--database-url", &url]);
    back.wait_ready();
    converged(&c, &raft, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(15)).await;
    let before = products_queries(&pg);
    for k in asked.iter().chain(unasked) {
        let (s, body) = get(&c, &format!("{}/api/products/{k}", back.api)).await;
        assert_eq!(s, 200);
        assert_eq!(body, product_value(k.parse().unwrap()).into_bytes());
    }
    let peeks = metrics_text(&c, &back.api).await;
    let peeks: Vec<&str> = peeks
        .lines()
        .filter(|l| l.starts_with("geecache_handoff_peeks_total"))
        .collect();
    assert_eq!(
        products_queries(&pg),
        before,
        "node 3 got its keys back: {peeks:?}"
    );
    let (s, body) = get(&c, &format!("{}/api/products/{changed}", back.api)).await;
    assert_eq!((s, body.as_slice()), (200, &b"changed"[..]));
}

/// A node that joins keeps what it was sent in its handoff store too, for the grace: its main
/// store's TinyLFU sketch is new and knows none of those keys, so keys asked for once evict
/// them there before their first read; the next miss takes them from the handoff store,
/// without a query. Node 4's main store holds about 50 entries; 300 loads of other keys it
/// owns push the 20 it was sent out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_sent_to_a_joining_node_outlive_its_main_stores_evictions() {
    let c = common::client();
    let joined = node_four_joins(&c, &[], &["--cache-bytes", "12000"]).await;
    let (pg, four, raft, keys) = (&joined.pg, &joined.four, &joined.raft, &joined.keys[..]);
    until_four_kept(&c, four, keys.len()).await;
    let r4 = ring(raft, &[1, 2, 3, 4]);
    let others: Vec<String> = (1..=20_000u64)
        .map(|i| i.to_string())
        .filter(|k| *r4.owner(k).unwrap().name == *raft.peer(4) && !keys.contains(k))
        .take(300)
        .collect();
    for k in &others {
        let (s, _) = get(&c, &format!("{}/api/products/{k}", four.api)).await;
        assert_eq!(s, 200);
    }
    let evicted = "geecache_cache_evictions_total{group=\"products\",cache=\"main\"}";
    assert!(
        four.metric(&c, evicted).await >= 200.0,
        "node 4's main store evicted"
    );
    let before = products_queries(pg);
    let not_in_main = hits_at(&c, four, keys)
        .await
        .iter()
        .filter(|h| !**h)
        .count();
    assert!(
        not_in_main >= keys.len() / 2,
        "only {not_in_main} of the keys sent were evicted from the main store"
    );
    assert_eq!(
        products_queries(pg),
        before,
        "evicted from the main store, taken from the handoff store"
    );
    assert!(
        four.metric(&c, "geecache_handoff_used_total{group=\"products\"}")
            .await
            >= not_in_main as f64
    );
}
