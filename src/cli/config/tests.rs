//! The configuration's tests: defaults, the file, the flags, the environment, and what is refused.
use super::*;

fn default_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
}

#[test]
fn default_toml_is_the_built_in_defaults_and_lists_every_key() {
    let file = Config::from_file(&default_toml()).unwrap();
    assert_eq!(file, Config::default());
    // Every setting that has a value by default is spelled out (optional ones commented).
    let text = std::fs::read_to_string(default_toml()).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for (key, value) in defaults.as_object().unwrap() {
        if let Some(inner) = value.as_object() {
            for (k, v) in inner {
                let listed = table[key].as_table().unwrap().contains_key(k);
                assert!(
                    listed || v.is_null(),
                    "[{key}] {k} is not in config/default.toml"
                );
            }
        } else {
            let listed = table.contains_key(key) || text.contains(&format!("# {key} ="));
            assert!(listed, "{key} is not in config/default.toml");
        }
    }
}

#[test]
fn flags_have_variables_and_the_defaults_do_not_read_them() {
    // clap_defaults ignores GEECACHE_* variables (they would make the test above flaky).
    let with = clap::Command::new("x").no_binary_name(true);
    let args = Config::augment_args(with);
    assert!(args.get_arguments().any(|a| a.get_env().is_some()));
    assert_eq!(Config::default().cache_bytes, 64 << 20);
}

#[test]
fn unknown_keys_and_bad_durations_are_refused() {
    assert!(toml::from_str::<Config>("cache_byte = 5").is_err());
    assert!(toml::from_str::<Config>("request_timeout = \"5 parsecs\"").is_err());
    let c: Config = toml::from_str("request_timeout = \"250ms\"").unwrap();
    assert_eq!(c.request_timeout, Duration::from_millis(250));
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "cache_bytes = 2048\nvnodes = 77\npeer_secret = \"from-the-file-0123456789\"\n\
         [source]\npool_size = 3\nembedded_latency = \"7ms\"\n",
    )
    .unwrap();
    let c = node_config([
        "--config",
        file.to_str().unwrap(),
        "--vnodes",
        "99",
        "--pool-size",
        "5",
        "--embedded-latency",
        "0s",
    ])
    .unwrap();
    assert_eq!(c.cache_bytes, 2048, "from the file");
    assert_eq!(c.vnodes, 99, "a flag beats the file");
    assert_eq!(c.source.pool_size, 5, "a flag beats the file, nested");
    assert_eq!(c.source.embedded_latency, Duration::ZERO);
    assert_eq!(c.request_timeout, Duration::from_secs(5), "a default");
    assert_eq!(c.peer_secret.as_deref(), Some("from-the-file-0123456789"));
}

