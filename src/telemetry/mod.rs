//! What a node tells its operators: Prometheus metrics ([`metrics`]) and CloudWatch Embedded
//! Metric Format lines ([`emf`]).

pub mod emf;
pub mod limit;
pub mod metrics;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

/// Prints one EMF line per interval with what happened in it (`--emf`).
pub async fn emit_emf(metrics: PrometheusHandle, every: Duration) {
    let mut before = emf::Snapshot::parse(&metrics.render());
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        metrics.run_upkeep();
        let now = emf::Snapshot::parse(&metrics.render());
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        println!("{}", emf::line(&before, &now, ms));
        before = now;
    }
}

/// How a node writes its logs (`--log-format`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        }
    }
}

/// The log filter when `RUST_LOG` is not set: this crate's INFO, the libraries' (raft-rs,
/// actix) warnings only.
pub const DEFAULT_LOG_FILTER: &str = "warn,geecache=info";

/// Logs on stdout, as `--log-format` says; `RUST_LOG` filters (default [`DEFAULT_LOG_FILTER`]).
/// Colours only on a terminal.
pub fn init_logs(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
