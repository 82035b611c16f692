//! The read path across ring changes, with real node processes: a committed purge drops a
//! group on every node and frontend; a caller on an old ring catches up when the owner says
//! so; `--self http://ecs:PORT` names the node by its task's IP.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::raft::{Raft, converged};
use common::{NodeProc, Pg, TEST_SECRET, free_port, get};
use geecache::ring::{Member, Ring, RingHash};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_purge_drops_the_group_on_every_node_and_the_frontend() {
    let client = common::client();
    let pg = Pg::start();
    pg.seed(100);
    let url = pg.url();
    let raft = Raft::new(3, "30s");
    let pg_args = [
        "--source",
        "postgres",
        "--database-url",
        &url,
        "--hot-min-qps",
        "1",
    ];
    let nodes: Vec<NodeProc> = (1..=3).map(|id| raft.start_with(id, &pg_args)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    converged(
        &client,
        &raft,
        &[1, 2, 3],
        &[1, 2, 3],
        Duration::from_secs(15),
    )
    .await;
    let seeds = (1..=3)
        .map(|id| raft.peer(id))
        .collect::<Vec<_>>()
        .join(",");
    let mut front_args = vec!["--role", "frontend", "--seeds", &seeds];
    front_args.extend_from_slice(&pg_args);
    let front = NodeProc::spawn(&front_args);
    let apis: Vec<String> = (1..=3)
        .map(|id| raft.api(id))
        .chain([front.api.clone()])
        .collect();

    // Warm every key on every node (main shard on the owner, hot cache elsewhere) and on the
    // frontend, then change the rows under the cache.
    let keys: Vec<u64> = (1..=20).collect();
    for _ in 0..3 {
        for api in &apis {
            for id in &keys {
                let (s, body) = get(&client, &format!("{api}/api/products/{id}")).await;
                assert_eq!(
                    (s, body),
                    (200, geecache::source::demo::product_value(*id).into_bytes())
                );
            }
        }
    }
    assert_eq!(
        get(&client, &format!("{}/api?key=Tom", apis[0])).await.1,
        b"630"
    );
    // Changed behind the change feed's back (its triggers off, as for a bulk load): what a
    // purge is for.
    pg.psql(
        "geecache",
        "ALTER TABLE products DISABLE TRIGGER USER; ALTER TABLE scores DISABLE TRIGGER USER;
         UPDATE products SET value = 'new-' || id WHERE id <= 20; UPDATE scores SET value = '1' WHERE name = 'Tom';
         ALTER TABLE products ENABLE TRIGGER USER; ALTER TABLE scores ENABLE TRIGGER USER;",
    );
    for api in &apis {
        let (_, body) = get(&client, &format!("{api}/api/products/7")).await;
        assert_eq!(
            body,
            geecache::source::demo::product_value(7).into_bytes(),
            "{api} served from memory"
        );
    }
    let scores_before = pg.calls("SELECT value FROM scores%");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["cluster", "purge", "products", "--addr", &apis[1]])
        .args(["--peer-secret", TEST_SECRET])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged products"));

    // Every node and the frontend load the group again; another group keeps its values.
    for api in &apis {
        for id in &keys {
            let want = format!("new-{id}").into_bytes();
            common::until(
                &client,
                &format!("{api}/api/products/{id}"),
                &want,
                Duration::from_secs(3),
            )
            .await;
        }
        assert_eq!(
            get(&client, &format!("{api}/api?key=Tom")).await.1,
            b"630",
            "{api}"
        );
    }
    assert_eq!(pg.calls("SELECT value FROM scores%"), scores_before);

    // Bad purges say why.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["cluster", "purge", "nope", "--addr", &apis[0]])
        .args(["--peer-secret", TEST_SECRET])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown group"));
    let unauthenticated = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["cluster", "purge", "products", "--addr", &apis[0]])
        .env_remove("GEECACHE_PEER_SECRET")
        .output()
        .unwrap();
    assert!(!unauthenticated.status.success());
    assert!(String::from_utf8_lossy(&unauthenticated.stderr).contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_an_old_ring_catches_up_when_the_owner_says_so() {
    let client = common::client();
    let raft = Raft::new(3, "30s");
    let (nodes, leader) = raft.form(&client, 3).await;
    // The frontend follows only X; stopping X freezes the frontend's ring.
    let x = (1..=3).find(|&id| id != leader).unwrap();
    let front = NodeProc::spawn(&["--role", "frontend", "--seeds", &raft.peer(x)]);
    let epoch = common::cluster_view(&client, &raft.api(leader))
        .await
        .unwrap()["epoch"]
        .clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::cluster_view(&client, &front.api).await.unwrap()["epoch"] != epoch {
        assert!(
            Instant::now() < deadline,
            "the frontend did not follow the ring"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes[x as usize - 1].signal("STOP");
    struct Cont<'a>(&'a NodeProc);
    impl Drop for Cont<'_> {
        fn drop(&mut self) {
            self.0.signal("CONT");
        }
    }
    let _cont = Cont(&nodes[x as usize - 1]);

    let four = raft.start(4);
    four.wait_ready();
    let running: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&id| id != x).collect();
    converged(
        &client,
        &raft,
        &running,
        &[1, 2, 3, 4],
        Duration::from_secs(15),
    )
    .await;

    // A key that moved to node 4, whose old owner is up.
    let ring = |ids: &[u64]| {
        Ring::new(
            RingHash::Crc32,
            150,
            ids.iter().map(|&id| Member::new(&raft.peer(id))),
        )
    };
    let (old, new) = (ring(&[1, 2, 3]), ring(&[1, 2, 3, 4]));
    let key = (1..)
        .map(|i: u64| i.to_string())
        .find(|k| {
            *new.owner(k).unwrap().name == *raft.peer(4)
                && *old.owner(k).unwrap().name != *raft.peer(x)
        })
        .unwrap();
    let (status, body) = get(&client, &format!("{}/api/products/{key}", front.api)).await;
    assert_eq!(
        (status, body),
        (
            200,
            geecache::source::demo::product_value(key.parse().unwrap()).into_bytes()
        )
    );
    let metric = |name: &str| format!("{name}{{group=\"products\"}}");
    let retries = front
        .metric(&client, &metric("geecache_stale_epoch_retries_total"))
        .await;
    let errors = front
        .metric(&client, &metric("geecache_peer_errors_total"))
        .await;
    let local = front.metric(&client, &metric("geecache_loads_total")).await;
    assert_eq!(
        (retries, errors, local),
        (1.0, 0.0, 0.0),
        "served by the new owner"
    );
    let served = four
        .metric(&client, &metric("geecache_server_requests_total"))
        .await;
    assert_eq!(served, 1.0);
    let v = common::cluster_view(&client, &front.api).await.unwrap();
    assert_eq!(
        v["members"].as_array().unwrap().len(),
        4,
        "the frontend caught up: {v}"
    );
}

/// An ECS task metadata endpoint (v4) that says the task's IP is 127.0.0.1.
fn task_metadata() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/v4/task-1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = if asked.starts_with("GET /v4/task-1/task ") {
                r#"{"Containers":[{"Name":"geecache","Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["127.0.0.1"]}]}]}"#
            } else {
                "{}"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_ecs_names_the_node_by_its_task_ip() {
    let uri = task_metadata();
    let peer_port = free_port();
    let me = format!("http://ecs:{peer_port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["node", "--self", &me])
        .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--peer-addr", &format!("127.0.0.1:{peer_port}")])
        .args(["--peer-secret", TEST_SECRET])
        .env("ECS_CONTAINER_METADATA_URI_V4", &uri)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.contains("node started") && Instant::now() < deadline {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.contains(&format!("\"self_url\":\"http://127.0.0.1:{peer_port}\"")),
        "{out}"
    );

    // Without the metadata endpoint's variable it says what is missing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["node", "--self", &me, "--peer-secret", TEST_SECRET])
        .args(["--api-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"])
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ECS_CONTAINER_METADATA_URI_V4"));
}
