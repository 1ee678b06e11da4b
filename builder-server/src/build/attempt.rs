//! One attempt at a build, from the claim to its end, whichever protocol
//! its worker speaks.
//!
//! An [`Attempt`] holds the live build (its observers), the spool its
//! console and artifacts go to, and its budgets; it applies every bound
//! ([`crate::bounds`]) to what the worker says. The protocol handlers only
//! translate their wire messages into its events ([`Attempt::console`],
//! [`Attempt::artifact_start`], ...) and hand it the way the conversation
//! ended ([`End`]). [`Attempt::settle`] reconciles that end with the
//! spool's, and [`Settled::conclude`] stores, aborts or requeues the build.
//!
//! The guard: an attempt dropped before it is settled (its handler
//! panicked or returned early) is treated as lost: its worker slot and live
//! build are cleaned up and the build is requeued, once, from `Drop`.

use std::sync::Arc;
use std::time::Duration;

use protocol::message::{BuildHeader, JobOutcome, OutputLine, Timestamp};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::finish::{build_lost, end_build};
use crate::bounds::{self, ArtifactBudget};
use crate::db::{QueuedJob, Running};
use crate::live::LiveBuild;
use crate::spool::{BuildSpool, SharedMap, SpoolError, Spooled};
use crate::state::Shared;
use crate::store;

/// How a build's conversation with its worker ended without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The worker is gone or misbehaved: the build is requeued.
    Lost(String),
    /// The build went past a bound (artifacts, its timeout) or was
    /// cancelled: it is recorded aborted with this message.
    Abort(String),
    /// The server cannot spool what the worker sent (disk full, unwritable
    /// folder): recorded aborted with this reason, not retried.
    Storage(String),
    /// The server is stopping: the build stays marked running, and the
    /// next start requeues it.
    Shutdown,
    /// The spool's writer stopped at an error, which it gives when it is
    /// finished.
    Spool,
}

impl End {
    /// What the worker is told when the server ends its build, if anything.
    pub fn reason(&self) -> Option<&str> {
        match self {
            End::Lost(r) | End::Abort(r) | End::Storage(r) => Some(r),
            End::Shutdown | End::Spool => None,
        }
    }
}

/// A build running on a worker.
pub struct Attempt {
    shared: Arc<Shared>,
    /// `None` once settled; `Drop` treats the build as lost otherwise.
    running: Option<Running>,
    live: Arc<LiveBuild>,
    spool: Option<BuildSpool>,
    budget: ArtifactBudget,
    worker: u64,
    cancel: mpsc::UnboundedReceiver<String>,
    started: Timestamp,
    deadline: Instant,
}

