//! The one client of the peer port: data fetches, the Raft transport, and the membership calls
//! (info, members, join, remove, command). Authorization, timeouts, paths and the bound on
//! answer sizes are set here once.
//!
//! Each loader arbiter, the Raft actor and the boot loop build their own `PeerClient` from the
//! same [`PeerSettings`]: a client's connections live on the runtime that opened them, so a
//! client per arbiter keeps a request and its connection on one thread.
//!
//! The data path (fetch, peek, invalidate) is hyper's pooled HTTP/1 client, keep-alive, with
//! the request's URI parsed by `http`; the membership and Raft calls go through reqwest, whose
//! URL parsing and middleware on every fetch would cost the data path more than the hop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::wire::{
    CLUSTER_HEADER, EPOCH_HEADER, FETCH_BATCH, FETCH_BATCH_MAX, FRONTEND_HEADER, Fetch,
    FetchAnswer, FetchBatch, HANDOFF, HandoffBatch, PEEK_HEADER, RAFT_INFO, RAFT_MEMBERS,
    RAFT_MESSAGES, RaftBatch, RaftStatus, Response, RingMembers, data_path,
};
use crate::clock;
use crate::group::Group;

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
    /// Most data fetches sent to a peer in one request (`--peer-batch`); 1: never batched.
    pub batch_max: usize,
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
    data: Arc<DataPath>,
    /// Fetches waiting to go to each peer, batched (see [`Batcher`]). Keyed by the ring's
    /// member URLs, not by anything a client sends: a fast hash, not SipHash, at every fetch.
    queues: Mutex<HashMap<Arc<str>, mpsc::UnboundedSender<Ask>, foldhash::fast::RandomState>>,
    /// Most fetches in one exchange; 1: one request per fetch, never a batch.
    batch_max: usize,
}

/// The data path's HTTP client and what each of its requests carries.
struct DataPath {
    client: HyperClient<HttpConnector, Full<Bytes>>,
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
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(settings.idle_timeout)
            .build(connector);
        Ok(PeerClient {
            http: reqwest::Client::builder()
                .connect_timeout(settings.timeout.min(Duration::from_millis(500)))
                .pool_max_idle_per_host(64)
                .pool_idle_timeout(settings.idle_timeout)
                .tcp_nodelay(true)
                .build()?,
            data: Arc::new(DataPath {
                client,
                auth,
                timeout: settings.timeout,
                max_body: settings.max_value_bytes.saturating_add(1024),
            }),
            queues: Mutex::new(HashMap::default()),
            batch_max: settings.batch_max.clamp(1, FETCH_BATCH_MAX),
        })
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.data.auth {
            Some(auth) => req.header(AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    /// A data fetch of `{peer}/_geecache/{group}/{key}` with this node's ring epoch. Fetches
    /// for the same peer that wait at the same time go out together (see [`Batcher`]).
    pub async fn fetch(
        &self,
        peer: &str,
        group: Group,
        key: &str,
        epoch: u64,
    ) -> Result<PeerAnswer, PeerError> {
        if self.batch_max == 1 {
            return self.data.fetch(peer, group, key, epoch).await;
        }
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            group,
            key: key.to_owned(),
            epoch,
            reply,
        };
        self.queue(peer).send(ask).ok();
        match tokio::time::timeout(self.data.timeout, answer).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(_)) => Err(PeerError::Transport("the batch was dropped".into())),
            Err(_) => Err(self.data.late()),
        }
    }

    /// The queue of fetches for `peer`; its batcher starts on this thread's runtime at the
    /// first fetch (a loader's client is used on its loader's thread only).
    fn queue(&self, peer: &str) -> mpsc::UnboundedSender<Ask> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = queues.get(peer).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let peer: Arc<str> = peer.into();
        let batch_uri = format!("{peer}{FETCH_BATCH}")
            .parse::<http::Uri>()
            .map_err(|e| PeerError::Transport(format!("bad peer URL {peer:?}: {e}")));
        let batcher = Batcher {
            data: Arc::clone(&self.data),
            host: batch_uri.as_ref().ok().and_then(host_header),
            batch_uri,
            peer: Arc::clone(&peer),
            max: self.batch_max,
            singles_until: AtomicU64::new(0),
        };
        tokio::spawn(batcher.run(rx));
        queues.insert(peer, tx.clone());
        tx
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
        let asked = self
            .data
            .data(http::Method::GET, peer, group, key, Some(peek));
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
            .data
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
        let body = read_bounded(res, self.data.max_body).await?;
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

impl DataPath {
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
        let mut req = http::Request::new(Full::default());
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
                .client
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
            .map_err(|_| self.late())?
    }

    fn late(&self) -> PeerError {
        PeerError::Transport(format!("no answer within {} ms", self.timeout.as_millis()))
    }

    /// `GET {peer}/_geecache/{group}/{key}` with this node's ring epoch.
    async fn fetch(
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
            _ => Err(fetch_refused(
                status,
                their_epoch,
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            )),
        }
    }
}

