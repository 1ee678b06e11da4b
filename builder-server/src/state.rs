//! What every connection handler shares: configuration, the database, live
//! builds, connected workers and the wake-ups between them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::message::WorkerInfo;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::live::LiveBuilds;
use crate::metrics::{self, Metrics, Snapshot};
use crate::store::JobDirs;
use crate::templates::Templates;

/// State shared by the server's tasks.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The durable state.
    pub db: Db,
    /// Builds being run.
    pub live: LiveBuilds,
    /// Connected workers.
    pub workers: Workers,
    /// orb-build templates.
    pub templates: Templates,
    /// Job directories known durable, for the record writer.
    pub job_dirs: JobDirs,
    /// Woken when the schedule changes (the scheduler re-arms its timer).
    pub schedule_changed: Notify,
    /// Woken when a record joins the upload spool.
    pub upload_wakeup: Notify,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled when the server starts draining (`--drain-timeout`): no
    /// new build is handed out, running ones may finish.
    pub draining: CancellationToken,
    /// Prometheus metrics (`--metrics`).
    pub metrics: Metrics,
    /// The farm's event stream (`GET /api/v1/events`).
    pub events: crate::events::Events,
    platform_wakeups: Mutex<HashMap<String, Arc<Notify>>>,
    fatal: Mutex<Option<anyhow::Error>>,
}

impl Shared {
    /// Shared state around an open database.
    pub fn new(config: Config, db: Db, shutdown: CancellationToken) -> Shared {
        let templates = Templates::new(&config.config_dir);
        Shared {
            config,
            db,
            live: LiveBuilds::default(),
            workers: Workers::default(),
            templates,
            job_dirs: JobDirs::default(),
            schedule_changed: Notify::new(),
            upload_wakeup: Notify::new(),
            shutdown,
            draining: CancellationToken::new(),
            metrics: Metrics::default(),
            events: crate::events::Events::default(),
            platform_wakeups: Mutex::new(HashMap::new()),
            fatal: Mutex::new(None),
        }
    }

    /// The wake-up of the workers waiting for `platform`'s queue.
    pub fn platform_wakeup(&self, platform: &str) -> Arc<Notify> {
        let mut map = self
            .platform_wakeups
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(platform.to_owned()).or_default().clone()
    }

    /// Wakes the workers waiting for `platform` (its queue or its dropped
    /// state changed).
    pub fn wake_platform(&self, platform: &str) {
        self.platform_wakeup(platform).notify_waiters();
    }

    /// A failure to persist state, classified here and nowhere else:
    /// either that one change is refused (returned for the caller to
    /// answer with), or the server stops (and the error is returned too).
    ///
    /// A full disk ([`DbError::is_disk_full`]) refuses that one change: the
    /// caller answers whoever asked with the error, the server keeps serving
    /// reads and works again once space is freed. So does a request that
    /// panicked ([`DbError::is_refused`]): the owner rolled back that one
    /// request and goes on. Anything else (a corrupt
    /// or vanished database) stops the server, since it can no longer keep
    /// its promise that acknowledged changes are durable.
    pub fn refuse_or_stop(&self, error: DbError) -> DbError {
        let chain = protocol::Chain(&error).to_string();
        if error.is_disk_full() {
            tracing::error!(error = ?chain, "disk full: a change to the state was refused");
            return error;
        }
        if error.is_refused() {
            tracing::error!(error = ?chain, "a change to the state was refused");
            return error;
        }
        tracing::error!(error = ?chain, "cannot persist state; shutting down");
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_none() {
            *fatal = Some(anyhow::anyhow!(chain));
        }
        self.shutdown.cancel();
        error
    }

    /// The fatal error that stopped the server, if any.
    pub fn take_fatal(&self) -> Option<anyhow::Error> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What `/metrics` reads: the counters, and the gauges from the database,
/// the connected workers and the live builds.
impl metrics::Source for Shared {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        use anyhow::Context;
        let queues = self.db.queues().await.context("reading the queues")?;
        let (depth, oldest) = self.db.spool_stats().await.context("reading the spool")?;
        Ok(Snapshot {
            queues: queues
                .into_iter()
                .map(|q| (q.platform, q.jobs.len()))
                .collect(),
            workers: self
                .workers
                .list()
                .into_iter()
                .map(|w| (w.platform, w.running.is_some()))
                .collect(),
            upload_spool_depth: depth,
            upload_oldest_pending: oldest,
            observers: self.live.observers(),
            db_commits: self.db.commits(),
        })
    }

    async fn health(&self) -> Result<(), String> {
        self.db.ping().await.map_err(|e| e.to_string())
    }
}

/// A connected worker.
struct WorkerEntry {
    info: WorkerInfo,
    cancel: Option<mpsc::UnboundedSender<String>>,
}

/// Connected workers, by connection id.
#[derive(Default)]
pub struct Workers {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, WorkerEntry>>,
}

impl Workers {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, WorkerEntry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a worker; returns its id.
    pub fn register(&self, platform: &str, host: &str, peer: &str) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            WorkerEntry {
                info: WorkerInfo {
                    platform: platform.to_owned(),
                    host: host.to_owned(),
                    peer: peer.to_owned(),
                    running: None,
                },
                cancel: None,
            },
        );
        id
    }

    /// Forgets a worker.
    pub fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Notes that worker `id` runs `uuid` (or nothing); cancel requests for
    /// it arrive on the returned channel.
    pub fn set_running(&self, id: u64, uuid: Option<Uuid>) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.info.running = uuid;
            entry.cancel = uuid.map(|_| tx);
        }
        rx
    }

    /// Asks the worker running `uuid` to stop it. `false` if none runs it.
    pub fn cancel(&self, uuid: Uuid, reason: &str) -> bool {
        self.lock()
            .values()
            .find(|e| e.info.running == Some(uuid))
            .and_then(|e| e.cancel.as_ref())
            .is_some_and(|tx| tx.send(reason.to_owned()).is_ok())
    }

    /// Every connected worker, by platform then host.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let mut list: Vec<WorkerInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        list.sort_by(|a, b| (&a.platform, &a.host, &a.peer).cmp(&(&b.platform, &b.host, &b.peer)));
        list
    }
}