impl Attempt {
    /// Starts attempt `running.job.lost + 1` of a claimed build on worker
    /// `worker` (its id in [`crate::state::Workers`]): observers see it from
    /// now on, and `cancel` reaches it.
    pub fn begin(shared: &Arc<Shared>, running: Running, worker: u64, name: &str) -> Attempt {
        let uuid = running.uuid;
        let job = &running.job;
        tracing::info!(job = ?job.job, %uuid, platform = ?job.platform, worker = ?name, attempt = job.lost + 1, "build started");
        let map = SharedMap::default();
        let live = LiveBuild::new(
            BuildHeader {
                uuid,
                job: job.job.clone(),
                platform: job.platform.clone(),
                started: running.assigned,
            },
            map.clone(),
        );
        shared.live.insert(uuid, live.clone());
        shared.events.build_started(&running, name);
        let cancel = shared.workers.set_running(worker, Some(uuid));
        let build_dir = store::build_dir(&shared.config.dir, &job.job, uuid);
        let spool = BuildSpool::start(&build_dir, job.lost + 1, shared.config.max_console, map);
        // The server's own deadline: the worker kills the job at its
        // timeout; this catches a worker that does not.
        let allowed = Duration::from_secs(job.timeout_secs)
            .saturating_add(shared.config.limits.timeout_grace);
        let deadline = Instant::now()
            .checked_add(allowed)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86400));
        Attempt {
            shared: Arc::clone(shared),
            // The build starts when it is handed to the worker, for both
            // protocols and in `info`: observers get the header with this
            // time before the worker says it started, so the record,
            // `results` and every observer share one start (and one
            // duration). The worker's own start report comes a few ms later
            // and is not used.
            started: running.assigned,
            running: Some(running),
            live,
            spool: Some(spool),
            budget: ArtifactBudget::new(shared.config.limits),
            worker,
            cancel,
            deadline,
        }
    }

    fn running(&self) -> &Running {
        self.running
            .as_ref()
            .expect("an attempt is settled only once")
    }

    /// The build.
    pub fn uuid(&self) -> Uuid {
        self.running().uuid
    }

    /// What runs.
    pub fn job(&self) -> &QueuedJob {
        &self.running().job
    }

    /// When the build is past its timeout plus `--timeout-grace` (see
    /// [`Attempt::timed_out`]).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The build is past its deadline: the reason told to the worker, and
    /// the end (aborted `timeout`, the same for both protocols).
    pub fn timed_out(&self) -> (String, End) {
        let grace = self.shared.config.limits.timeout_grace;
        let job = self.job();
        tracing::warn!(job = ?job.job, uuid = %self.uuid(), timeout_secs = job.timeout_secs, ?grace, "build past its timeout; dropping the worker");
        let reason = format!(
            "build {} is past its timeout of {} s plus {grace:?} (--timeout-grace)",
            self.uuid(),
            job.timeout_secs
        );
        (reason, End::Abort("timeout".into()))
    }

    /// Completes with the reason when a client cancels the build.
    pub async fn cancelled(&mut self) -> String {
        match self.cancel.recv().await {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Console lines, oldest first; over-long ones are cut. Waits while the
    /// spool catches up with the disk.
    pub async fn console(&mut self, lines: Vec<OutputLine>) -> Result<(), End> {
        match self.live.push(bounds::bound_lines(lines)) {
            Some(batch) => self.spool()?.console(batch).await.map_err(|_| End::Spool),
            None => Ok(()),
        }
    }

    /// An artifact of `len` announced bytes at `path` starts.
    pub async fn artifact_start(&mut self, path: Vec<u8>, len: u64) -> Result<(), End> {
        self.budget.start(&path).map_err(End::Abort)?;
        self.spool()?
            .artifact_start(path, len)
            .await
            .map_err(|_| End::Spool)
    }

    /// The next chunk of the current artifact.
    pub async fn artifact_chunk(&mut self, data: Vec<u8>) -> Result<(), End> {
        self.budget.bytes(data.len()).map_err(End::Abort)?;
        self.spool()?
            .artifact_chunk(data)
            .await
            .map_err(|_| End::Spool)
    }

    fn spool(&mut self) -> Result<&mut BuildSpool, End> {
        self.spool.as_mut().ok_or(End::Spool)
    }

    /// The worker's result, bounded: the end clamped between the start and
    /// now, an abort message cut to its limit.
    pub fn result(&self, finished: Timestamp, outcome: JobOutcome) -> (Timestamp, JobOutcome) {
        (
            bounds::clamp(finished, self.started, Timestamp::now()),
            bounds::bound_outcome(outcome),
        )
    }

    /// The conversation is over, with the worker's result or without:
    /// waits for the spool, and decides what becomes of the build. An end
    /// that came first stands; otherwise the spool's error decides.
    pub async fn settle(mut self, end: Result<(Timestamp, JobOutcome), End>) -> Settled {
        let running = self.running.take().expect("settled once");
        self.shared.workers.set_running(self.worker, None);
        let spool = self.spool.take();
        let shared = Arc::clone(&self.shared);
        let live = Arc::clone(&self.live);
        let started = self.started;
        if end == Err(End::Shutdown) {
            // Left marked running: the next start requeues it and removes
            // what its writer leaves.
            shared.live.remove(running.uuid, &live);
            return Settled {
                shared,
                running,
                live,
                started,
                fate: Fate::Shutdown,
                spooled: Spooled::none(),
                told: None,
            };
        }
        // Everything sent to the writer is on disk from here on.
        let mut spooled = match spool {
            Some(spool) => spool.finish().await,
            None => Spooled::none(),
        };
        let mut told = None;
        let end = match (end, spooled.error.take()) {
            (end @ Err(End::Lost(_) | End::Abort(_) | End::Storage(_)), _) => end,
            (_, Some(e)) => {
                let end = spool_error(&e);
                told = end.reason().map(str::to_owned);
                Err(end)
            }
            (Err(End::Spool), None) => Err(End::Storage("the spool's writer stopped".into())),
            (end, None) => end,
        };
        let fate = match end {
            Ok((finished, outcome)) => Fate::Store { finished, outcome },
            Err(End::Lost(reason)) => Fate::Lost(reason),
            Err(End::Storage(reason)) => {
                // Not the worker's fault, and running it again would fail
                // the same way: the build ends here, without its artifacts.
                tracing::error!(job = ?running.job.job, uuid = %running.uuid, ?reason, "cannot store the build; recorded as aborted");
                Fate::Abort(reason)
            }
            Err(End::Abort(message)) => {
                tracing::warn!(job = ?running.job.job, uuid = %running.uuid, ?message, "build aborted by the server");
                Fate::Abort(message)
            }
            Err(End::Shutdown | End::Spool) => unreachable!("handled above"),
        };
        if !matches!(fate, Fate::Store { .. }) {
            spooled.drop_artifacts().await;
        }
        Settled {
            shared,
            running,
            live,
            started,
            fate,
            spooled,
            told,
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        // Not settled: the handler panicked or returned early. The build
        // is treated as lost, once.
        self.shared.workers.set_running(self.worker, None);
        let shared = Arc::clone(&self.shared);
        let live = Arc::clone(&self.live);
        let spool = self.spool.take();
        tracing::error!(job = ?running.job.job, uuid = %running.uuid, "a build's handler stopped before its end; requeueing it");
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let mut spooled = match spool {
                        Some(spool) => spool.finish().await,
                        None => Spooled::none(),
                    };
                    spooled.drop_artifacts().await;
                    let reason = "the server's handler of its worker stopped";
                    if let Err(e) = build_lost(&shared, running, &live, reason, spooled).await {
                        tracing::error!(error = ?protocol::Chain(&*e), "cannot requeue the build");
                    }
                });
            }
            // No runtime (the server is gone): the next start requeues it.
            Err(_) => shared.live.remove(running.uuid, &live),
        }
    }
}

