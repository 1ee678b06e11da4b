//! `--metrics ADDR:PORT`: Prometheus metrics on `/metrics` and a health check
//! on `/healthz`.
//!
//! Counters and the duration histogram are updated where things happen
//! (a build stored, an upload failing, an observer skipping lines). Gauges
//! (queues, workers, spool, observers) are read from the server's state at
//! each scrape, so they can never drift from what `info` shows: the server
//! hands [`serve`] a [`Source`], which fills a [`Snapshot`]. This module
//! knows nothing else of the server's state.
//!
//! `/healthz` answers 200 while the state database answers a trivial query,
//! 503 otherwise ([`Source::health`]).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use protocol::message::{JobOutcome, Timestamp};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The gauges' values at one scrape, read from the server's state.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Builds waiting, by platform: `(platform, length)`.
    pub queues: Vec<(String, usize)>,
    /// Connected workers: `(platform, running a build)`, one per worker.
    pub workers: Vec<(String, bool)>,
    /// Records waiting for delivery to builder-web.
    pub upload_spool_depth: u64,
    /// When the oldest of them was stored, if any waits.
    pub upload_oldest_pending: Option<Timestamp>,
    /// Clients following a running build.
    pub observers: usize,
    /// State database transactions committed since the start.
    pub db_commits: u64,
}

/// What `/metrics` and `/healthz` read: the server's counters and a way to
/// take a [`Snapshot`] of its state.
pub trait Source: Send + Sync + 'static {
    /// The counters, kept where things happen.
    fn metrics(&self) -> &Metrics;
    /// The gauges, read now.
    fn snapshot(&self) -> impl Future<Output = anyhow::Result<Snapshot>> + Send;
    /// `Ok` while the state database answers; `Err` says why not.
    fn health(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Label of per-platform metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabel {
    platform: String,
}

/// Labels of finished builds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    platform: String,
    result: &'static str,
}

/// Label of upload failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    queue_length: Family<PlatformLabel, Gauge>,
    workers_connected: Family<PlatformLabel, Gauge>,
    workers_busy: Family<PlatformLabel, Gauge>,
    builds_finished: Family<BuildLabels, Counter>,
    build_duration: Histogram,
    upload_spool_depth: Gauge,
    upload_oldest_pending: Gauge<f64, AtomicU64>,
    upload_failures: Family<KindLabel, Counter>,
    observers: Gauge,
    observer_lines_dropped: Counter,
    db_commits: Counter,
    /// One scrape at a time: a scrape clears and refills the gauges.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let queue_length = Family::<PlatformLabel, Gauge>::default();
        let workers_connected = Family::<PlatformLabel, Gauge>::default();
        let workers_busy = Family::<PlatformLabel, Gauge>::default();
        let builds_finished = Family::<BuildLabels, Counter>::default();
        // 1 s .. about 9 h.
        let build_duration = Histogram::new(exponential_buckets(1.0, 2.0, 16));
        let upload_spool_depth = Gauge::default();
        let upload_oldest_pending = Gauge::<f64, AtomicU64>::default();
        let upload_failures = Family::<KindLabel, Counter>::default();
        let observers = Gauge::default();
        let observer_lines_dropped = Counter::default();
        let db_commits = Counter::default();

        let mut registry = Registry::with_prefix("builder");
        let r = &mut registry;
        r.register(
            "queue_length",
            "Builds waiting in a platform's queue",
            queue_length.clone(),
        );
        r.register(
            "workers_connected",
            "Workers connected, by platform",
            workers_connected.clone(),
        );
        r.register(
            "workers_busy",
            "Workers running a build, by platform",
            workers_busy.clone(),
        );
        r.register(
            "builds_finished",
            "Builds stored, by platform and result (success, failure, signalled, stopped, aborted)",
            builds_finished.clone(),
        );
        r.register(
            "build_duration_seconds",
            "Time from a build's start to its end",
            build_duration.clone(),
        );
        r.register(
            "upload_spool_depth",
            "Build records waiting for delivery to builder-web",
            upload_spool_depth.clone(),
        );
        r.register(
            "upload_oldest_pending_seconds",
            "Age of the oldest record waiting for delivery (0 when none waits)",
            upload_oldest_pending.clone(),
        );
        r.register(
            "upload_failures",
            "Failed upload attempts, by kind (store: builder-web unavailable, credentials: refused, record: this record refused)",
            upload_failures.clone(),
        );
        r.register(
            "observers_connected",
            "Clients following a running build",
            observers.clone(),
        );
        r.register(
            "observer_lines_dropped",
            "Console lines skipped for observers too slow to keep up",
            observer_lines_dropped.clone(),
        );
        r.register(
            "db_commits",
            "State database transactions committed (each holds one or more changes: group commit)",
            db_commits.clone(),
        );
        Metrics {
            registry,
            queue_length,
            workers_connected,
            workers_busy,
            builds_finished,
            build_duration,
            upload_spool_depth,
            upload_oldest_pending,
            upload_failures,
            observers,
            observer_lines_dropped,
            db_commits,
            scrape: Mutex::new(()),
        }
    }
}

/// The `result` label of an outcome.
fn result_label(outcome: &JobOutcome) -> &'static str {
    match outcome {
        JobOutcome::Exited(0) => "success",
        JobOutcome::Exited(_) => "failure",
        JobOutcome::Signalled(_) => "signalled",
        JobOutcome::Stopped(_) => "stopped",
        JobOutcome::Aborted(_) => "aborted",
    }
}

