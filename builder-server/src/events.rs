//! One stream of farm events: builds queued, started and finished, workers
//! connecting and leaving, jobs changing.
//!
//! The places that change state publish one event each after the change is
//! made (a line each: see the callers of the methods below); readers
//! (`GET /api/v1/events`, the dashboard) subscribe and never reach into
//! state. A reader that falls behind by more than [`CAPACITY`] events is
//! told it lagged and goes on from the newest.

use std::sync::Arc;

use protocol::api::{self, EventView, OutcomeView};
use protocol::message::{JobOutcome, Timestamp};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::{NewResult, Running};

/// Events kept for a slow reader before it lags.
pub const CAPACITY: usize = 1024;

/// The farm's event stream.
pub struct Events {
    tx: broadcast::Sender<Arc<EventView>>,
}

impl Default for Events {
    fn default() -> Events {
        let (tx, _) = broadcast::channel(CAPACITY);
        Events { tx }
    }
}

impl Events {
    /// A new reader, from the next event on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventView>> {
        self.tx.subscribe()
    }

    /// Publishes an event; nobody listening is fine.
    pub fn publish(&self, event: EventView) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// A build joined `platform`'s queue.
    pub fn build_queued(&self, uuid: Uuid, job: &str, platform: &str) {
        self.publish(EventView::BuildQueued {
            uuid: uuid.hyphenated().to_string(),
            job: job.to_owned(),
            platform: platform.to_owned(),
        });
    }

    /// A build was handed to worker `worker`.
    pub fn build_started(&self, running: &Running, worker: &str) {
        self.publish(EventView::BuildStarted {
            uuid: running.uuid.hyphenated().to_string(),
            job: running.job.job.clone(),
            platform: running.job.platform.clone(),
            started: api::time(running.assigned),
            worker: worker.to_owned(),
        });
    }

    /// A build was indexed as finished.
    pub fn build_finished(&self, result: &NewResult) {
        self.finished(
            result.uuid,
            &result.job,
            &result.platform,
            result.finished,
            &result.outcome,
        );
    }

    fn finished(
        &self,
        uuid: Uuid,
        job: &str,
        platform: &str,
        finished: Timestamp,
        outcome: &JobOutcome,
    ) {
        self.publish(EventView::BuildFinished {
            uuid: uuid.hyphenated().to_string(),
            job: job.to_owned(),
            platform: platform.to_owned(),
            finished: api::time(finished),
            outcome: OutcomeView::from(outcome),
            result: outcome.to_string(),
        });
    }

    /// A worker connected.
    pub fn worker_connected(&self, platform: &str, host: &str, peer: &str) {
        self.publish(EventView::WorkerConnected {
            platform: platform.to_owned(),
            host: host.to_owned(),
            peer: peer.to_owned(),
        });
    }

    /// A worker left.
    pub fn worker_disconnected(&self, platform: &str, host: &str, peer: &str) {
        self.publish(EventView::WorkerDisconnected {
            platform: platform.to_owned(),
            host: host.to_owned(),
            peer: peer.to_owned(),
        });
    }

    /// A job was scheduled, changed or removed.
    pub fn job_changed(&self, job: &str) {
        self.publish(EventView::JobChanged {
            job: job.to_owned(),
        });
    }
}
