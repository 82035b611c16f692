//! The peer protocol: `GET /_geecache/{group}/{key}` answered with a protobuf `Response`.
//!
//! Served on its own listener (`--peer-addr`), never through the load balancer. With a peer
//! secret, requests must carry `Authorization: Bearer <secret>`.

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use prost::Message;

use super::{AppState, get_resource, parse_group};
use crate::cluster::Route;
use crate::decode::decode;
use crate::error::ApiError;
use crate::peer_client::EPOCH_HEADER;
use crate::proto::Response;

pub const PREFIX: &str = "/_geecache/";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_resource("/_geecache/{group}/{key:.*}", get));
}

/// Compares in time independent of where the strings differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub fn authorize(req: &HttpRequest, secret: Option<&str>) -> Result<(), ApiError> {
    let Some(secret) = secret else { return Ok(()) };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(token) if same_secret(token, secret.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "peer requests need Authorization: Bearer <peer secret>",
        )),
    }
}

async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, state.peer_secret.as_deref())?;
    let rest = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    let (group, key) = rest
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request("bad_path", "expected /_geecache/{group}/{key}"))?;
    let bad = |e: crate::decode::DecodeError| ApiError::bad_request("bad_path", e.to_string());
    let group = parse_group(&decode(group, true).map_err(bad)?)?;
    // `+` is a space here: GeeCache's Go client escapes keys with url.QueryEscape.
    let key = decode(key, true).map_err(bad)?;
    // A caller on an older ring may ask a node that no longer owns the key: say so (with our
    // epoch) instead of loading, so that exactly the owner loads; the caller loads locally and
    // catches up. A caller on a newer ring is right: serve it.
    let theirs = req
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mine = state.cluster.epoch();
    if theirs.is_some_and(|e| e < mine) && state.cluster.route(&key) != Route::Local {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "stale_epoch",
            format!("not the owner under epoch {mine}"),
        ));
    }
    let value = state.get_for_peer(group, &key).await?;
    let minute_qps = state.served_rates.hit(group, &key);
    let body = Response {
        value,
        minute_qps,
        epoch: state.cluster.epoch(),
    }
    .encode_to_vec();
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
