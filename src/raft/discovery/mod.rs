//! Discovery finds candidate members' peer URLs; Raft, not discovery, decides membership.
//!
//! A seed is one of:
//! - a peer URL (`http://10.0.1.5:8001`), static;
//! - `dns://NAME:PORT`: NAME's A/AAAA records (Cloud Map's `nodes.geecache.local`, a compose
//!   service), one candidate per address;
//! - `cloudmap://NAMESPACE/SERVICE:PORT`: Cloud Map `DiscoverInstances` (their
//!   `AWS_INSTANCE_IPV4`);
//! - `ecs://CLUSTER/SERVICE:PORT`: the RUNNING tasks of an ECS service (`ListTasks`,
//!   `DescribeTasks`), by their private IPs.
//!
//! The AWS backends ([`aws`], cargo feature `aws`) use the SDK's default configuration (region,
//! credentials, and `AWS_ENDPOINT_URL` for an emulator). A build without the feature refuses
//! AWS seeds at startup, saying which feature it lacks.

#[cfg(feature = "aws")]
pub mod aws;

use std::future::Future;
use std::pin::Pin;

pub type Candidates = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

pub trait Discovery: Send + Sync + 'static {
    fn candidates(&self) -> Candidates;
}

/// Static seeds and DNS names, resolved anew on every call.
pub struct Seeds(pub Vec<String>);

impl Discovery for Seeds {
    fn candidates(&self) -> Candidates {
        let seeds = self.0.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            for seed in seeds {
                if let Some(aws) = aws_seed(&seed) {
                    match aws.candidates().await {
                        Ok(found) => out.extend(found),
                        Err(e) => {
                            tracing::debug!(%seed, error = %e, "AWS discovery found nothing yet")
                        }
                    }
                    continue;
                }
                match seed.strip_prefix("dns://") {
                    Some(target) => {
                        let port = target
                            .rsplit_once(':')
                            .map_or("8001", |(_, p)| p)
                            .to_owned();
                        match tokio::net::lookup_host(target).await {
                            Ok(addrs) => out.extend(addrs.map(|a| match a {
                                std::net::SocketAddr::V4(v4) => {
                                    format!("http://{}:{port}", v4.ip())
                                }
                                std::net::SocketAddr::V6(v6) => {
                                    format!("http://[{}]:{port}", v6.ip())
                                }
                            })),
                            Err(e) => {
                                tracing::debug!(%target, error = %e, "DNS discovery found nothing yet")
                            }
                        }
                    }
                    None => out.push(seed.trim_end_matches('/').to_owned()),
                }
            }
            out.sort();
            out.dedup();
            out
        })
    }
}

/// An AWS discovery seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsSeed {
    CloudMap {
        namespace: String,
        service: String,
        port: u16,
    },
    Ecs {
        cluster: String,
        service: String,
        port: u16,
    },
}

/// Why an AWS seed cannot be used by this build.
pub const NO_AWS: &str = "AWS discovery (cloudmap://, ecs://) is not in this build: build it with \
     `cargo build --release --features aws` (the Docker image and CI have it), or use \
     --seeds dns://NAME:PORT (Cloud Map's DNS names work without it)";

impl AwsSeed {
    /// Peer URLs of the instances or tasks behind this seed.
    pub async fn candidates(&self) -> Result<Vec<String>, String> {
        #[cfg(feature = "aws")]
        {
            aws::candidates(self).await
        }
        #[cfg(not(feature = "aws"))]
        {
            Err(NO_AWS.to_owned())
        }
    }
}

/// Parses `cloudmap://NAMESPACE/SERVICE:PORT` and `ecs://CLUSTER/SERVICE:PORT`.
pub fn aws_seed(seed: &str) -> Option<AwsSeed> {
    let (scheme, rest) = seed.split_once("://")?;
    let (path, port) = rest.rsplit_once(':')?;
    let (first, second) = path.split_once('/')?;
    let (first, second, port) = (first.to_owned(), second.to_owned(), port.parse().ok()?);
    match scheme {
        "cloudmap" => Some(AwsSeed::CloudMap {
            namespace: first,
            service: second,
            port,
        }),
        "ecs" => Some(AwsSeed::Ecs {
            cluster: first,
            service: second,
            port,
        }),
        _ => None,
    }
}

/// This task's private IP from the ECS task metadata endpoint (v4), for `--self http://ecs:PORT`.
pub async fn ecs_task_ip(metadata_uri: &str) -> Result<String, String> {
    let task: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/task", metadata_uri.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    task["Containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["Networks"].as_array().into_iter().flatten())
        .flat_map(|n| n["IPv4Addresses"].as_array().into_iter().flatten())
        .find_map(|ip| ip.as_str().map(str::to_owned))
        .ok_or_else(|| "no IPv4 address in the task metadata".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_seeds_parse() {
        assert_eq!(
            aws_seed("cloudmap://geecache.local/nodes:8001"),
            Some(AwsSeed::CloudMap {
                namespace: "geecache.local".into(),
                service: "nodes".into(),
                port: 8001
            })
        );
        assert_eq!(
            aws_seed("ecs://geecache/geecache-nodes:8001"),
            Some(AwsSeed::Ecs {
                cluster: "geecache".into(),
                service: "geecache-nodes".into(),
                port: 8001
            })
        );
        assert_eq!(aws_seed("http://10.0.0.1:8001"), None);
        assert_eq!(aws_seed("cloudmap://nodes:8001"), None);
    }

    #[tokio::test]
    async fn the_task_ip_comes_from_the_metadata_endpoint() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/v4/abc", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /v4/abc/task "));
            let body = r#"{"Containers":[{"Name":"geecache","Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.11.23"]}]}]}"#;
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(res.as_bytes()).await.unwrap();
        });
        assert_eq!(ecs_task_ip(&uri).await.unwrap(), "10.0.11.23");
    }

    #[tokio::test]
    async fn static_and_dns_seeds() {
        let d = Seeds(vec![
            "http://10.0.0.1:8001/".into(),
            "dns://localhost:8005".into(),
            "http://10.0.0.1:8001".into(),
        ]);
        let c = d.candidates().await;
        assert!(c.contains(&"http://10.0.0.1:8001".to_string()));
        assert!(
            c.iter()
                .any(|u| u == "http://127.0.0.1:8005" || u == "http://[::1]:8005"),
            "{c:?}"
        );
        assert_eq!(c.iter().filter(|u| u.contains("10.0.0.1")).count(), 1);
    }
}
