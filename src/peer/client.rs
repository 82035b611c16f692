//! The one client of the peer port: data fetches, the Raft transport, and the membership calls
//! (info, members, join, remove, command). Authorization, timeouts, paths and the bound on
//! answer sizes are set here once.
//!
//! Each loader arbiter, the Raft actor and the boot loop build their own `PeerClient` from the
//! same [`PeerSettings`]: a client's connections live on the runtime that opened them, so a
//! client per arbiter keeps a request and its connection on one thread.
//!
//! The data path (fetch, peek, invalidate) is hyper's pooled HTTP/1 client, keep-alive, with
//! the request's URI parsed by `http`; the membership and Raft calls go through reqwest. The
//! data path used to be reqwest too, whose URL parsing (twice per request, with its redirect
//! policy) and middleware were 40 % of a remote hit's instructions (load/instr.py).

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use serde_json::Value;

use super::wire::{
    CLUSTER_HEADER, EPOCH_HEADER, FRONTEND_HEADER, HANDOFF, HandoffBatch, PEEK_HEADER, RAFT_INFO,
    RAFT_MEMBERS, RAFT_MESSAGES, RaftBatch, RaftStatus, Response, RingMembers, data_path,
};
use crate::cache::group::Group;

/// How long a membership change may take (the server gives up after 10 s).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(12);
/// Raft messages and status polls: a peer that does not answer this fast counts as unreachable.
const RAFT_TIMEOUT: Duration = Duration::from_secs(2);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a new owner waits for a moved key's previous owner to say what it holds.
pub const PEEK_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest a leaving node's handoff batch may take; the receiver counts it against the
/// entries' age.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(2);

