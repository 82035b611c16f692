//! The client API: `GET /api?key=K[&group=G]` and `GET /api/{group}/{key}`, and `DELETE` on
//! both (with the admin token).

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use super::decode::{DecodeError, decode, query_pairs};
use super::error::ApiError;
use super::{
    AppState, get_delete_resource, group_named, method_not_allowed_response, reply_response,
    subtree,
};
use crate::group::{Group, Groups};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_delete_resource("/api", get_by_query, delete_by_query))
        .service(subtree("/api", "/api/{group}/{key}", by_path));
}

fn bad_query(message: String) -> ApiError {
    ApiError::bad_request("bad_query", message)
}

/// An answer that never reached the cache (a malformed request, an unknown group).
fn refused(e: ApiError) -> HttpResponse {
    let mut res = e.error_response();
    res.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-cache"),
        actix_web::http::header::HeaderValue::from_static("MISS"),
    );
    res
}

fn from_query(req: &HttpRequest, state: &AppState) -> Result<(Group, String), ApiError> {
    parse_query(req.query_string(), state.cache.core.groups())
}

fn from_path(req: &HttpRequest, state: &AppState) -> Result<(Group, String), ApiError> {
    parse_path(req.uri().path(), state.cache.core.groups())
}

/// `?key=K[&group=G]`; the group defaults to the first configured (`scores` for the demo).
pub fn parse_query(query: &str, groups: Groups) -> Result<(Group, String), ApiError> {
    let (mut key, mut group) = (None, None);
    for pair in query_pairs(query) {
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
        Some(name) => group_named(groups, &name)?,
        None => groups.default_group(),
    };
    Ok((group, key.into_owned()))
}

/// `/api/{group}/{key}`: the key is the rest of the raw path, percent-decoded strictly (so
/// `%2F` and `/` both reach the key as `/`).
pub fn parse_path(path: &str, groups: Groups) -> Result<(Group, String), ApiError> {
    let rest = path.strip_prefix("/api/").unwrap_or_default();
    let (group, key) = rest
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request("bad_path", "expected /api/{group}/{key}"))?;
    let bad = |e: DecodeError| ApiError::bad_request("bad_path", e.to_string());
    let group = group_named(groups, &decode(group, false).map_err(bad)?)?;
    Ok((group, decode(key, false).map_err(bad)?.into_owned()))
}

async fn get(state: &AppState, asked: Result<(Group, String), ApiError>) -> HttpResponse {
    match asked {
        Ok((group, key)) => reply_response(group, state.cache.get(group, &key).await),
        Err(e) => refused(e),
    }
}

async fn get_by_query(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    get(&state, from_query(&req, &state)).await
}

/// DELETE needs the admin token: the client API is public behind the load balancer.
fn authorize_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "DELETE needs an admin token, and this node has none (--admin-token)",
        ));
    };
    let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if super::auth::bearer_matches(given, std::slice::from_ref(token)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "DELETE needs Authorization: Bearer <admin token>",
        ))
    }
}

/// Invalidates the key everywhere: 204 with `X-Geecache-Confirmed: N` when every node and
/// frontend confirmed, else 207 with who did not.
async fn delete(
    req: &HttpRequest,
    state: &AppState,
    asked: impl FnOnce() -> Result<(Group, String), ApiError>,
) -> HttpResponse {
    let result = async {
        authorize_admin(req, state)?;
        let (group, key) = asked()?;
        Ok::<_, ApiError>(state.cache.delete(group, &key).await?)
    }
    .await;
    match result {
        Ok(done) if done.unreachable.is_empty() => HttpResponse::NoContent()
            .insert_header(("x-geecache-confirmed", done.confirmed.to_string()))
            .finish(),
        Ok(done) => HttpResponse::build(StatusCode::MULTI_STATUS).json(json!({
            "confirmed": done.confirmed,
            "unreachable": done.unreachable,
            "message": "these nodes could not be told; their copies live at most --hot-ttl, \
                        or until the owner's value is reloaded",
        })),
        Err(e) => refused(e),
    }
}

async fn delete_by_query(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    delete(&req, &state, || from_query(&req, &state)).await
}

/// `/api/{group}/{key}`, every method.
async fn by_path(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match *req.method() {
        Method::GET | Method::HEAD => get(&state, from_path(&req, &state)).await,
        Method::DELETE => delete(&req, &state, || from_path(&req, &state)).await,
        _ => method_not_allowed_response(&req, "GET, HEAD, DELETE"),
    }
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
        let source = EmbeddedSource::new(
            EmbeddedConfig {
                products: 10,
                latency: Duration::ZERO,
                error_rate: 0.0,
            },
            crate::group::Groups::demo(),
        );
        let config = Config {
            insecure_open_peer_port: true,
            ..Config::default()
        };
        let groups = crate::group::Groups::demo();
        actix_web::web::Data::new(build_state(&config, groups, Arc::new(source)).unwrap())
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
            // Controls never reach a store or the source (PostgreSQL refuses NUL in text).
            ("GET", "/api?key=%00", 400, "U+0000"),
            ("GET", "/api/products/1%00", 400, "bad_key"),
            ("GET", "/api?key=a%0Ab", 400, "U+000A"),
            ("GET", "/api?key=a%09b", 400, "bad_key"),
            ("GET", "/api?key=%C2%85", 400, "U+0085"),
            ("HEAD", "/api?key=%00", 400, ""),
            ("GET", "/cluster/owner?key=%7F", 400, "bad_key"),
            (
                "GET",
                "/cluster/owner?key=1&grup=x",
                400,
                "unknown parameter",
            ),
            ("GET", "/cluster/owner?key=1&key=2", 400, "given twice"),
            ("GET", "/cluster/owner?key=1", 200, "owner"),
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
