//! The overview's figures and its chart. A sampler thread (`gancho-dashboard`) reads, every
//! [`EVERY`], the counters the daemon already keeps for `/metrics` (events stored per source,
//! deliveries, rule errors: read from the Prometheus exposition, so the page and a scrape
//! never disagree), and keeps the last hour of samples in memory. The read gauges (lags,
//! queues, store size) walk records, so it reads them only while someone looked at the
//! overview in the last [`GAUGES_WHILE_VIEWED`]. The page computes rates from the samples:
//! nothing here walks the store per request, however many browsers keep the overview open.
//! The history starts with the daemon: after a restart the chart fills in again.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use gancho_core::{Channel, Clock};
use maud::{Markup, html};

use super::layout::time_el;
use crate::metrics::{Gauges, channel_index};

/// How often the sampler samples.
pub const EVERY: Duration = Duration::from_secs(5);
/// Samples kept: an hour's, and one more to take differences from.
const KEPT: usize = 3600 / 5 + 1;
/// Rates are taken over at least this much of the history (two samples).
const RATE_OVER_MS: i64 = 10_000;
/// The gauges are read while the overview was looked at within this long.
pub const GAUGES_WHILE_VIEWED: Duration = Duration::from_secs(60);

/// One reading of the counters and gauges.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// When it was read: the wall clock (shown), and a monotonic clock in ms (rates and the
    /// chart's intervals: a step of the wall clock does not distort them).
    pub at_ms: i64,
    pub mono_ms: i64,
    /// Events stored, ever, by source.
    pub received: BTreeMap<String, u64>,
    /// Actions delivered, ever.
    pub delivered: u64,
    /// Failed rule runs, ever.
    pub rule_errors: u64,
    pub gauges: Gauges,
    /// When the gauges were read (they are kept from an earlier sample while nobody looks);
    /// `None`: never.
    pub gauges_at_ms: Option<i64>,
}

/// The last hour of samples.
#[derive(Debug, Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
    /// When the overview was last looked at.
    viewed: Mutex<Option<std::time::Instant>>,
}

impl Series {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.lock();
        if samples.len() >= KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// A copy of the samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().iter().cloned().collect()
    }

    /// Notes that the overview is being looked at: the gauges are read from now on.
    pub fn viewed(&self) {
        *self.viewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    fn recently_viewed(&self) -> bool {
        self.viewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < GAUGES_WHILE_VIEWED)
    }

    fn last(&self) -> Option<Sample> {
        self.lock().back().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the sampler reads from.
pub struct Sources {
    pub data: crate::data::Data,
    pub engine: gancho_engine::SharedStatus,
    pub store_dir: std::path::PathBuf,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Starts the sampler thread: it samples at once, then every [`EVERY`], until `series` is
/// dropped (the admin server is gone).
pub fn start_sampler(series: &Arc<Series>, sources: Sources) -> std::io::Result<()> {
    let weak: Weak<Series> = Arc::downgrade(series);
    std::thread::Builder::new()
        .name("gancho-dashboard".to_owned())
        .spawn(move || {
            let start = std::time::Instant::now();
            loop {
                let Some(series) = weak.upgrade() else { return };
                let last = series.last();
                let read_gauges = series.recently_viewed() || last.is_none();
                series.push(sample(&sources, start, last, read_gauges));
                drop(series);
                std::thread::sleep(EVERY);
            }
        })
        .map(drop)
}

/// Reads one sample: the counters, and the gauges if `read_gauges` (else those of `last`). A
/// gauge that cannot be read is reported as a failed store, with the last figures kept.
fn sample(
    sources: &Sources,
    start: std::time::Instant,
    last: Option<Sample>,
    read_gauges: bool,
) -> Sample {
    let at_ms = gancho_core::SystemClock.now().timestamp_millis();
    let (mut gauges, mut gauges_at_ms) =
        last.map(|s| (s.gauges, s.gauges_at_ms)).unwrap_or_default();
    if read_gauges {
        let cursor = sources
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cursor;
        match crate::metrics::read_gauges(&sources.data, &sources.store_dir, cursor) {
            Ok(read) => (gauges, gauges_at_ms) = (read, Some(at_ms)),
            Err(err) => {
                tracing::warn!(error = %err, "dashboard: reading the gauges");
                gauges.failed = true;
            }
        }
    }
    sources.metrics.run_upkeep();
    let text = sources.metrics.render();
    let mut sample = Sample {
        at_ms,
        mono_ms: i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX),
        gauges,
        gauges_at_ms,
        ..Sample::default()
    };
    for (name, labels, value) in exposition(&text) {
        match name {
            "gancho_events_received_total" => {
                if let Some(source) = label(labels, "source") {
                    *sample.received.entry(source).or_default() += value;
                }
            }
            "gancho_deliveries_total"
                if label(labels, "outcome").as_deref() == Some("delivered") =>
            {
                sample.delivered += value;
            }
            "gancho_rule_errors_total" => sample.rule_errors += value,
            _ => {}
        }
    }
    sample
}

/// The samples of the Prometheus text exposition `text`: name, labels (between the braces)
/// and value (as a whole number: these are counters).
fn exposition(text: &str) -> impl Iterator<Item = (&str, &str, u64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            Some((name, labels, value.max(0.0) as u64))
        })
}