/// What every peer client of a node shares.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// Deadline of a data fetch.
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer`; `None` only with `--insecure-open-peer-port`.
    pub secret: Option<String>,
    /// Largest value a peer may answer with.
    pub max_value_bytes: usize,
    /// How long an idle connection to a peer is kept: shorter than the peers' `--keep-alive`,
    /// so that a request never goes out on a connection the peer is closing.
    pub idle_timeout: Duration,
}

/// A data fetch's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAnswer {
    pub value: Bytes,
    pub minute_qps: f64,
    pub epoch: u64,
    pub generation: u64,
    pub age_ms: u64,
    pub fresh_ms: Option<u64>,
    pub stale: bool,
    pub content_type: String,
    pub feed_xmin: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The owner's source has no such key: that is the answer, not a failure.
    #[error("not found at the owner")]
    NotFound,
    /// The peer does not own the key under its newer ring (epoch given): catch up and retry.
    #[error("the peer owns it no longer: its ring is at epoch {0}")]
    StaleEpoch(u64),
    #[error("peer answered {0}: {1}")]
    Status(u16, String),
    #[error("peer unreachable: {0}")]
    Transport(String),
    #[error("bad peer response: {0}")]
    Decode(String),
    #[error("peer answer is larger than {0} bytes (--max-value-bytes)")]
    TooLarge(usize),
}

/// A membership change asked of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    Applied(Value),
    /// The cluster is another one than the caller's (409 `cluster_mismatch`, its message).
    Foreign(String),
    /// Refused or failed: the status (0: unreachable) and the answer.
    Failed(u16, Value),
}

/// A keep-alive pool per peer, the peer secret and the node's deadlines.
pub struct PeerClient {
    http: reqwest::Client,
    data: HyperClient<HttpConnector, Empty<Bytes>>,
    auth: Option<HeaderValue>,
    timeout: Duration,
    /// Largest answer body read from a peer: the largest value plus the protobuf's framing.
    max_body: usize,
}

impl PeerClient {
    pub fn new(settings: &PeerSettings) -> Result<PeerClient, reqwest::Error> {
        let auth = settings.secret.as_ref().map(|s| {
            let mut v = HeaderValue::from_str(&format!("Bearer {s}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            v.set_sensitive(true);
            v
        });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.timeout.min(Duration::from_millis(500))));
        let data = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(settings.idle_timeout)
            .build(connector);
        Ok(PeerClient {
            data,
            http: reqwest::Client::builder()
                .connect_timeout(settings.timeout.min(Duration::from_millis(500)))
                .pool_max_idle_per_host(64)
                .pool_idle_timeout(settings.idle_timeout)
                .tcp_nodelay(true)
                .build()?,
            auth,
            timeout: settings.timeout,
            max_body: settings.max_value_bytes.saturating_add(1024),
        })
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.auth {
            Some(auth) => req.header(AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    /// One request of the data path: the status, the answer's epoch header and its body
    /// (at most `max_body` bytes), all within the fetch deadline.
    async fn data(
        &self,
        method: http::Method,
        peer: &str,
        group: Group,
        key: &str,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<(u16, Option<u64>, Bytes), PeerError> {
        let uri: http::Uri = format!("{peer}{}", data_path(group, key))
            .parse()
            .map_err(|e| PeerError::Transport(format!("bad peer URL {peer:?}: {e}")))?;
        let mut req = http::Request::new(Empty::new());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        if let Some(auth) = &self.auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        let exchange = async {
            let res = self
                .data
                .request(req)
                .await
                .map_err(|e| PeerError::Transport(transport_error(&e)))?;
            let status = res.status().as_u16();
            let epoch = res
                .headers()
                .get(EPOCH_HEADER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let declared = res
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_body as u64) {
                return Err(PeerError::TooLarge(self.max_body));
            }
            let body = Limited::new(res.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => PeerError::TooLarge(self.max_body),
                    Err(e) => PeerError::Transport(e.to_string()),
                })?
                .to_bytes();
            Ok((status, epoch, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                PeerError::Transport(format!("no answer within {} ms", self.timeout.as_millis()))
            })?
    }

    /// `GET {peer}/_geecache/{group}/{key}` with this node's ring epoch.
    pub async fn fetch(
        &self,
        peer: &str,
        group: Group,
        key: &str,
        epoch: u64,
    ) -> Result<PeerAnswer, PeerError> {
        let epoch_header = (
            HeaderName::from_static(EPOCH_HEADER),
            HeaderValue::from(epoch),
        );
        let (status, their_epoch, body) = self
            .data(http::Method::GET, peer, group, key, Some(epoch_header))
            .await?;
        match status {
            200 => answer(body),
            421 if their_epoch.is_some() => Err(PeerError::StaleEpoch(their_epoch.unwrap_or(0))),
            404 if !String::from_utf8_lossy(&body).contains("unknown_group") => {
                Err(PeerError::NotFound)
            }
            _ => Err(PeerError::Status(
                status,
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            )),
        }
    }

    /// A peek (`x-geecache-peek`): what `peer` holds of the key, without making it load;
    /// `None` when it holds nothing. Bounded by [`PEEK_TIMEOUT`], not the peer timeout: a peek
    /// only saves a query, and one that waits on an overloaded or leaving owner would cost
    /// the miss more than the query does.
    pub async fn peek(
        &self,
        peer: &str,
        group: Group,
        key: &str,
    ) -> Result<Option<PeerAnswer>, PeerError> {
        let peek = (
            HeaderName::from_static(PEEK_HEADER),
            HeaderValue::from_static("1"),
        );
        let asked = self.data(http::Method::GET, peer, group, key, Some(peek));
        let (status, _, body) =
            tokio::time::timeout(PEEK_TIMEOUT, asked)
                .await
                .map_err(|_| {
                    PeerError::Transport(format!("no answer to a peek within {PEEK_TIMEOUT:?}"))
                })??;
        match status {
            200 => answer(body).map(Some),
            404 => Ok(None),
            _ => Err(PeerError::Status(status, String::new())),
        }
    }

    /// `DELETE {peer}/_geecache/{group}/{key}`: the peer drops the key from its stores.
    pub async fn invalidate(&self, peer: &str, group: Group, key: &str) -> Result<(), PeerError> {
        match self
            .data(http::Method::DELETE, peer, group, key, None)
            .await?
        {
            (204, _, _) => Ok(()),
            (s, _, _) => Err(PeerError::Status(s, String::new())),
        }
    }

    /// `POST url` with a protobuf body, within `timeout`.
    async fn post_protobuf(
        &self,
        url: String,
        body: &impl Message,
        timeout: Duration,
    ) -> Result<reqwest::Response, PeerError> {
        self.request(reqwest::Method::POST, url)
            .header("content-type", "application/x-protobuf")
            .body(body.encode_to_vec())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| PeerError::Transport(e.to_string()))
    }

    /// `POST {peer}/_handoff`: the number of entries the peer kept.
    pub async fn hand_off(&self, peer: &str, batch: &HandoffBatch) -> Result<u64, PeerError> {
        let res = self
            .post_protobuf(format!("{peer}{HANDOFF}"), batch, HANDOFF_TIMEOUT)
            .await?;
        match res.status().as_u16() {
            200 => {
                let v: Value = res
                    .json()
                    .await
                    .map_err(|e| PeerError::Decode(e.to_string()))?;
                Ok(v["kept"].as_u64().unwrap_or(0))
            }
            s => Err(PeerError::Status(s, res.text().await.unwrap_or_default())),
        }
    }

    /// `POST {peer}/_raft/messages`.
    pub async fn send_raft(&self, peer: &str, batch: &RaftBatch) -> Result<(), PeerError> {
        let res = self
            .post_protobuf(format!("{peer}{RAFT_MESSAGES}"), batch, RAFT_TIMEOUT)
            .await?;
        match res.status().as_u16() {
            s if (200..300).contains(&s) => Ok(()),
            s => Err(PeerError::Status(s, String::new())),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        frontend: Option<&str>,
    ) -> Result<T, PeerError> {
        let mut req = self
            .request(reqwest::Method::GET, url)
            .timeout(STATUS_TIMEOUT);
        if let Some(me) = frontend {
            req = req.header(FRONTEND_HEADER, me);
        }
        let res = req
            .send()
            .await
            .map_err(|e| PeerError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        let body = read_bounded(res, self.max_body).await?;
        if status != 200 {
            return Err(PeerError::Status(status, String::new()));
        }
        serde_json::from_slice(&body).map_err(|e| PeerError::Decode(e.to_string()))
    }

    /// `GET {peer}/_raft/info`.
    pub async fn raft_info(&self, peer: &str) -> Result<RaftStatus, PeerError> {
        self.get_json(format!("{peer}{RAFT_INFO}"), None).await
    }

    /// `GET {peer}/_raft/members`; a frontend says where its own peer port is (`frontend`).
    pub async fn ring_members(
        &self,
        peer: &str,
        frontend: Option<&str>,
    ) -> Result<RingMembers, PeerError> {
        self.get_json(format!("{peer}{RAFT_MEMBERS}"), frontend)
            .await
    }

    /// POSTs a membership change (`path` is one of the `RAFT_*` change paths) through `via`,
    /// following `421 not_leader` to the leader, on behalf of a member of `cluster_id` (""
    /// for an operator's tool or a node that has joined nothing).
    pub async fn change(&self, via: &str, path: &str, body: &Value, cluster_id: &str) -> Changed {
        let mut target = via.trim_end_matches('/').to_owned();
        for _ in 0..3 {
            let mut req = self
                .request(reqwest::Method::POST, format!("{target}{path}"))
                .json(body)
                .timeout(CHANGE_TIMEOUT);
            if !cluster_id.is_empty() {
                req = req.header(CLUSTER_HEADER, cluster_id);
            }
            let Ok(res) = req.send().await else {
                return Changed::Failed(0, Value::Null);
            };
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap_or(Value::Null);
            match status {
                200 => return Changed::Applied(v),
                421 => match v["leader"].as_str() {
                    Some(leader) if leader != target => target = leader.to_owned(),
                    _ => return Changed::Failed(status, v),
                },
                409 => {
                    return Changed::Foreign(v["message"].as_str().unwrap_or_default().to_owned());
                }
                _ => return Changed::Failed(status, v),
            }
        }
        Changed::Failed(421, Value::Null)
    }
}

/// hyper's error with its cause ("connection refused" is the cause's text, not the error's).
fn transport_error(e: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn answer(body: Bytes) -> Result<PeerAnswer, PeerError> {
    let r = Response::decode(body).map_err(|e| PeerError::Decode(e.to_string()))?;
    Ok(PeerAnswer {
        value: r.value,
        minute_qps: r.minute_qps,
        epoch: r.epoch,
        generation: r.generation,
        age_ms: r.age_ms,
        fresh_ms: r.fresh_ms,
        stale: r.stale,
        content_type: r.content_type,
        feed_xmin: r.feed_xmin,
    })
}

/// Reads a body of at most `max` bytes, refusing it as soon as it is known to be longer.
async fn read_bounded(mut res: reqwest::Response, max: usize) -> Result<Bytes, PeerError> {
    if res.content_length().is_some_and(|n| n > max as u64) {
        return Err(PeerError::TooLarge(max));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| PeerError::Transport(e.to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(PeerError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::group::Groups;

    /// A previous owner that accepts the peek and never answers costs the miss at most
    /// PEEK_TIMEOUT, not the peer timeout.
    #[tokio::test]
    async fn a_peek_gives_up_after_its_own_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let client = PeerClient::new(&PeerSettings {
            timeout: Duration::from_secs(20),
            secret: None,
            max_value_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(30),
        })
        .unwrap();
        let group = Groups::demo().default_group();
        let started = std::time::Instant::now();
        let peeked = client.peek(&format!("http://{addr}"), group, "Tom").await;
        let took = started.elapsed();
        assert!(peeked.is_err(), "{peeked:?}");
        assert!(
            took >= PEEK_TIMEOUT && took < Duration::from_secs(5),
            "{took:?}"
        );
        held.abort();
    }
}