/// What becomes of a settled build.
enum Fate {
    /// The worker's result is stored.
    Store {
        finished: Timestamp,
        outcome: JobOutcome,
    },
    /// Requeued (or aborted after too many lost workers).
    Lost(String),
    /// Recorded aborted with this message.
    Abort(String),
    /// Left for the next start.
    Shutdown,
}

/// A build whose conversation is over, ready to be concluded.
pub struct Settled {
    shared: Arc<Shared>,
    running: Running,
    live: Arc<LiveBuild>,
    started: Timestamp,
    fate: Fate,
    spooled: Spooled,
    told: Option<String>,
}

/// How a build concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concluded {
    /// The worker's result was stored as this outcome (the disk may have
    /// made it an abort): the worker is told and may take the next job.
    Stored(JobOutcome),
    /// The build was aborted, requeued or left for the next start: the
    /// worker is dropped.
    Ended,
}

impl Settled {
    /// A failure the worker has not been told yet (found when the spool
    /// finished), to send it before it is dropped.
    pub fn untold_failure(&self) -> Option<&str> {
        self.told.as_deref()
    }

    /// Stores, aborts or requeues the build; observers always get an end.
    /// Fails only when the state database is broken.
    pub async fn conclude(self) -> anyhow::Result<Concluded> {
        let Settled {
            shared,
            running,
            live,
            started,
            fate,
            spooled,
            told: _,
        } = self;
        match fate {
            Fate::Shutdown => Ok(Concluded::Ended),
            Fate::Lost(reason) => {
                build_lost(&shared, running, &live, &reason, spooled).await?;
                Ok(Concluded::Ended)
            }
            Fate::Abort(message) => {
                let finished = bounds::clamp(Timestamp::now(), started, Timestamp::now());
                let outcome = JobOutcome::Aborted(message);
                end_build(
                    &shared, &running, &live, started, finished, outcome, spooled,
                )
                .await?;
                Ok(Concluded::Ended)
            }
            Fate::Store { finished, outcome } => {
                let outcome = end_build(
                    &shared, &running, &live, started, finished, outcome, spooled,
                )
                .await?;
                tracing::info!(job = ?running.job.job, uuid = %running.uuid, outcome = %outcome, "build finished");
                Ok(Concluded::Stored(outcome))
            }
        }
    }
}

