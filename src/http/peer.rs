//! The peer protocol: `GET /_geecache/{group}/{key}` answered with a protobuf `Response`.
//!
//! Served on its own listener (`--peer-addr`), never through the load balancer. Every request
//! on that listener must carry `Authorization: Bearer <peer secret>` ([`require_secret`]),
//! unless the node runs with `--insecure-open-peer-port`.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use prost::Message;

use super::decode::{DecodeError, decode};
use super::error::ApiError;
use super::{AppState, group_named, method_not_allowed_response, subtree};
use crate::error::LoadError;
use crate::group::{Group, Groups};
use crate::peer::client::HANDOFF_TIMEOUT;
use crate::peer::wire::{
    DATA_PREFIX, EPOCH_HEADER, FETCH_BATCH, FETCH_BATCH_MAX, Fetch, FetchAnswer, FetchBatch,
    HANDOFF, HANDOFF_MAX_BODY, HandoffBatch, PEEK_HEADER, Response,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(subtree("/_geecache", "/_geecache/{group}/{key}", by_path))
        .service(
            post_only(web::resource(HANDOFF).app_data(web::PayloadConfig::new(HANDOFF_MAX_BODY)))
                .route(web::post().to(receive_handoff)),
        )
        .service(post_only(web::resource(FETCH_BATCH)).route(web::post().to(fetch_batch)));
}

/// A resource that answers 405 with `Allow: POST` to every other method.
fn post_only(resource: actix_web::Resource) -> actix_web::Resource {
    resource.default_service(web::to(|req: HttpRequest| async move {
        method_not_allowed_response(&req, "POST")
    }))
}

/// `POST /_fetch_batch`: each fetch as a `GET /_geecache/{group}/{key}` would answer it, all
/// at once. The answers ready at once (hits) go out in the first write; a fetch that loads is
/// streamed after them when it lands, so that no answer waits for another's query.
async fn fetch_batch(
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
    let batch =
        FetchBatch::decode(body).map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
    if batch.fetches.len() > FETCH_BATCH_MAX {
        return Err(ApiError::bad_request(
            "bad_batch",
            format!("at most {FETCH_BATCH_MAX} fetches in a batch"),
        ));
    }
    let mut pending: FuturesUnordered<_> = batch
        .fetches
        .into_iter()
        .enumerate()
        .map(|(index, fetch)| {
            let state = state.clone();
            async move { fetch_one(&state, index as u32, fetch).await }
        })
        .collect();
    let encode = |answers: &mut dyn Iterator<Item = FetchAnswer>| {
        let mut out = bytes::BytesMut::new();
        for answer in answers {
            answer.encode_length_delimited(&mut out).ok();
        }
        out.freeze()
    };
    let first = encode(&mut std::iter::from_fn(|| {
        pending.next().now_or_never().flatten()
    }));
    let ok = || {
        let mut res = HttpResponse::Ok();
        res.content_type("application/octet-stream");
        res
    };
    if pending.is_empty() {
        return Ok(ok().body(first));
    }
    let rest = pending
        .ready_chunks(FETCH_BATCH_MAX)
        .map(move |answers| Ok::<_, std::convert::Infallible>(encode(&mut answers.into_iter())));
    let head = futures_util::stream::once(async move { Ok(first) });
    Ok(ok().streaming(head.chain(rest)))
}

/// One fetch of a batch, answered as `get` would.
async fn fetch_one(state: &AppState, index: u32, fetch: Fetch) -> FetchAnswer {
    let failed = |e: ApiError, epoch: u64| FetchAnswer {
        index,
        status: u32::from(e.status.as_u16()),
        response: None,
        error: e.code.to_owned(),
        epoch,
    };
    let group = match group_named(state.cache.core.groups(), &fetch.group) {
        Ok(group) => group,
        Err(e) => return failed(e, 0),
    };
    match state
        .cache
        .get_for_peer(group, &fetch.key, Some(fetch.epoch))
        .await
    {
        Ok(hit) => FetchAnswer {
            index,
            status: 200,
            response: Some(response(state, group, hit)),
            error: String::new(),
            epoch: 0,
        },
        Err(e @ LoadError::NotOwner(mine)) => failed(e.into(), mine),
        Err(e) => failed(e.into(), 0),
    }
}

/// `POST /_handoff`: a leaving neighbour's entries for keys this node now owns (see
/// `handoff::receive`); answers `{"kept": N, "refused": M}`.
async fn receive_handoff(
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let batch = HandoffBatch::decode(body)
        .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
    let transit = crate::clock::ms(HANDOFF_TIMEOUT);
    let (kept, refused) =
        crate::cache::handoff::receive(&state.cache.core, batch.entries, batch.feed_xmin, transit);
    Ok(HttpResponse::Ok().json(serde_json::json!({"kept": kept, "refused": refused})))
}

/// `/_geecache/{group}/{key}`, every method.
async fn by_path(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    use actix_web::ResponseError;
    let answer = match *req.method() {
        Method::GET | Method::HEAD => get(req, state).await,
        Method::DELETE => invalidate(req, state).await,
        _ => return method_not_allowed_response(&req, "GET, HEAD, DELETE"),
    };
    answer.unwrap_or_else(|e| e.error_response())
}