#[test]
fn numbers_that_make_no_node_are_refused_with_the_flag_named() {
    let refused = |args: &[&str]| {
        let mut all = vec!["--insecure-open-peer-port"];
        all.extend_from_slice(args);
        node_config(all).unwrap_err().to_string()
    };
    assert!(refused(&["--workers", "10000"]).contains("--workers 10000"));
    assert!(refused(&["--request-timeout", "0s"]).contains("--request-timeout"));
    assert!(refused(&["--statement-timeout", "0ms"]).contains("--statement-timeout"));
    assert!(refused(&["--pool-size", "0"]).contains("--pool-size"));
    assert!(refused(&["--hot-min-qps=-1"]).contains("--hot-min-qps"));
    assert!(refused(&["--hot-min-qps", "NaN"]).contains("--hot-min-qps"));
    assert!(refused(&["--pipeline", "0"]).contains("--pipeline"));
    assert!(refused(&["--pipeline", "5000"]).contains("--pipeline"));
    assert!(refused(&["--listen-backlog", "0"]).contains("--listen-backlog"));
    assert!(refused(&["--client-request-timeout", "0s"]).contains("--client-request-timeout"));
    assert!(refused(&["--keep-alive", "0s"]).contains("--keep-alive"));
    assert!(refused(&["--peer-batch", "0"]).contains("--peer-batch"));
    assert!(refused(&["--peer-batch", "65"]).contains("--peer-batch"));
    assert!(refused(&["--feed-poll", "5s"]).contains("shorter than --max-staleness"));
    assert!(refused(&["--feed-poll", "99999999999h"]).contains("--feed-poll"));
    assert!(refused(&["--feed-retention", "0s"]).contains("--feed-retention"));
    let ok = node_config(["--insecure-open-peer-port", "--workers", "256"]);
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn postgres_needs_a_url() {
    let mut c = Config {
        peer_secret: Some("0123456789abcdef".into()),
        ..Config::default()
    };
    c.source.kind = SourceKind::Postgres;
    assert!(c.validate().is_err());
    c.source.database_url = Some("postgres://localhost/x".into());
    assert!(c.validate().is_ok());
}

#[test]
fn the_peer_port_needs_a_secret_unless_told_to_run_open() {
    let e = node_config::<_, &str>([]).unwrap_err().to_string();
    assert!(
        e.contains("needs a secret") && e.contains("--insecure-open-peer-port"),
        "{e}"
    );
    let e = node_config(["--peer-secret", "short"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 16"), "{e}");
    let e = node_config(["--peer-secret", "0123456789 abcdef"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("without spaces"), "{e}");
    let both = [
        "--peer-secret",
        "0123456789abcdef",
        "--insecure-open-peer-port",
    ];
    assert!(node_config(both).is_err());
    let open = node_config(["--insecure-open-peer-port"]).unwrap();
    assert!(open.peer_secret.is_none() && open.insecure_open_peer_port);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
    let c = node_config(["--peer-secret-file", file.to_str().unwrap()]).unwrap();
    assert_eq!(c.peer_secret.as_deref(), Some("from-a-file-0123456789"));
    let missing = dir.path().join("nope");
    let e = node_config(["--peer-secret-file", missing.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read the peer secret file"), "{e}");
    let rotating = [
        "--peer-secret",
        "new-secret-0123456789",
        "--peer-secret-accept",
        "old-secret-0123456789",
    ];
    assert_eq!(
        node_config(rotating).unwrap().peer_secret_accept,
        ["old-secret-0123456789"]
    );
}

#[test]
fn bad_flags_are_refused() {
    let secret = ["--peer-secret", "0123456789abcdef"];
    let with = |more: &[&str]| {
        let args: Vec<&str> = secret.iter().chain(more).copied().collect();
        node_config(args)
    };
    assert!(with(&["--request-timeout", "soon"]).is_err());
    assert!(with(&["--source", "mysql"]).is_err());
    // Peers without knowing which one is me cannot route.
    assert!(with(&["--peers", "http://a:8001"]).is_err());
    assert!(with(&["--vnodes", "0"]).is_err());
    let c = with(&[
        "--peers",
        "http://a:8001,http://b:8001",
        "--self",
        "http://a:8001",
    ])
    .unwrap();
    assert_eq!(c.peers, ["http://a:8001", "http://b:8001"]);
}

#[test]
fn an_aws_seed_says_which_feature_it_needs() {
    let seeds = ["cloudmap://geecache.local/nodes:8001".to_owned()];
    let e = check_aws_seeds(&seeds, false).unwrap_err().to_string();
    assert!(
        e.contains("--features aws") && e.contains("cloudmap://"),
        "{e}"
    );
    assert!(check_aws_seeds(&seeds, true).is_ok());
    let plain = [
        "http://10.0.0.1:8001".to_owned(),
        "dns://nodes:8001".to_owned(),
    ];
    assert!(check_aws_seeds(&plain, false).is_ok());
    // The build under test says what it is.
    let r = node_config([
        "--peer-secret",
        "0123456789abcdef",
        "--self",
        "http://10.0.0.1:8001",
        "--seeds",
        &seeds[0],
    ]);
    assert_eq!(r.is_ok(), cfg!(feature = "aws"), "{r:?}");
}