/// How many exchanges a peer's batcher keeps under way at once (per loader).
pub const BATCH_IN_FLIGHT: usize = 2;
/// How long a peer that does not serve batches (a GeeCache (Go) node, or one of ours from
/// before them) is asked one key per request before batching is tried again.
const SINGLES_FOR: Duration = Duration::from_secs(60);

/// A fetch waiting in a peer's queue.
struct Ask {
    group: Group,
    key: String,
    epoch: u64,
    reply: oneshot::Sender<Result<PeerAnswer, PeerError>>,
}

/// Sends the fetches queued for one peer, at most [`BATCH_IN_FLIGHT`] exchanges at a time
/// until their answers' heads arrive, each one carrying every fetch that queued while the
/// others were under way (up to `max`). A fetch that finds an exchange free goes at once,
/// alone: a batch never waits to fill, it forms only when the peer is busy, which is when it
/// pays. A remote hit is two HTTP exchanges (client to this node, this node to the owner) and
/// three processes' syscalls and parsing; in a batch of N the second exchange costs both
/// sides 1/N of that.
struct Batcher {
    data: Arc<DataPath>,
    peer: Arc<str>,
    /// `POST {peer}/_fetch_batch` and its `Host`, made once: hyper would otherwise format the
    /// `Host` header from the URI at every exchange, as this would the URI.
    batch_uri: Result<http::Uri, PeerError>,
    host: Option<HeaderValue>,
    max: usize,
    /// Until when (`clock::now_ms`) to send fetches one by one: the peer answered a batch 404.
    singles_until: AtomicU64,
}

impl Batcher {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Ask>) {
        let permits = Arc::new(Semaphore::new(BATCH_IN_FLIGHT));
        let this = Arc::new(self);
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut asks = vec![first];
            while asks.len() < this.max {
                match queue.try_recv() {
                    Ok(ask) => asks.push(ask),
                    Err(_) => break,
                }
            }
            asks.retain(|ask| !ask.reply.is_closed()); // their callers gave up
            let this = Arc::clone(&this);
            tokio::spawn(async move {
                if clock::now_ms() >= this.singles_until.load(Ordering::Relaxed) {
                    match this.batch(asks, permit).await {
                        Ok(()) => return,
                        Err(unanswered) => asks = unanswered,
                    }
                } else {
                    drop(permit);
                }
                this.singles(asks).await;
            });
        }
    }

    /// Each fetch as its own `GET`, all at once (a peer that does not serve batches).
    async fn singles(&self, asks: Vec<Ask>) {
        let one = |ask: Ask| async move {
            let answered = self.data.fetch(&self.peer, ask.group, &ask.key, ask.epoch);
            ask.reply.send(answered.await).ok();
        };
        futures_util::future::join_all(asks.into_iter().map(one)).await;
    }

    /// `POST {peer}/_fetch_batch`; each fetch is answered as its answer arrives. The permit
    /// goes back when the answer's head does: the owner has then written every answer it had
    /// (the hits), and what is left are its loads, which must not hold up the next exchange
    /// (a hit queued behind four slow misses would wait for the slowest). Gives the fetches
    /// back when the peer does not serve batches (404 or 405).
    async fn batch(
        &self,
        asks: Vec<Ask>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), Vec<Ask>> {
        let data = &self.data;
        if asks.len() > 1 {
            metrics::counter!("geecache_peer_batches_total").increment(1);
            metrics::counter!("geecache_peer_batched_fetches_total").increment(asks.len() as u64);
        }
        let body = FetchBatch {
            fetches: asks
                .iter()
                .map(|ask| Fetch {
                    group: ask.group.name().to_owned(),
                    key: ask.key.clone(),
                    epoch: ask.epoch,
                })
                .collect(),
        };
        let mut waiting: Vec<Option<Ask>> = asks.into_iter().map(Some).collect();
        let exchange = async {
            let uri = self.batch_uri.clone()?;
            let mut req = http::Request::new(Full::new(Bytes::from(body.encode_to_vec())));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = uri;
            if let Some(auth) = &data.auth {
                req.headers_mut().insert(AUTHORIZATION, auth.clone());
            }
            if let Some(host) = &self.host {
                req.headers_mut().insert(HOST, host.clone());
            }
            let res = data
                .client
                .request(req)
                .await
                .map_err(|e| PeerError::Transport(transport_error(&e)))?;
            drop(permit);
            let status = res.status().as_u16();
            if status != 200 {
                let body = Limited::new(res.into_body(), 4096).collect().await;
                let text = body.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(PeerError::Status(
                    status,
                    String::from_utf8_lossy(&text).into_owned(),
                ));
            }
            // Length-delimited answers, read as they arrive, each at most a value's size.
            let mut body = res.into_body();
            let mut buf = bytes::BytesMut::new();
            let (mut read, most) = (0, data.max_body.saturating_mul(waiting.len()));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| PeerError::Transport(e.to_string()))?;
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                read += chunk.len();
                if read > most {
                    return Err(PeerError::TooLarge(data.max_body));
                }
                buf.extend_from_slice(&chunk);
                while let Some(answer) = next_answer(&mut buf, data.max_body)? {
                    let index = answer.index as usize;
                    if let Some(ask) = waiting.get_mut(index).and_then(Option::take) {
                        ask.reply.send(fetch_answered(answer)).ok();
                    }
                }
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(data.timeout, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(data.late()),
        };
        let left = waiting.into_iter().flatten();
        match outcome {
            Err(PeerError::Status(404 | 405, _)) => {
                let until = clock::now_ms().saturating_add(clock::ms(SINGLES_FOR));
                self.singles_until.store(until, Ordering::Relaxed);
                tracing::info!(peer = %self.peer, "the peer does not serve batched fetches: asking it one key at a time");
                Err(left.collect())
            }
            Err(e) => {
                for ask in left {
                    ask.reply.send(Err(e.clone())).ok();
                }
                Ok(())
            }
            Ok(()) => {
                for ask in left {
                    let missing = PeerError::Decode("the batch answer left this fetch out".into());
                    ask.reply.send(Err(missing)).ok();
                }
                Ok(())
            }
        }
    }
}