impl Metrics {
    /// A build was stored.
    pub fn build_finished(
        &self,
        platform: &str,
        outcome: &JobOutcome,
        started: Timestamp,
        finished: Timestamp,
    ) {
        self.builds_finished
            .get_or_create(&BuildLabels {
                platform: platform.to_owned(),
                result: result_label(outcome),
            })
            .inc();
        self.build_duration
            .observe(finished.since(started).as_secs_f64());
    }

    /// An upload attempt failed; `kind` is `store`, `credentials` or `record`.
    pub fn upload_failed(&self, kind: &'static str) {
        self.upload_failures
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// An observer skipped `lines` console lines.
    pub fn lines_dropped(&self, lines: u64) {
        self.observer_lines_dropped.inc_by(lines);
    }

    /// Sets the gauges from `snapshot` and encodes everything in the
    /// Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot) -> anyhow::Result<String> {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.db_commits
            .inc_by(snapshot.db_commits.saturating_sub(self.db_commits.get()));

        self.queue_length.clear();
        for (platform, length) in &snapshot.queues {
            self.queue_length
                .get_or_create(&PlatformLabel {
                    platform: platform.clone(),
                })
                .set(*length as i64);
        }
        self.workers_connected.clear();
        self.workers_busy.clear();
        for (platform, running) in &snapshot.workers {
            let label = PlatformLabel {
                platform: platform.clone(),
            };
            self.workers_connected.get_or_create(&label).inc();
            let busy = self.workers_busy.get_or_create(&label);
            if *running {
                busy.inc();
            }
        }
        self.upload_spool_depth
            .set(snapshot.upload_spool_depth as i64);
        self.upload_oldest_pending.set(
            snapshot
                .upload_oldest_pending
                .map_or(0.0, |t| Timestamp::now().since(t).as_secs_f64()),
        );
        self.observers.set(snapshot.observers as i64);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .context("encoding the metrics")?;
        Ok(text)
    }
}

/// Serves `/metrics` and `/healthz` on `listener`, from `source`, until
/// `stop` is cancelled.
pub async fn serve<S: Source>(source: Arc<S>, listener: TcpListener, stop: CancellationToken) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz::<S>))
        .with_state(source);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = ?protocol::Chain(&e), "metrics endpoint failed");
    }
}

/// One scrape: the snapshot, then the text.
async fn scrape<S: Source>(source: &S) -> anyhow::Result<String> {
    let snapshot = source.snapshot().await?;
    source.metrics().render(&snapshot)
}

pub(crate) async fn metrics<S: Source>(State(source): State<Arc<S>>) -> axum::response::Response {
    match scrape(&*source).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = ?protocol::Chain(&*e), "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
        }
    }
}

pub(crate) async fn healthz<S: Source>(State(source): State<Arc<S>>) -> (StatusCode, String) {
    match source.health().await {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        text
    }

    #[test]
    fn gauges_are_what_the_snapshot_says() {
        let m = Metrics::default();
        let snapshot = Snapshot {
            queues: vec![("p".into(), 3), ("q".into(), 0)],
            workers: vec![("p".into(), true), ("p".into(), false), ("q".into(), false)],
            upload_spool_depth: 4,
            upload_oldest_pending: None,
            observers: 2,
            db_commits: 9,
        };
        let text = m.render(&snapshot).unwrap();
        for line in [
            r#"builder_queue_length{platform="p"} 3"#,
            r#"builder_queue_length{platform="q"} 0"#,
            r#"builder_workers_connected{platform="p"} 2"#,
            r#"builder_workers_busy{platform="p"} 1"#,
            r#"builder_workers_busy{platform="q"} 0"#,
            "builder_upload_spool_depth 4",
            "builder_upload_oldest_pending_seconds 0.0",
            "builder_observers_connected 2",
            "builder_db_commits_total 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // The next scrape replaces the gauges: a platform gone from the
        // snapshot is gone from the metrics; the commit counter only grows.
        let text = m
            .render(&Snapshot {
                db_commits: 12,
                ..Snapshot::default()
            })
            .unwrap();
        assert!(!text.contains("platform=\"p\""), "{text}");
        assert!(
            text.lines().any(|l| l == "builder_db_commits_total 12"),
            "{text}"
        );
    }

    #[test]
    fn counters_are_labelled_and_named_as_documented() {
        let m = Metrics::default();
        m.upload_failed("store");
        m.upload_failed("store");
        m.upload_failed("record");
        m.lines_dropped(3);
        m.lines_dropped(4);
        let start = Timestamp(0);
        m.build_finished("p", &JobOutcome::Exited(2), start, Timestamp(3_000_000_000));
        m.build_finished("p", &JobOutcome::Aborted("timeout".into()), start, start);
        let text = text(&m);
        for line in [
            r#"builder_upload_failures_total{kind="store"} 2"#,
            r#"builder_upload_failures_total{kind="record"} 1"#,
            "builder_observer_lines_dropped_total 7",
            r#"builder_builds_finished_total{platform="p",result="failure"} 1"#,
            r#"builder_builds_finished_total{platform="p",result="aborted"} 1"#,
            "builder_build_duration_seconds_count 2",
            "builder_build_duration_seconds_sum 3.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