/// The value of label `name` in `labels` (`a="x",b="y"`), unescaped.
fn label(labels: &str, name: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        if key.trim_start_matches(',') == name {
            return Some(value);
        }
        rest = after.get(end..)?.trim_start_matches(',');
    }
    None
}

/// The figures the overview shows, from the samples.
#[derive(Debug, Default)]
pub struct Figures {
    /// Events/s per source, over the last [`RATE_OVER_MS`] or more.
    pub rates: Vec<(String, f64)>,
    pub deliveries_per_s: f64,
    /// Rule errors in the last hour (since the daemon started, if it is younger).
    pub rule_errors_hour: u64,
    pub gauges: Gauges,
    /// Events/s and deliveries/s per sample interval, oldest first: (monotonic ms, events,
    /// deliveries).
    pub chart: Vec<(i64, f64, f64)>,
    /// When the last sample was read, and its gauges (wall clock, ms).
    pub at_ms: Option<i64>,
    pub gauges_at_ms: Option<i64>,
}

impl Figures {
    pub fn from_samples(samples: &[Sample]) -> Figures {
        let Some(last) = samples.last() else {
            return Figures::default();
        };
        let total = |s: &Sample| s.received.values().sum::<u64>();
        let back = samples
            .iter()
            .rev()
            .find(|s| last.mono_ms - s.mono_ms >= RATE_OVER_MS)
            .or(samples.first());
        let (mut rates, mut deliveries_per_s) = (Vec::new(), 0.0);
        if let Some(back) = back.filter(|b| b.mono_ms < last.mono_ms) {
            let seconds = (last.mono_ms - back.mono_ms) as f64 / 1000.0;
            for (source, now) in &last.received {
                let before = back.received.get(source).copied().unwrap_or(0);
                rates.push((source.clone(), now.saturating_sub(before) as f64 / seconds));
            }
            deliveries_per_s = last.delivered.saturating_sub(back.delivered) as f64 / seconds;
        }
        let hour_ago = samples
            .iter()
            .find(|s| last.mono_ms - s.mono_ms <= 3_600_000)
            .unwrap_or(last);
        let chart = samples
            .windows(2)
            .filter_map(|w| {
                let seconds = (w[1].mono_ms - w[0].mono_ms) as f64 / 1000.0;
                (seconds > 0.0).then(|| {
                    (
                        w[1].mono_ms,
                        total(&w[1]).saturating_sub(total(&w[0])) as f64 / seconds,
                        w[1].delivered.saturating_sub(w[0].delivered) as f64 / seconds,
                    )
                })
            })
            .collect();
        Figures {
            rates,
            deliveries_per_s,
            rule_errors_hour: last.rule_errors.saturating_sub(hour_ago.rule_errors),
            gauges: last.gauges.clone(),
            chart,
            at_ms: Some(last.at_ms),
            gauges_at_ms: last.gauges_at_ms,
        }
    }
}

