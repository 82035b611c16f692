//! The request engine: one hyper HTTP/1.1 connection per worker and target, closed or open
//! loop, every request kept as a `Sample` and turned into histograms after the run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::keys::Keys;

/// Transport failures share the status field with HTTP codes; real codes are 100..=599.
pub const CONNECT_ERROR: u16 = 1;
pub const TIMEOUT: u16 = 2;
pub const IO_ERROR: u16 = 3;

pub fn status_name(code: u16) -> String {
    match code {
        CONNECT_ERROR => "connect_error".into(),
        TIMEOUT => "timeout".into(),
        IO_ERROR => "io_error".into(),
        c => c.to_string(),
    }
}

/// One request. Times are relative to the start of the run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the request was due (open loop) or sent (closed loop), in ms.
    pub due_ms: u32,
    /// The latency a client at the fixed rate saw: from due to answered when the request went
    /// out late because all workers were busy (coordinated omission corrected), else from
    /// sent; equal to `service_us` in a closed loop.
    pub latency_us: u32,
    /// From sent to answered.
    pub service_us: u32,
    pub target: u16,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    addr: SocketAddr,
    authority: String,
}

impl Target {
    /// `http://HOST:PORT`, resolved once.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("target {url:?} must start with http://"))?
            .trim_end_matches('/')
            .to_owned();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&authority)
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority} has no address"))?;
        Ok(Target {
            base: url.trim_end_matches('/').to_owned(),
            addr,
            authority,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each worker sends its next request when the last one is answered.
    Closed,
    /// Requests are due at a fixed rate, whatever the answers do; workers bound the in-flight.
    Open { rate: f64 },
}

#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

pub struct Plan {
    pub targets: Vec<Target>,
    /// Path and query, `{key}` replaced by each key (percent-encoded).
    pub path: String,
    pub keys: Keys,
    pub seed: u64,
    pub pace: Pace,
    pub workers: usize,
    pub stop: Stop,
    pub timeout: Duration,
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
}

/// Runs the plan: every worker first opens its connection, then all start at once.
pub async fn run(plan: Arc<Plan>) -> anyhow::Result<(Instant, Duration, Vec<Sample>)> {
    let next = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(plan.workers + 1));
    let start = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let mut tasks = Vec::with_capacity(plan.workers);
    for w in 0..plan.workers {
        let (plan, next, barrier, start) =
            (plan.clone(), next.clone(), barrier.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut worker = Worker::new(w, &plan);
            let first = w % plan.targets.len();
            worker.conns[first] = connect(&plan.targets[first]).await.ok();
            barrier.wait().await; // everyone connected
            barrier.wait().await; // the start time is set
            let t0 = *start.get().expect("set between the two barriers");
            worker.work(&plan, &next, t0).await;
            worker.samples
        }));
    }
    barrier.wait().await;
    let t0 = Instant::now();
    let _ = start.set(t0);
    barrier.wait().await;
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.context("worker panicked")?);
    }
    Ok((t0, t0.elapsed(), samples))
}

struct Worker {
    id: usize,
    conns: Vec<Option<SendRequest<Empty<Bytes>>>>,
    samples: Vec<Sample>,
    sent: usize,
}

impl Worker {
    fn new(id: usize, plan: &Plan) -> Self {
        Worker {
            id,
            conns: (0..plan.targets.len()).map(|_| None).collect(),
            samples: Vec::new(),
            sent: 0,
        }
    }

    async fn work(&mut self, plan: &Plan, next: &AtomicU64, t0: Instant) {
        let deadline = match plan.stop {
            Stop::After(d) => Some(t0 + d),
            Stop::Requests(_) => None,
        };
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if let Stop::Requests(n) = plan.stop
                && i >= n
            {
                return;
            }
            let due = match plan.pace {
                Pace::Closed => Instant::now(),
                Pace::Open { rate } => t0 + Duration::from_secs_f64(i as f64 / rate),
            };
            if deadline.is_some_and(|d| due >= d) {
                return;
            }
            // Behind schedule (every worker was busy when this request fell due): the wait
            // counts, as a client at the fixed rate would see it. Ahead: sleep; the timer's
            // millisecond granularity then is the generator's lateness, not the server's.
            let behind = Instant::now() >= due;
            if !behind {
                tokio::time::sleep_until(due.into()).await;
            }
            let target = match plan.pace {
                // Round robin per worker, starting on the target it connected to.
                Pace::Closed => (self.id + self.sent) % plan.targets.len(),
                Pace::Open { .. } => i as usize % plan.targets.len(),
            };
            self.sent += 1;
            let path = plan
                .path
                .replace("{key}", &encode(&plan.keys.key(plan.seed, i)));
            let sent = Instant::now();
            let status = self.send(plan, target, &path).await;
            let done = Instant::now();
            self.samples.push(Sample {
                due_ms: due.saturating_duration_since(t0).as_millis() as u32,
                latency_us: micros(done - if behind { due } else { sent }),
                service_us: micros(done - sent),
                target: target as u16,
                status,
            });
        }
    }

    async fn send(&mut self, plan: &Plan, target: usize, path: &str) -> u16 {
        let t = &plan.targets[target];
        let attempt = async {
            let slot = &mut self.conns[target];
            if let Some(c) = slot
                && c.ready().await.is_err()
            {
                *slot = None;
            }
            let conn = match slot {
                Some(c) => c,
                None => match connect(t).await {
                    Ok(c) => slot.insert(c),
                    Err(_) => return CONNECT_ERROR,
                },
            };
            let mut req = hyper::Request::get(path)
                .header(hyper::header::HOST, &t.authority)
                .body(Empty::new())
                .expect("a valid request");
            req.headers_mut().extend(plan.headers.iter().cloned());
            match conn.send_request(req).await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    match res.into_body().collect().await {
                        Ok(_) => status,
                        Err(_) => IO_ERROR,
                    }
                }
                Err(_) => IO_ERROR,
            }
        };
        match tokio::time::timeout(plan.timeout, attempt).await {
            Ok(status) => {
                if status == IO_ERROR || status == CONNECT_ERROR {
                    self.conns[target] = None;
                }
                status
            }
            Err(_) => {
                // The connection may still carry the late answer: never reuse it.
                self.conns[target] = None;
                TIMEOUT
            }
        }
    }
}

async fn connect(t: &Target) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(t.addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Percent-encodes everything but unreserved characters.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode("Tom"), "Tom");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[test]
    fn targets_need_http() {
        assert!(Target::parse("127.0.0.1:80").is_err());
        let t = Target::parse("http://127.0.0.1:9999/").unwrap();
        assert_eq!(t.base, "http://127.0.0.1:9999");
        assert_eq!(t.authority, "127.0.0.1:9999");
    }
}