/// The next complete length-delimited answer at the front of `buf`, if one has arrived.
fn next_answer(buf: &mut bytes::BytesMut, max: usize) -> Result<Option<FetchAnswer>, PeerError> {
    use bytes::Buf;
    let Ok(len) = prost::decode_length_delimiter(&buf[..]) else {
        return match buf.len() {
            // A length's varint is at most 10 bytes: the rest of it has not arrived yet.
            0..10 => Ok(None),
            _ => Err(PeerError::Decode("bad length in a batch answer".into())),
        };
    };
    if len > max {
        return Err(PeerError::TooLarge(max));
    }
    let head = prost::length_delimiter_len(len);
    if buf.len() < head + len {
        return Ok(None);
    }
    buf.advance(head);
    let message = buf.split_to(len).freeze();
    FetchAnswer::decode(message)
        .map(Some)
        .map_err(|e| PeerError::Decode(e.to_string()))
}

/// A batch's answer to one fetch, as [`DataPath::fetch`] reads a single one.
fn fetch_answered(answer: FetchAnswer) -> Result<PeerAnswer, PeerError> {
    match (answer.status, answer.response) {
        (200, Some(response)) => Ok(peer_answer(response)),
        (200, None) => Err(PeerError::Decode("a batch answer without its value".into())),
        (status, _) => Err(fetch_refused(
            u16::try_from(status).unwrap_or(u16::MAX),
            Some(answer.epoch),
            answer.error,
        )),
    }
}

/// A fetch that was not answered 200, alone or in a batch: `reason` is the error's body or
/// code, `epoch` the owner's (on 421).
fn fetch_refused(status: u16, epoch: Option<u64>, reason: String) -> PeerError {
    match (status, epoch) {
        (421, Some(theirs)) => PeerError::StaleEpoch(theirs),
        (404, _) if !reason.contains("unknown_group") => PeerError::NotFound,
        _ => PeerError::Status(status, reason),
    }
}

/// The `Host` header hyper would send for `uri`: its host, and its port unless the scheme's
/// default.
fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match uri.port_u16() {
        Some(port) if port != default => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
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
    Ok(peer_answer(r))
}

fn peer_answer(r: Response) -> PeerAnswer {
    PeerAnswer {
        value: r.value,
        minute_qps: r.minute_qps,
        epoch: r.epoch,
        generation: r.generation,
        age_ms: r.age_ms,
        fresh_ms: r.fresh_ms,
        stale: r.stale,
        content_type: r.content_type,
        feed_xmin: r.feed_xmin,
    }
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
    use crate::group::Groups;

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
            batch_max: 1,
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

    #[test]
    fn the_host_header_is_the_one_hyper_would_send() {
        let host = |u: &str| host_header(&u.parse().unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:8001/_fetch_batch"), "127.0.0.1:8001");
        assert_eq!(host("http://cache-2.local/_fetch_batch"), "cache-2.local");
        assert_eq!(
            host("http://cache-2.local:80/_fetch_batch"),
            "cache-2.local"
        );
        assert_eq!(host("https://cache-2.local:443/x"), "cache-2.local");
        assert_eq!(host("https://cache-2.local:8443/x"), "cache-2.local:8443");
    }

    /// A batched fetch goes out with one `Host` header, the peer's: the one the batcher sets,
    /// not a second one from hyper.
    #[tokio::test]
    async fn a_batched_fetch_names_its_host_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request's head");
                head.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&head).to_lowercase()
        });
        let client = PeerClient::new(&PeerSettings {
            timeout: Duration::from_secs(5),
            secret: None,
            max_value_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(30),
            batch_max: 8,
        })
        .unwrap();
        let group = Groups::demo().default_group();
        let fetched = client
            .fetch(&format!("http://{addr}"), group, "Tom", 1)
            .await;
        assert!(
            matches!(fetched, Err(PeerError::Status(503, _))),
            "{fetched:?}"
        );
        let head = server.await.unwrap();
        assert!(head.starts_with(&format!("post {FETCH_BATCH} ")), "{head}");
        assert_eq!(head.matches("\r\nhost: ").count(), 1, "{head}");
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
    }
}
