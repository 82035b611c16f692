//! Discovery finds candidate members' peer URLs; Raft, not discovery, decides membership.
//!
//! A seed is either a peer URL (`http://10.0.1.5:8001`, static) or `dns://NAME:PORT`, which
//! resolves NAME's A/AAAA records (Cloud Map's `nodes.geecache.local`, a compose service name)
//! to one candidate per address.

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

#[cfg(test)]
mod tests {
    use super::*;

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
