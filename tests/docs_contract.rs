//! What the docs promise, held to a real node and to the code: the `Age` header, the request
//! head's limit, a `GEECACHE_*` variable over a default, and every default and constant that
//! `docs/` quotes.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::NodeProc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_counts_the_seconds_since_the_source_answered() {
    let c = common::client();
    let n = NodeProc::spawn(&[]);
    let url = format!("{}/api/products/7", n.api);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "MISS");
    let fresh: u64 = r
        .headers()
        .get("age")
        .map_or(0, |a| a.to_str().unwrap().parse().unwrap());
    assert_eq!(fresh, 0, "loaded for this request");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!((2..=3).contains(&age), "Age {age}");
}

/// Sends `head` (and a blank line) on a fresh connection; the status and the body.
fn raw(api: &str, head: &str) -> (u16, String) {
    let addr = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn a_head_over_32_kib_is_431() {
    let n = NodeProc::spawn(&[]);
    let host = "Host: x";
    // Under the limit: the key is refused for its own reason.
    let (status, body) = raw(
        &n.api,
        &format!("GET /api?key={} HTTP/1.1\r\n{host}", "k".repeat(30_000)),
    );
    assert_eq!(status, 400);
    assert!(body.contains("bad_key"), "{body}");
    // Over it, by the request line or by a header, on the client API and on /health.
    for (path, header) in [
        (format!("/api?key={}", "k".repeat(33_000)), String::new()),
        (
            "/api?key=Tom".to_owned(),
            format!("\r\nX-Big: {}", "b".repeat(40_000)),
        ),
        (
            "/health".to_owned(),
            format!("\r\nX-Big: {}", "b".repeat(40_000)),
        ),
    ] {
        let (status, body) = raw(&n.api, &format!("GET {path} HTTP/1.1\r\n{host}{header}"));
        assert_eq!(status, 431, "{body}");
        assert!(body.contains("\"head_too_large\""), "{body}");
    }
    // Past actix-http's own bound on the request line: its empty 400.
    let (status, body) = raw(
        &n.api,
        &format!("GET /api?key={} HTTP/1.1\r\n{host}", "k".repeat(70_000)),
    );
    assert_eq!((status, body.as_str()), (400, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geecache_variable_overrides_a_default() {
    let c = common::client();
    // No admin token by default: DELETE is refused as disabled.
    let plain = NodeProc::spawn(&[]);
    let del = |api: &str| {
        c.delete(format!("{api}/api/products/1"))
            .bearer_auth("from-the-environment")
            .send()
    };
    assert_eq!(del(&plain.api).await.unwrap().status(), 403);
    let with = NodeProc::spawn_env(&[("GEECACHE_ADMIN_TOKEN", "from-the-environment")], &[]);
    assert_eq!(del(&with.api).await.unwrap().status(), 204);
}

/// `[default: X]` of each flag in `geecache node --help`.
fn help_defaults() -> HashMap<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["node", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut defaults = HashMap::new();
    let mut flag = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("--") {
            flag = rest.split([' ', '=', '<']).next().map(|f| format!("--{f}"));
        } else if let Some(d) = line.strip_prefix("[default: ")
            && let Some(f) = &flag
        {
            defaults.insert(f.clone(), d.trim_end_matches(']').to_owned());
        }
    }
    defaults
}

/// A default as docs/configuration.md writes it, as `--help` prints it (`None`: no default).
fn normalize(doc: &str) -> Option<String> {
    let d = doc.trim().trim_matches('`');
    let d = d.split(" (").next().unwrap().trim_matches('`');
    match d {
        "none" | "off" => None,
        _ => Some(match d.strip_suffix(" MiB") {
            Some(mib) => (mib.parse::<u64>().unwrap() << 20).to_string(),
            None => d.to_owned(),
        }),
    }
}

#[test]
fn the_configuration_page_quotes_each_default_as_the_code_has_it() {
    let page = std::fs::read_to_string("docs/configuration.md").unwrap();
    let help = help_defaults();
    let mut checked = 0;
    for row in page.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let flags: Vec<&str> = cells[0]
            .trim_start_matches("| ")
            .split(", ")
            .map(|f| f.trim_matches('`').split([' ', '\\']).next().unwrap())
            .collect();
        let mut defaults: Vec<&str> = cells[1].split(", ").collect();
        if defaults.len() == 1 {
            // One default said for all the flags of the row (`none`).
            defaults = vec![defaults[0]; flags.len()];
        }
        assert_eq!(flags.len(), defaults.len(), "{row}");
        for (flag, doc) in flags.iter().zip(&defaults) {
            assert_eq!(
                help.get(*flag).cloned(),
                normalize(doc),
                "{flag}: docs/configuration.md says {doc}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} defaults found");
}

#[test]
fn the_docs_quote_the_codes_limits() {
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let (api, feed) = (read("docs/api.md"), read("docs/change-feed.md"));
    let kib = |b: usize| format!("{} KiB", b / 1024);
    for (page, text, quote) in [
        (
            "api",
            &api,
            format!("over {}", kib(geecache::MAX_HEAD_BYTES)),
        ),
        (
            "api",
            &api,
            format!("key over {}", kib(geecache::group::MAX_KEY_BYTES)),
        ),
        (
            "api",
            &api,
            format!("{} exchanges per peer", geecache::peer::BATCH_IN_FLIGHT),
        ),
        (
            "change-feed",
            &feed,
            format!("at most {} rows", thousands(geecache::feed::PAGE_ROWS)),
        ),
        (
            "change-feed",
            &feed,
            format!("keys over {}", kib(geecache::group::MAX_KEY_BYTES)),
        ),
    ] {
        assert!(
            text.contains(&quote),
            "docs/{page}.md does not say {quote:?}"
        );
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
