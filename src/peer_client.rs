//! The client side of the peer protocol: `GET {peer}/_geecache/{group}/{key}`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prost::Message;

use crate::groups::Group;
use crate::proto::Response;

/// Header carrying the caller's ring epoch on peer requests.
pub const EPOCH_HEADER: &str = "x-geecache-epoch";

/// Escape everything but RFC 3986's unreserved characters, so `/`, `+` and spaces in keys
/// survive the path intact on our servers and on GeeCache's.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq)]
pub struct PeerAnswer {
    pub value: Bytes,
    pub minute_qps: f64,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The owner's source has no such key: that is the answer, not a failure.
    #[error("not found at the owner")]
    NotFound,
    #[error("peer answered {0}: {1}")]
    Status(u16, String),
    #[error("peer unreachable: {0}")]
    Transport(String),
    #[error("bad peer response: {0}")]
    Decode(String),
    #[error("peer answer is larger than {0} bytes (--max-value-bytes)")]
    TooLarge(usize),
}

pub type PeerFuture = Pin<Box<dyn Future<Output = Result<PeerAnswer, PeerError>> + Send>>;

/// Fetches a key from the peer that owns it.
pub trait PeerClient: Send + Sync + 'static {
    fn fetch(&self, peer: &str, group: Group, key: &str, epoch: u64) -> PeerFuture;
}

pub fn peer_path(group: Group, key: &str) -> String {
    format!(
        "/_geecache/{}/{}",
        group.name(),
        utf8_percent_encode(key, SEGMENT)
    )
}

/// reqwest with a keep-alive pool per peer and connect/request deadlines.
pub struct HttpPeerClient {
    client: reqwest::Client,
    auth: Option<String>,
    /// Largest answer body read from a peer: the largest value plus the protobuf's framing.
    max_body: usize,
}

/// Reads a body of at most `max` bytes, refusing it as soon as it is known to be longer.
pub async fn read_bounded(mut res: reqwest::Response, max: usize) -> Result<Bytes, PeerError> {
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

impl HttpPeerClient {
    pub fn new(
        timeout: Duration,
        secret: Option<&str>,
        max_value_bytes: usize,
    ) -> Result<Self, reqwest::Error> {
        Ok(HttpPeerClient {
            max_body: max_value_bytes.saturating_add(1024),
            client: reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(1)))
                .timeout(timeout)
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
                .build()?,
            auth: secret.map(|s| format!("Bearer {s}")),
        })
    }
}

impl PeerClient for HttpPeerClient {
    fn fetch(&self, peer: &str, group: Group, key: &str, epoch: u64) -> PeerFuture {
        let mut req = self
            .client
            .get(format!("{peer}{}", peer_path(group, key)))
            .header(EPOCH_HEADER, epoch);
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        let max = self.max_body;
        Box::pin(async move {
            let res = req
                .send()
                .await
                .map_err(|e| PeerError::Transport(e.to_string()))?;
            let status = res.status().as_u16();
            let body = read_bounded(res, max).await?;
            match status {
                200 => {
                    let r = Response::decode(body).map_err(|e| PeerError::Decode(e.to_string()))?;
                    Ok(PeerAnswer {
                        value: r.value,
                        minute_qps: r.minute_qps,
                        epoch: r.epoch,
                    })
                }
                404 if !String::from_utf8_lossy(&body).contains("unknown_group") => {
                    Err(PeerError::NotFound)
                }
                _ => Err(PeerError::Status(
                    status,
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escape_what_would_change_meaning() {
        assert_eq!(peer_path(Group::Scores, "Tom"), "/_geecache/scores/Tom");
        assert_eq!(
            peer_path(Group::Scores, "a b+c/d%"),
            "/_geecache/scores/a%20b%2Bc%2Fd%25"
        );
        assert_eq!(
            peer_path(Group::Products, "€"),
            "/_geecache/products/%E2%82%AC"
        );
    }
}
