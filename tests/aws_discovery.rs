//! Discovery through the AWS APIs against the emulator (moto, with terraform/emulator's fixes):
//! Cloud Map `DiscoverInstances` and ECS `ListTasks`/`DescribeTasks`; prints lookup latency
//! (the seed's discovery-latency test). Needs python3 with moto[server] (scripts/install-deps.sh).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use geecache::raft::discovery::aws::candidates_with;
use geecache::raft::discovery::{AwsSeed, aws_seed};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn moto() -> (Moto, aws_config::SdkConfig) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/terraform/emulator/moto_server.py"
    );
    let child = Command::new("python3")
        .args([script, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with moto[server] (scripts/install-deps.sh)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    (Moto(child), config)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_discovery_against_the_emulator() {
    let (_moto, config) = moto().await;

    // Cloud Map: a namespace, its service "nodes", three registered instances.
    let sd = aws_sdk_servicediscovery::Client::new(&config);
    sd.create_http_namespace()
        .name("geecache.local")
        .send()
        .await
        .unwrap();
    let ns = sd.list_namespaces().send().await.unwrap();
    let ns_id = ns.namespaces()[0].id().unwrap().to_owned();
    let service = sd
        .create_service()
        .name("nodes")
        .namespace_id(&ns_id)
        .send()
        .await
        .unwrap();
    let service_id = service.service().unwrap().id().unwrap().to_owned();
    for i in 1..=3 {
        sd.register_instance()
            .service_id(&service_id)
            .instance_id(format!("task-{i}"))
            .attributes("AWS_INSTANCE_IPV4", format!("10.0.1.{i}"))
            .send()
            .await
            .unwrap();
    }
    let seed = aws_seed("cloudmap://geecache.local/nodes:8001").unwrap();
    let mut found = candidates_with(&seed, &config).await.unwrap();
    found.sort();
    assert_eq!(
        found,
        [
            "http://10.0.1.1:8001",
            "http://10.0.1.2:8001",
            "http://10.0.1.3:8001"
        ]
    );
    let mut lookups = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(candidates_with(&seed, &config).await.unwrap().len(), 3);
        lookups.push(t.elapsed());
    }
    eprintln!(
        "Cloud Map DiscoverInstances against the emulator: median {:?} over 20 lookups",
        median(lookups)
    );

    // ECS: moto's RunTask fails for Fargate tasks (a TypeError inside moto 5.2), so the ECS
    // backend is checked against canned ListTasks/DescribeTasks answers instead, below.
}

/// A stand-in for the ECS API that answers ListTasks and DescribeTasks with what AWS returns for
/// two running Fargate tasks (one addressed through its ENI attachment, one through its
/// container's network interface).
fn fake_ecs() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            loop {
                n += s.read(&mut buf[n..]).unwrap();
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if n >= end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = if text.contains("AmazonEC2ContainerServiceV20141113.ListTasks") {
                assert!(
                    text.contains("\"serviceName\":\"geecache-nodes\"") && text.contains("RUNNING"),
                    "{text}"
                );
                r#"{"taskArns":["arn:aws:ecs:us-east-1:123456789012:task/geecache/a","arn:aws:ecs:us-east-1:123456789012:task/geecache/b"]}"#
            } else {
                assert!(text.contains("DescribeTasks"), "{text}");
                r#"{"tasks":[
                  {"taskArn":"arn:aws:ecs:us-east-1:123456789012:task/geecache/a","lastStatus":"RUNNING",
                   "attachments":[{"type":"ElasticNetworkInterface","status":"ATTACHED","details":[
                     {"name":"subnetId","value":"subnet-1"},{"name":"privateIPv4Address","value":"10.0.11.5"}]}]},
                  {"taskArn":"arn:aws:ecs:us-east-1:123456789012:task/geecache/b","lastStatus":"RUNNING",
                   "containers":[{"name":"geecache","networkInterfaces":[{"privateIpv4Address":"10.0.12.6"}]}]}
                ],"failures":[]}"#
            };
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(res.as_bytes()).unwrap();
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_discovery_reads_the_tasks_private_ips() {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(fake_ecs())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    let seed = aws_seed("ecs://geecache/geecache-nodes:8001").unwrap();
    assert!(matches!(seed, AwsSeed::Ecs { .. }));
    let mut found = candidates_with(&seed, &config).await.unwrap();
    found.sort();
    assert_eq!(found, ["http://10.0.11.5:8001", "http://10.0.12.6:8001"]);
}
