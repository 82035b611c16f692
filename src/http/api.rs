//! The client API: `GET /api?key=K[&group=G]` and `GET /api/{group}/{key}`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::decode::{DecodeError, decode, query_pairs};
use super::error::ApiError;
use super::{AppState, get_resource, parse_group, value_response};
use crate::cache::group::Group;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_resource("/api", by_query))
        .service(get_resource("/api/{group}/{key:.*}", by_path));
}

fn bad_query(message: String) -> ApiError {
    ApiError::bad_request("bad_query", message)
}

/// `GET /api?key=K[&group=G]`; the group defaults to `scores`, as in the seed.
async fn by_query(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (mut key, mut group) = (None, None);
    for pair in query_pairs(req.query_string()) {
        let (name, value) = pair.map_err(|e| bad_query(e.to_string()))?;
        let slot = match &*name {
            "key" => &mut key,
            "group" => &mut group,
            other => return Err(bad_query(format!("unknown parameter {other:?}"))),
        };
        if slot.replace(value).is_some() {
            return Err(bad_query(format!("parameter {name:?} given twice")));
        }
    }
    let key = key.ok_or_else(|| bad_query("missing parameter \"key\"".into()))?;
    let group = match group {
        Some(name) => parse_group(&name)?,
        None => Group::Scores,
    };
    Ok(value_response(state.cache.get(group, &key).await?))
}

/// `GET /api/{group}/{key}`: the key is the rest of the raw path, percent-decoded strictly
/// (so `%2F` and `/` both reach the key as `/`).
async fn by_path(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rest = req.uri().path().strip_prefix("/api/").unwrap_or_default();
    let (group, key) = rest
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request("bad_path", "expected /api/{group}/{key}"))?;
    let bad = |e: DecodeError| ApiError::bad_request("bad_path", e.to_string());
    let group = parse_group(&decode(group, false).map_err(bad)?)?;
    let key = decode(key, false).map_err(bad)?;
    Ok(value_response(state.cache.get(group, &key).await?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix_web::test;

    use crate::cli::config::Config;
    use crate::node::{api_app, build_state};
    use crate::source::EmbeddedSource;
    use crate::source::embedded::EmbeddedConfig;

    fn state() -> actix_web::web::Data<super::AppState> {
        let source = EmbeddedSource::new(EmbeddedConfig {
            products: 10,
            latency: Duration::ZERO,
            error_rate: 0.0,
        });
        let config = Config {
            insecure_open_peer_port: true,
            ..Config::default()
        };
        actix_web::web::Data::new(build_state(&config, Arc::new(source)).unwrap())
    }

    #[actix_web::test]
    async fn answers_values_errors_and_methods() {
        let state = state();
        state.health.set_ready();
        let app = test::init_service(api_app(state)).await;
        let cases = [
            ("GET", "/api?key=Tom", 200, "630"),
            ("GET", "/api?group=scores&key=Jack", 200, "589"),
            ("GET", "/api/scores/Sam", 200, "567"),
            ("GET", "/api/products/10", 200, "\"id\":10"),
            ("GET", "/api/products/11", 404, "not_found"),
            ("GET", "/api?key=a+b", 404, "not_found"),
            ("GET", "/api?key=", 400, "bad_key"),
            ("GET", "/api?key=%E2%82", 400, "not valid UTF-8"),
            ("GET", "/api?group=x&key=1", 404, "unknown_group"),
            ("POST", "/api?key=Tom", 405, "method_not_allowed"),
            ("GET", "/ready", 200, "ready"),
            ("GET", "/metrics", 200, "geecache_gets_total"),
        ];
        for (method, uri, status, needle) in cases {
            let req = test::TestRequest::default()
                .method(method.parse().unwrap())
                .uri(uri)
                .to_request();
            let res = test::call_service(&app, req).await;
            assert_eq!(res.status().as_u16(), status, "{method} {uri}");
            let body = test::read_body(res).await;
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains(needle), "{method} {uri}: {body}");
        }
    }

    #[actix_web::test]
    async fn draining_node_is_not_ready_but_still_serves() {
        let state = state();
        state.health.set_ready();
        state.health.start_draining();
        let app = test::init_service(api_app(state)).await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/ready").to_request()).await;
        assert_eq!(res.status().as_u16(), 503);
        let res = test::call_service(
            &app,
            test::TestRequest::get().uri("/api?key=Tom").to_request(),
        )
        .await;
        assert_eq!(res.status().as_u16(), 200);
    }
}
