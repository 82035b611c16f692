//! A run's figures: histograms from the samples, the cluster's counters between scrapes, the
//! terminal table, JSON and SVG plots.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::client::{Sample, status_name};
use crate::scrape::{Snapshot, between};

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// The cluster's view of the run, from the nodes' counters.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterFigures {
    pub gets: f64,
    pub db_queries: f64,
    /// Share of client gets that did not reach the database: 1 - db_queries / gets.
    pub hit_rate: Option<f64>,
    pub db_qps: f64,
    pub peer_errors: f64,
    /// Each scraped node's share of the client gets, in the order of `--metrics`.
    pub per_node_share: Vec<f64>,
}

/// One second of the run, client side.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    pub requests: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// One scrape interval, cluster side; `t` is the interval's end.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub t: f64,
    pub gets_per_s: f64,
    pub db_qps: f64,
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub label: String,
    pub t: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub pace: String,
    pub keys: String,
    pub targets: Vec<String>,
    pub duration_s: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    /// 2xx answers.
    pub ok: u64,
    /// 404: the key has no row (a correct answer).
    pub not_found: u64,
    /// Everything else: other statuses and transport errors.
    pub failed: u64,
    pub statuses: BTreeMap<String, u64>,
    /// From when each request was due (open loop: corrected for coordinated omission).
    pub latency_ms: Percentiles,
    /// From when each request was sent.
    pub service_ms: Percentiles,
    pub per_target_share: Vec<f64>,
    pub cluster: Option<ClusterFigures>,
    pub timeline: Vec<Second>,
    pub cluster_timeline: Vec<Interval>,
    pub events: Vec<Event>,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, sigfig).expect("static bounds")
}

pub struct Inputs<'a> {
    pub title: String,
    pub pace: String,
    pub keys: String,
    pub targets: Vec<String>,
    pub duration_s: f64,
    pub samples: &'a [Sample],
    pub snapshots: &'a [Snapshot],
    /// When the run started, to place snapshots on its time axis.
    pub t0: std::time::Instant,
    pub events: Vec<Event>,
}