/// A spooling failure: the server's own (disk full, unwritable folder) ends
/// the build aborted; a worker's inconsistent data means a lost worker.
fn spool_error(e: &SpoolError) -> End {
    if e.error.is_protocol() {
        End::Lost(protocol::Chain(&e.error).to_string())
    } else {
        End::Storage(e.error.abort_reason(e.what))
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::db::{Db, LostFate};
    use crate::Config;

    async fn setup(limits: crate::bounds::BuildLimits) -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let mut config = Config::new(dir.path().to_owned());
        config.limits = limits;
        let shared = Arc::new(Shared::new(config, db, CancellationToken::new()));
        (dir, shared)
    }

    async fn claimed(shared: &Arc<Shared>) -> Running {
        shared
            .db
            .enqueue("p", "job", "true", 60, false)
            .await
            .unwrap();
        let worker = shared.workers.register("p", "host", "peer");
        assert_eq!(worker, 0);
        shared
            .db
            .claim("p", "w", Timestamp::now())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn an_attempt_dropped_unsettled_is_requeued_once_and_cleaned_up() {
        let (_dir, shared) = setup(Default::default()).await;
        let running = claimed(&shared).await;
        let uuid = running.uuid;
        let attempt = Attempt::begin(&shared, running, 0, "w");
        assert!(shared.live.get(uuid).is_some());
        assert_eq!(shared.workers.list()[0].running, Some(uuid));
        drop(attempt);
        // The guard's task requeues it; the worker slot is free at once.
        assert_eq!(shared.workers.list()[0].running, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !shared.db.is_queued(uuid).await.unwrap() {
            assert!(Instant::now() < deadline, "not requeued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(shared.live.get(uuid).is_none());
        // Exactly once: attempt 2 is next.
        let again = shared.db.claim("p", "w", Timestamp::now()).await.unwrap();
        assert_eq!(again.map(|r| (r.uuid, r.job.lost)), Some((uuid, 1)));
    }

    #[tokio::test]
    async fn every_bound_is_applied_by_the_attempt() {
        let limits = crate::bounds::BuildLimits {
            max_artifacts: 2,
            max_artifact_bytes: 10,
            ..Default::default()
        };
        let (_dir, shared) = setup(limits).await;
        let running = claimed(&shared).await;
        let mut attempt = Attempt::begin(&shared, running, 0, "w");
        attempt.artifact_start(b"a".to_vec(), 5).await.unwrap();
        attempt.artifact_chunk(vec![0; 5]).await.unwrap();
        assert_eq!(
            attempt.artifact_start(b"a".to_vec(), 1).await,
            Err(End::Abort("artifact \"a\" sent twice".into()))
        );
        attempt.artifact_start(b"b".to_vec(), 6).await.unwrap();
        assert!(matches!(
            attempt.artifact_chunk(vec![0; 6]).await,
            Err(End::Abort(m)) if m.contains("--max-artifact-bytes")
        ));
        let (_, outcome) =
            attempt.result(Timestamp(i64::MAX), JobOutcome::Aborted("m".repeat(10_000)));
        assert!(matches!(&outcome, JobOutcome::Aborted(m) if m.len() < 5000));
        let uuid = attempt.uuid();
        let concluded = attempt
            .settle(Err(End::Abort("too much".into())))
            .await
            .conclude()
            .await
            .unwrap();
        assert_eq!(concluded, Concluded::Ended);
        let result = shared.db.result(uuid).await.unwrap().unwrap();
        assert_eq!(result.outcome, JobOutcome::Aborted("too much".into()));
        assert_eq!(
            shared.db.worker_lost(uuid).await.unwrap(),
            LostFate::Unknown
        );
    }
}
