//! `--metrics ADDR:PORT`: Prometheus metrics on `/metrics` and a health check
//! on `/healthz`.
//!
//! Counters and the duration histogram are updated where things happen
//! (a build stored, an upload failing, an observer skipping lines). Gauges
//! (queues, workers, spool, observers) are read from the server's state at
//! each scrape, so they can never drift from what `info` shows.
//!
//! `/healthz` answers 200 while the state database answers a trivial query,
//! 503 otherwise.

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

use crate::state::Shared;

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
    /// One scrape at a time: a scrape clears and refills the gauges.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("builder");
        let m = Metrics {
            queue_length: Family::default(),
            workers_connected: Family::default(),
            workers_busy: Family::default(),
            builds_finished: Family::default(),
            // 1 s .. about 9 h.
            build_duration: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            upload_spool_depth: Gauge::default(),
            upload_oldest_pending: Gauge::default(),
            upload_failures: Family::default(),
            observers: Gauge::default(),
            observer_lines_dropped: Counter::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "queue_length",
            "Builds waiting in a platform's queue",
            m.queue_length.clone(),
        );
        registry.register(
            "workers_connected",
            "Workers connected, by platform",
            m.workers_connected.clone(),
        );
        registry.register(
            "workers_busy",
            "Workers running a build, by platform",
            m.workers_busy.clone(),
        );
        registry.register(
            "builds_finished",
            "Builds stored, by platform and result (success, failure, signalled, stopped, aborted)",
            m.builds_finished.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Time from a build's start to its end",
            m.build_duration.clone(),
        );
        registry.register(
            "upload_spool_depth",
            "Build records waiting for delivery to builder-web",
            m.upload_spool_depth.clone(),
        );
        registry.register(
            "upload_oldest_pending_seconds",
            "Age of the oldest record waiting for delivery (0 when none waits)",
            m.upload_oldest_pending.clone(),
        );
        registry.register(
            "upload_failures",
            "Failed upload attempts, by kind (store: builder-web unavailable, credentials: refused, record: this record refused)",
            m.upload_failures.clone(),
        );
        registry.register(
            "observers_connected",
            "Clients following a running build",
            m.observers.clone(),
        );
        registry.register(
            "observer_lines_dropped",
            "Console lines skipped for observers too slow to keep up",
            m.observer_lines_dropped.clone(),
        );
        Metrics { registry, ..m }
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

    /// Reads the gauges from the server's state and encodes everything in
    /// the Prometheus text format. Blocks on the database.
    pub fn scrape(&self, shared: &Shared) -> anyhow::Result<String> {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let queues = shared.db.queues().context("reading the queues")?;
        let (depth, oldest) = shared.db.spool_stats().context("reading the spool")?;

        self.queue_length.clear();
        for q in &queues {
            self.queue_length
                .get_or_create(&PlatformLabel {
                    platform: q.platform.clone(),
                })
                .set(q.jobs.len() as i64);
        }
        self.workers_connected.clear();
        self.workers_busy.clear();
        for w in shared.workers.list() {
            let label = PlatformLabel {
                platform: w.platform,
            };
            self.workers_connected.get_or_create(&label).inc();
            let busy = self.workers_busy.get_or_create(&label);
            if w.running.is_some() {
                busy.inc();
            }
        }
        self.upload_spool_depth.set(depth as i64);
        self.upload_oldest_pending
            .set(oldest.map_or(0.0, |t| Timestamp::now().since(t).as_secs_f64()));
        self.observers.set(shared.live.observers() as i64);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .context("encoding the metrics")?;
        Ok(text)
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the server stops.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared.clone());
    let stop = shared.shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = ?e.to_string(), "metrics endpoint failed");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    let scraping = shared.clone();
    match tokio::task::spawn_blocking(move || scraping.metrics.scrape(&scraping)).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = ?format!("{e:#}"), "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "scrape panicked\n").into_response(),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let checking = shared.clone();
    match tokio::task::spawn_blocking(move || checking.db.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "check panicked\n".into()),
    }
}