/// The figures and the chart: the part of the overview that refreshes itself.
pub fn figures(figures: &Figures) -> Markup {
    let g = &figures.gauges;
    let dead: u64 = g.dead.iter().sum();
    let store: u64 = g.store_bytes.iter().map(|(_, b)| b).sum();
    html! {
        @match (figures.at_ms, figures.gauges_at_ms) {
            (None, _) | (_, None) => {
                p.empty { "The first figures are read within " (EVERY.as_secs()) " seconds." }
            }
            (Some(at), Some(gauges_at)) => {
                p.asof { "As of " (time_el(at)) "; the pipeline's figures as of " (time_el(gauges_at)) "." }
            }
        }
        section aria-labelledby="ingest-h" {
            h2 #ingest-h { "Events" }
            table {
                caption { "Events stored per second, by source" }
                thead { tr { th scope="col" { "Source" } th scope="col" .num { "Events/s" } } }
                tbody {
                    @for (source, rate) in &figures.rates {
                        tr { th scope="row" { (source) } td.num data-figure={ "events-" (source) } { (format!("{rate:.1}")) } }
                    }
                    @if figures.rates.is_empty() {
                        tr { td colspan="2" { "No events stored since the daemon started." } }
                    }
                }
            }
        }
        section aria-labelledby="state-h" {
            h2 #state-h { "Pipeline" }
            dl.figures {
                div { dt { "Index lag" } dd data-figure="index-lag" { (g.index_lag) " events" } }
                div { dt { "Engine lag" } dd data-figure="engine-lag" { (g.engine_lag) " events" } }
                @for channel in Channel::ALL {
                    div {
                        dt { "Outbox, " (channel.as_str()) }
                        dd data-figure={ "outbox-" (channel.as_str()) } { (g.pending[channel_index(channel)]) }
                    }
                }
                div { dt { "Dead letters" } dd data-figure="dead" { a href="/dead" { (dead) } } }
                div { dt { "Rule errors, last hour" } dd data-figure="rule-errors" { a href="/rules" { (figures.rule_errors_hour) } } }
                div { dt { "Deliveries/s" } dd data-figure="deliveries" { (format!("{:.1}", figures.deliveries_per_s)) } }
                div { dt { "Store size" } dd data-figure="store-bytes" { (bytes(store)) } }
                @if g.failed {
                    div.bad { dt { "Store" } dd { "failed: see /healthz" } }
                }
            }
        }
        section aria-labelledby="chart-h" {
            h2 #chart-h { "Last hour" }
            (chart(&figures.chart))
        }
    }
}