/// The secrets the peer port accepts: the one nodes send, and during a rotation the others
/// (`--peer-secret-accept`). `None`: the port is open (`--insecure-open-peer-port`).
#[derive(Debug, Clone)]
pub struct PeerAuth(Option<Vec<String>>);

impl PeerAuth {
    pub fn new(secret: Option<&str>, also: &[String]) -> PeerAuth {
        PeerAuth(secret.map(|s| {
            std::iter::once(s.to_owned())
                .chain(also.iter().cloned())
                .collect()
        }))
    }

    pub fn open() -> PeerAuth {
        PeerAuth(None)
    }

    /// `Authorization: Bearer <secret>`, the scheme in any case (RFC 9110 §11.1).
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        match &self.0 {
            None => Ok(()),
            Some(accepted) if super::auth::bearer_matches(header, accepted) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "peer requests need Authorization: Bearer <peer secret>",
            )),
        }
    }
}

/// Middleware of the whole peer app: the secret is checked before routing and before any body
/// is read, so an unauthenticated caller learns nothing but 401.
pub async fn require_secret(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let auth = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.peer_auth.clone())
        .unwrap_or_else(|| PeerAuth::new(Some(""), &[]));
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match auth.check(header) {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => {
            use actix_web::ResponseError;
            Ok(req.into_response(e.error_response()).map_into_right_body())
        }
    }
}

/// The group and key of a data path, `+` read as a space (GeeCache's Go client escapes keys
/// with `url.QueryEscape`).
fn group_and_key(req: &HttpRequest, state: &AppState) -> Result<(Group, String), ApiError> {
    parse_data_path(req.uri().path(), state.cache.core.groups())
}

/// `/_geecache/{group}/{key}`, as `peer::wire::data_path` writes it.
pub fn parse_data_path(path: &str, groups: Groups) -> Result<(Group, String), ApiError> {
    let rest = path.strip_prefix(DATA_PREFIX).unwrap_or_default();
    let (group, key) = rest
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request("bad_path", "expected /_geecache/{group}/{key}"))?;
    let bad = |e: DecodeError| ApiError::bad_request("bad_path", e.to_string());
    let group = group_named(groups, &decode(group, true).map_err(bad)?)?;
    Ok((group, decode(key, true).map_err(bad)?.into_owned()))
}

/// `GET`: the value from this node's store or its own load, never forwarded.
async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (group, key) = group_and_key(&req, &state)?;
    if req.headers().contains_key(PEEK_HEADER) {
        return Ok(peek(&state, group, &key));
    }
    let theirs = req
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let hit = match state.cache.get_for_peer(group, &key, theirs).await {
        Ok(hit) => hit,
        // The caller's ring is older: say so with ours, so that it catches up and retries.
        Err(e @ LoadError::NotOwner(mine)) => {
            use actix_web::ResponseError;
            let mut res = ApiError::from(e).error_response();
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(EPOCH_HEADER),
                mine.into(),
            );
            return Ok(res);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(answer(&state, group, hit))
}

/// A peek: what this node's store holds of the key, never a load, never forwarded.
fn peek(state: &AppState, group: Group, key: &str) -> HttpResponse {
    use actix_web::ResponseError;
    match crate::cache::handoff::answer(&state.cache.core, group, key) {
        Some(hit) => answer(state, group, hit),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_held",
            "this node holds no fresh value of the key",
        )
        .error_response(),
    }
}

fn answer(state: &AppState, group: Group, hit: crate::cache::PeerHit) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(response(state, group, hit).encode_to_vec())
}

fn response(state: &AppState, group: Group, hit: crate::cache::PeerHit) -> Response {
    let loaded = hit.loaded;
    Response {
        value: loaded.value,
        minute_qps: hit.minute_qps,
        epoch: state.cache.core.cluster().epoch(),
        generation: hit.generation,
        age_ms: loaded.age_ms,
        fresh_ms: loaded.fresh_ms,
        stale: loaded.stale,
        content_type: group.content_type().to_owned(),
        feed_xmin: state.cache.core.feed().applied_xmin(),
    }
}

/// `DELETE`: drops the key from this node's stores (a DELETE on another node's client API,
/// fanned out).
async fn invalidate(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (group, key) = group_and_key(&req, &state)?;
    crate::group::validate_key(&key).map_err(LoadError::from)?;
    state.cache.core.invalidate(group, &key);
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_rotation_accepts_both() {
        let auth = PeerAuth::new(
            Some("new-secret-0123456789"),
            &["old-secret-0123456789".into()],
        );
        for ok in [
            "Bearer new-secret-0123456789",
            "bearer new-secret-0123456789",
            "BEARER  new-secret-0123456789 ",
            "Bearer old-secret-0123456789",
        ] {
            assert!(auth.check(Some(ok.as_bytes())).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Basic new-secret-0123456789",
            "Bearernew-secret-0123456789",
            "Bearer new-secret-012345678",
            "Bearer new-secret-0123456789x",
        ] {
            let e = auth.check(Some(bad.as_bytes())).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (401, "unauthorized"),
                "{bad:?}"
            );
        }
        assert!(auth.check(None).is_err());
        assert!(PeerAuth::open().check(None).is_ok());
    }
}