pub fn build(i: Inputs) -> Report {
    let mut all = histogram(3);
    let mut service = histogram(3);
    let mut statuses = BTreeMap::new();
    let mut per_target = vec![0u64; i.targets.len()];
    let mut seconds: BTreeMap<u32, (Histogram<u64>, u64)> = BTreeMap::new();
    let (mut ok, mut not_found, mut failures) = (0, 0, 0);
    for s in i.samples {
        let lat = u64::from(s.latency_us.max(1));
        all.saturating_record(lat);
        service.saturating_record(u64::from(s.service_us.max(1)));
        if let Some(n) = per_target.get_mut(s.target as usize) {
            *n += 1;
        }
        let sec = seconds
            .entry(s.due_ms / 1000)
            .or_insert_with(|| (histogram(2), 0));
        sec.0.saturating_record(lat);
        match s.status {
            200..=299 => ok += 1,
            404 => not_found += 1,
            other => {
                failures += 1;
                sec.1 += 1;
                *statuses.entry(status_name(other)).or_insert(0) += 1;
            }
        }
    }
    if not_found > 0 {
        statuses.insert("404".into(), not_found);
    }
    let requests = i.samples.len() as u64;
    let timeline = seconds
        .into_iter()
        .map(|(t, (h, failed))| {
            let p = Percentiles::of(&h);
            Second {
                t,
                requests: h.len(),
                failed,
                p50_ms: p.p50,
                p99_ms: p.p99,
                p999_ms: p.p999,
            }
        })
        .collect();

    let rel = |s: &Snapshot| s.at.saturating_duration_since(i.t0).as_secs_f64();
    let cluster_timeline = i
        .snapshots
        .windows(2)
        .map(|w| {
            let (c, _) = between(&w[0], &w[1]);
            let dt = (rel(&w[1]) - rel(&w[0])).max(1e-3);
            Interval {
                t: rel(&w[1]),
                gets_per_s: c.gets / dt,
                db_qps: c.db_queries / dt,
                hit_rate: (c.gets > 0.0).then(|| 1.0 - (c.db_queries / c.gets).min(1.0)),
            }
        })
        .collect();
    let cluster = match (i.snapshots.first(), i.snapshots.last()) {
        (Some(a), Some(b)) if i.snapshots.len() >= 2 => {
            let (c, per_node) = between(a, b);
            let span = (rel(b) - rel(a)).max(1e-3);
            Some(ClusterFigures {
                gets: c.gets,
                db_queries: c.db_queries,
                hit_rate: (c.gets > 0.0).then(|| 1.0 - (c.db_queries / c.gets).min(1.0)),
                db_qps: c.db_queries / span,
                peer_errors: c.peer_errors,
                per_node_share: per_node
                    .iter()
                    .map(|n| if c.gets > 0.0 { n.gets / c.gets } else { 0.0 })
                    .collect(),
            })
        }
        _ => None,
    };
    Report {
        title: i.title,
        pace: i.pace,
        keys: i.keys,
        targets: i.targets,
        duration_s: i.duration_s,
        requests,
        throughput_rps: requests as f64 / i.duration_s.max(1e-9),
        ok,
        not_found,
        failed: failures,
        statuses,
        latency_ms: Percentiles::of(&all),
        service_ms: Percentiles::of(&service),
        per_target_share: per_target
            .iter()
            .map(|&n| n as f64 / requests.max(1) as f64)
            .collect(),
        cluster,
        timeline,
        cluster_timeline,
        events: i.events,
    }
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// The terminal table.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{}\n  {}, keys {}, {} target(s), {:.1} s\n",
        r.title,
        r.pace,
        r.keys,
        r.targets.len(),
        r.duration_s
    );
    let errors: Vec<String> = r
        .statuses
        .iter()
        .filter(|(k, _)| k.as_str() != "404")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out += &format!(
        "  requests   {} ({} req/s)   ok {}   404 {}   failed {}{}\n",
        thousands(r.requests as f64),
        thousands(r.throughput_rps),
        thousands(r.ok as f64),
        thousands(r.not_found as f64),
        thousands(r.failed as f64),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join(", "))
        }
    );
    let p = |name: &str, p: &Percentiles| {
        format!(
            "  {name:<10} p50 {:.3}   p90 {:.3}   p99 {:.3}   p99.9 {:.3}   max {:.3}   (ms)\n",
            p.p50, p.p90, p.p99, p.p999, p.max
        )
    };
    out += &p("latency", &r.latency_ms);
    if r.pace.starts_with("open") {
        out += &p("service", &r.service_ms);
    }
    if let Some(c) = &r.cluster {
        let shares: Vec<String> = c
            .per_node_share
            .iter()
            .map(|s| format!("{:.0}", s * 100.0))
            .collect();
        out += &format!(
            "  cluster    hit rate {}   db {} queries ({:.0}/s)   peer errors {}   per-node gets % {}\n",
            c.hit_rate
                .map_or("-".into(), |h| format!("{:.2} %", h * 100.0)),
            thousands(c.db_queries),
            c.db_qps,
            thousands(c.peer_errors),
            shares.join(" / ")
        );
    }
    out
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// `PREFIX-latency.svg` (percentiles and failures per second) and, with scrapes,
/// `PREFIX-cluster.svg` (hit rate and database queries per interval).
pub fn plots(r: &Report, prefix: &Path) -> PlotResult {
    let end = r.duration_s.max(1.0);
    let name = |suffix: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    {
        let path = name("-latency.svg");
        let root = SVGBackend::new(&path, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let top = r.timeline.iter().map(|s| s.p999_ms).fold(1.0f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: latency per second", r.title),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, (0.01f64..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms (log)")
            .draw()?;
        for (label, color, pick) in [
            ("p50", BLUE, (|s: &Second| s.p50_ms) as fn(&Second) -> f64),
            ("p99", RED, |s| s.p99_ms),
            ("p99.9", MAGENTA, |s| s.p999_ms),
        ] {
            chart
                .draw_series(LineSeries::new(
                    r.timeline
                        .iter()
                        .map(|s| (f64::from(s.t) + 0.5, pick(s).max(0.01))),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        let failing: Vec<_> = r.timeline.iter().filter(|s| s.failed > 0).collect();
        if !failing.is_empty() {
            chart
                .draw_series(failing.iter().map(|s| {
                    Cross::new((f64::from(s.t) + 0.5, top / 1.2), 6, BLACK.stroke_width(2))
                }))?
                .label("a second with failed requests")
                .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK));
        }
        draw_events(&mut chart, &r.events, 0.01, top)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    if r.cluster_timeline.is_empty() {
        return Ok(());
    }
    let path = name("-cluster.svg");
    let root = SVGBackend::new(&path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(320);
    let rates: Vec<(f64, f64)> = r
        .cluster_timeline
        .iter()
        .filter_map(|i| Some((i.t, i.hit_rate? * 100.0)))
        .collect();
    let low = rates.iter().map(|p| p.1).fold(100.0f64, f64::min);
    let floor = (low - 5.0).clamp(0.0, 95.0).floor();
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!(
                "{}: cluster hit rate (gets not reaching the database)",
                r.title
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, floor..100.5)?;
    chart.configure_mesh().y_desc("hit rate %").draw()?;
    chart.draw_series(LineSeries::new(rates, GREEN.stroke_width(2)))?;
    draw_events(&mut chart, &r.events, floor, 100.5)?;
    let top = r
        .cluster_timeline
        .iter()
        .map(|i| i.db_qps)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&lower)
        .caption("database queries per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("queries/s")
        .draw()?;
    chart.draw_series(LineSeries::new(
        r.cluster_timeline.iter().map(|i| (i.t, i.db_qps)),
        RED.stroke_width(2),
    ))?;
    draw_events(&mut chart, &r.events, 0.0, top)?;
    root.present()?;
    Ok(())
}

fn draw_events<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    events: &[Event],
    low: f64,
    high: f64,
) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    // Events closer than 1.5 s share one label ("a, b +0.1 s") instead of overprinting.
    let mut labels: Vec<(f64, String)> = Vec::new();
    for e in events {
        chart.draw_series(LineSeries::new(
            [(e.t, low), (e.t, high)],
            BLACK.mix(0.5).stroke_width(1),
        ))?;
        match labels.last_mut() {
            Some((t, text)) if e.t - *t < 1.5 => {
                text.push_str(&format!(", {} +{:.1} s", e.label, e.t - *t))
            }
            _ => labels.push((e.t, e.label.clone())),
        }
    }
    for (t, text) in labels {
        chart.draw_series(std::iter::once(Text::new(
            text,
            (t, high),
            ("sans-serif", 13).into_font().color(&BLACK),
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(due_ms: u32, latency_us: u32, status: u16) -> Sample {
        Sample {
            due_ms,
            latency_us,
            service_us: latency_us / 2,
            target: (due_ms % 2) as u16,
            status,
        }
    }

    #[test]
    fn figures_from_samples() {
        let mut samples: Vec<Sample> = (0..1000).map(|i| sample(i, 1000 + i, 200)).collect();
        samples.push(sample(1500, 50_000, 503));
        samples.push(sample(1600, 10, crate::client::CONNECT_ERROR));
        samples.push(sample(1700, 10, 404));
        let t0 = std::time::Instant::now();
        let r = build(Inputs {
            title: "t".into(),
            pace: "closed".into(),
            keys: "hot:x".into(),
            targets: vec!["a".into(), "b".into()],
            duration_s: 2.0,
            samples: &samples,
            snapshots: &[],
            t0,
            events: vec![],
        });
        assert_eq!(
            (r.requests, r.ok, r.not_found, r.failed),
            (1003, 1000, 1, 2)
        );
        assert_eq!(r.statuses["503"], 1);
        assert_eq!(r.statuses["connect_error"], 1);
        assert!((r.latency_ms.p50 - 1.5).abs() < 0.01, "{:?}", r.latency_ms);
        assert!(r.latency_ms.max >= 49.9);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline[1].failed, 2);
        assert!(r.cluster.is_none());
        assert!(table(&r).contains("failed 2 (503 1, connect_error 1)"));
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