/// Bytes as operators read them.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Events/s and deliveries/s over the last hour, as an SVG drawn here (no script, no library).
fn chart(points: &[(i64, f64, f64)]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const PAD: f64 = 4.0;
    let (Some(&(first, _, _)), Some(&(now, _, _))) = (points.first(), points.last()) else {
        return html! { p.empty { "The chart starts after two samples." } };
    };
    // The last hour, or since the daemon started when that is less; at least a minute wide.
    let from = first.max(now - 3_600_000).min(now - 60_000);
    let span = (now - from) as f64;
    let minutes = match (now - from + 59_999) / 60_000 {
        1 => "1 minute".to_owned(),
        n => format!("{n} minutes"),
    };
    let top = points
        .iter()
        .map(|&(_, e, d)| e.max(d))
        .fold(1.0_f64, f64::max);
    let line = |pick: fn(&(i64, f64, f64)) -> f64| {
        let mut out = String::new();
        for point in points.iter().filter(|p| p.0 >= from) {
            let x = (point.0 - from) as f64 / span * W;
            let y = H - PAD - pick(point) / top * (H - 2.0 * PAD);
            let _ = write!(out, "{x:.1},{y:.1} ");
        }
        out
    };
    let events = line(|p| p.1);
    let deliveries = line(|p| p.2);
    let summary = format!(
        "Events per second (top of the chart: {top:.1}/s) and deliveries per second over the last {minutes}; now: {:.1} events/s, {:.1} deliveries/s.",
        points.last().map_or(0.0, |p| p.1),
        points.last().map_or(0.0, |p| p.2),
    );
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-labelledby="chart-title chart-desc" preserveAspectRatio="none" {
                title #chart-title { "Events and deliveries per second, last hour" }
                desc #chart-desc { (summary) }
                line x1="0" y1=(H - PAD) x2=(W) y2=(H - PAD) class="axis" {}
                polyline class="events" fill="none" points=(events) {}
                polyline class="deliveries" fill="none" points=(deliveries) {}
            }
            figcaption {
                span.key.events { "Events/s" } " "
                span.key.deliveries { "Deliveries/s" }
                " · top: " (format!("{top:.1}")) "/s · from " (minutes) " ago to now"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_the_exposition() {
        let text = "# HELP x\n# TYPE gancho_events_received_total counter\n\
            gancho_events_received_total{source=\"mailjet\"} 12\n\
            gancho_events_received_total{source=\"a\\\"b\"} 3\n\
            gancho_deliveries_total{channel=\"email\",outcome=\"delivered\"} 5\n\
            gancho_deliveries_total{channel=\"email\",outcome=\"dead\"} 2\n\
            gancho_rule_errors_total{rule=\"x\"} 4\n\
            gancho_rule_errors_total{rule=\"y\"} 1\n";
        let samples: Vec<_> = exposition(text).collect();
        assert_eq!(samples.len(), 6);
        assert_eq!(label(samples[1].1, "source").as_deref(), Some("a\"b"));
        assert_eq!(label(samples[2].1, "outcome").as_deref(), Some("delivered"));
        assert_eq!(label(samples[2].1, "channel").as_deref(), Some("email"));
        assert_eq!(label(samples[2].1, "rule"), None);
    }

    fn at(ms: i64, mailjet: u64, delivered: u64, errors: u64) -> Sample {
        Sample {
            at_ms: ms,
            mono_ms: ms,
            gauges_at_ms: Some(ms),
            received: [("mailjet".to_owned(), mailjet)].into(),
            delivered,
            rule_errors: errors,
            gauges: Gauges::default(),
        }
    }

    #[test]
    fn rates_come_from_ten_seconds_back_and_errors_from_an_hour_back() {
        let samples: Vec<_> = (0..=800)
            .map(|i| at(i * 5_000, (i * 50) as u64, i as u64, i as u64 / 10))
            .collect();
        let figures = Figures::from_samples(&samples);
        assert_eq!(figures.rates, vec![("mailjet".to_owned(), 10.0)]);
        assert!((figures.deliveries_per_s - 0.2).abs() < 1e-9);
        // 720 samples an hour: 72 errors in it.
        assert_eq!(figures.rule_errors_hour, 72);
        assert_eq!(figures.chart.len(), 800);
        assert!(
            figures
                .chart
                .iter()
                .all(|&(_, e, _)| (e - 10.0).abs() < 1e-9)
        );
    }

    #[test]
    fn no_samples_or_one_give_no_rates() {
        assert!(Figures::from_samples(&[]).at_ms.is_none());
        let one = Figures::from_samples(&[at(1_000, 5, 0, 0)]);
        assert!(one.rates.is_empty() && one.chart.is_empty());
    }

    #[test]
    fn the_series_keeps_an_hour() {
        let series = Series::default();
        for i in 0..(KEPT as i64 + 10) {
            series.push(at(i, 0, 0, 0));
        }
        let samples = series.samples();
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples[0].at_ms, 10);
    }

    #[test]
    fn sizes_read_as_operators_read_them() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
