//! A worker's connection: it asks for a job of its platform, gets the head of
//! that queue (or waits for one), streams console and artifacts, and reports
//! the result, which is stored durably before the worker is told so.
//!
//! Liveness: both sides send a heartbeat every interval; a worker silent for
//! three intervals, or whose connection closes, is lost, and its build goes
//! back to the front of its queue (or is recorded as aborted after
//! [`db::MAX_LOST`] lost workers in a row).
//!
//! Storage: a build whose artifacts or record the server cannot write
//! (disk full, unwritable job folder) is the server's failure, not the
//! worker's: it is recorded as aborted with the reason (`disk full: ...`)
//! and not retried, observers get that result, and every other build goes
//! on (see [`store_result`]).
//!
//! What the worker sends is bounded ([`crate::bounds`]): a build past its
//! artifact limits, or one held past its timeout plus the grace, is recorded
//! aborted with the reason and the worker is dropped; times are clamped to
//! what the server saw.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::codec::Connection;
use protocol::message::{
    BuildHeader, JobAssignment, JobOutcome, ServerToWorker, Timestamp, WorkerMessage,
};
use protocol::record::{ExecResult, RecordHead, ScriptJob, TimeForms};
use protocol::Chain;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::bounds::{self, ArtifactBudget};
use crate::db::{self, LostFate, NewResult, Running};
use crate::live::{LiveBuild, Requeue};
use crate::spool::{BuildSpool, ConsoleFiles, SharedMap, SpoolError, Spooled, WriterGone};
use crate::state::Shared;
use crate::store;

/// Serves one worker connection until it closes, is lost or the server stops.
pub async fn serve(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    platform: &str,
    host: &str,
) -> anyhow::Result<()> {
    let id = shared.workers.register(platform, host, conn.peer());
    // Only worth saying when there is an orb job that cannot run here.
    if shared
        .db
        .has_orb_jobs()
        .await
        .map_err(|e| shared.fatal(e))?
    {
        shared.templates.warn_missing(platform);
    }
    tracing::info!(platform, host, peer = conn.peer(), "worker connected");
    shared
        .db
        .note_platform(platform, Timestamp::now())
        .await
        .map_err(|e| shared.fatal(e))?;
    let mut ticker = tokio::time::interval(shared.config.heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut session = Session {
        shared,
        name: format!("{host} ({})", conn.peer()),
        conn,
        platform,
        id,
        ticker,
        last_seen: Instant::now(),
    };
    let result = session.run().await;
    shared.workers.unregister(id);
    tracing::info!(platform, host, "worker disconnected");
    result
}

/// How a build's conversation ended without a result.
enum Interrupted {
    /// The worker is gone or misbehaved: requeue the build.
    Lost(String),
    /// The build went past a bound (artifact limits, its timeout): record
    /// it aborted with this message and drop the worker.
    Abort(String),
    /// The server is shutting down: leave the build marked running, so the
    /// next start requeues it.
    Shutdown,
    /// The server cannot spool the build's artifacts: it ends aborted with
    /// this reason.
    Storage(String),
    /// The build's writer stopped at an error, which it gives when it is
    /// finished.
    Spool,
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a mut Connection,
    platform: &'a str,
    name: String,
    id: u64,
    ticker: Interval,
    last_seen: Instant,
}

impl Session<'_> {
    async fn run(&mut self) -> anyhow::Result<()> {
        loop {
            if !self.wait_for_request().await? {
                return Ok(());
            }
            let Some(running) = self.wait_for_job().await? else {
                return Ok(());
            };
            // Boxed: an idle worker's connection does not carry a build's
            // state.
            if !Box::pin(self.run_build(running)).await? {
                return Ok(());
            }
        }
    }

    fn liveness_limit(&self) -> Duration {
        self.shared.config.heartbeat * 3
    }

    /// A heartbeat tick: send ours, check theirs.
    async fn tick(&mut self) -> Result<(), String> {
        if self.last_seen.elapsed() > self.liveness_limit() {
            return Err(format!("worker silent for {:?}", self.last_seen.elapsed()));
        }
        self.conn
            .send(&ServerToWorker::Heartbeat)
            .await
            .map_err(|e| format!("cannot send heartbeat: {}", Chain(&e)))
    }

    /// Waits for `RequestJob`. `Ok(false)` when the worker left or the server
    /// stops.
    async fn wait_for_request(&mut self) -> anyhow::Result<bool> {
        loop {
            tokio::select! {
                msg = self.conn.recv::<WorkerMessage>() => {
                    self.last_seen = Instant::now();
                    let msg = match msg {
                        Ok(msg) => msg,
                        Err(e) => return Err(self.refuse(format!("bad frame: {e}")).await),
                    };
                    match msg {
                        Some(WorkerMessage::RequestJob) => return Ok(true),
                        Some(WorkerMessage::Heartbeat) => {}
                        Some(other) => return Err(self.refuse(format!("unexpected {} before a job request", kind(&other))).await),
                        None => return Ok(false),
                    }
                }
                _ = self.ticker.tick() => {
                    if let Err(reason) = self.tick().await {
                        anyhow::bail!(reason);
                    }
                }
                _ = self.shared.shutdown.cancelled() => return Ok(false),
            }
        }
    }

    /// Claims the head of the platform's queue, waiting for one if needed.
    async fn wait_for_job(&mut self) -> anyhow::Result<Option<Running>> {
        let wakeup = self.shared.platform_wakeup(self.platform);
        loop {
            let notified = wakeup.notified();
            tokio::pin!(notified);
            // Register before looking, so an enqueue in between is not missed.
            notified.as_mut().enable();
            let dropped = self
                .shared
                .db
                .is_dropped(self.platform)
                .await
                .map_err(|e| self.shared.fatal(e))?;
            if dropped {
                let reason = format!("platform {} was dropped", self.platform);
                let _ = self.conn.send(&ServerToWorker::Failure { reason }).await;
                return Ok(None);
            }
            let retry = match claim(self.shared, self.platform, &self.name).await? {
                Ok(Some(running)) => return Ok(Some(running)),
                Ok(None) => None,
                Err(retry) => Some(retry),
            };
            loop {
                tokio::select! {
                    _ = &mut notified => break,
                    _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => break,
                    msg = self.conn.recv::<WorkerMessage>() => {
                        self.last_seen = Instant::now();
                        let msg = match msg {
                            Ok(msg) => msg,
                            Err(e) => return Err(self.refuse(format!("bad frame: {}", Chain(&e))).await),
                        };
                        match msg {
                            Some(WorkerMessage::Heartbeat) => {}
                            Some(other) => {
                                return Err(self.refuse(format!("unexpected {} while waiting for a job", kind(&other))).await);
                            }
                            None => return Ok(None),
                        }
                    }
                    _ = self.ticker.tick() => {
                        if let Err(reason) = self.tick().await {
                            anyhow::bail!(reason);
                        }
                    }
                    _ = self.shared.shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }

    /// Runs one build on this worker. `Ok(false)` when the connection is over.
    async fn run_build(&mut self, running: Running) -> anyhow::Result<bool> {
        let uuid = running.uuid;
        let job = &running.job;
        tracing::info!(job = ?job.job, %uuid, platform = ?job.platform, worker = ?self.name, "build started");
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
        self.shared.live.insert(uuid, live.clone());
        let mut cancel = self.shared.workers.set_running(self.id, Some(uuid));
        let build_dir = store::build_dir(&self.shared.config.dir, &job.job, uuid);
        let mut spool = BuildSpool::start(
            &build_dir,
            job.lost + 1,
            self.shared.config.max_console,
            map,
        );
        let mut budget = ArtifactBudget::new(self.shared.config.limits);
        // The build starts when it is handed to the worker, as for legacy
        // workers and in `info`: observers get the header with this time
        // before the worker says it started, so the record, `results` and
        // every observer share this one start (and one duration). The
        // worker's own start time (`Started`) is a few ms later.
        let started = running.assigned;
        // The server's own deadline: the worker kills the job at its
        // timeout; this catches a worker that does not.
        let allowed = Duration::from_secs(job.timeout_secs)
            .saturating_add(self.shared.config.limits.timeout_grace);
        let deadline = Instant::now()
            .checked_add(allowed)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86400));
        let past_deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(past_deadline);

        let assignment = ServerToWorker::Job(JobAssignment {
            uuid,
            name: job.job.clone(),
            platform: job.platform.clone(),
            script: job.script.clone(),
            timeout_secs: job.timeout_secs,
        });
        let end = match self.conn.send(&assignment).await {
            Err(e) => Err(Interrupted::Lost(format!(
                "cannot send the job: {}",
                Chain(&e)
            ))),
            Ok(()) => loop {
                tokio::select! {
                    msg = self.conn.recv::<WorkerMessage>() => {
                        self.last_seen = Instant::now();
                        let msg = match msg {
                            Ok(Some(msg)) => msg,
                            Ok(None) => break Err(Interrupted::Lost("connection closed".into())),
                            Err(e) => {
                                let reason = format!("bad frame: {}", Chain(&e));
                                self.send_failure(&reason).await;
                                break Err(Interrupted::Lost(reason));
                            }
                        };
                        let step = match msg {
                            WorkerMessage::Heartbeat => Ok(()),
                            WorkerMessage::Started { uuid: u, .. } if u == uuid => Ok(()),
                            WorkerMessage::Console { uuid: u, lines } if u == uuid => {
                                match live.push(bounds::bound_lines(lines)) {
                                    Some(batch) => self.spooling(spool.console(batch)).await,
                                    None => Ok(()),
                                }
                            }
                            WorkerMessage::ArtifactStart { uuid: u, path, len } if u == uuid => {
                                match budget.start() {
                                    Ok(()) => self.spooling(spool.artifact_start(path, len)).await,
                                    Err(reason) => Err(Interrupted::Abort(reason)),
                                }
                            }
                            WorkerMessage::ArtifactChunk { uuid: u, data } if u == uuid => {
                                match budget.bytes(data.len()) {
                                    Ok(()) => self.spooling(spool.artifact_chunk(data)).await,
                                    Err(reason) => Err(Interrupted::Abort(reason)),
                                }
                            }
                            WorkerMessage::Finished { uuid: u, finished, outcome } if u == uuid => {
                                let finished = bounds::clamp(finished, started, Timestamp::now());
                                break Ok((finished, bounds::bound_outcome(outcome)));
                            }
                            other => Err(Interrupted::Lost(format!("unexpected {} during build {uuid}", kind(&other)))),
                        };
                        if let Err(end) = step {
                            if let Interrupted::Lost(reason)
                            | Interrupted::Abort(reason)
                            | Interrupted::Storage(reason) = &end
                            {
                                self.send_failure(reason).await;
                            }
                            break Err(end);
                        }
                    }
                    _ = &mut past_deadline => {
                        let grace = self.shared.config.limits.timeout_grace;
                        let reason = format!(
                            "build {uuid} is past its timeout of {} s plus {grace:?} (--timeout-grace)",
                            job.timeout_secs
                        );
                        tracing::warn!(job = ?job.job, %uuid, worker = ?self.name, timeout_secs = job.timeout_secs, ?grace, "build past its timeout; dropping the worker");
                        self.send_failure(&reason).await;
                        break Err(Interrupted::Abort("timeout".into()));
                    }
                    _ = self.ticker.tick() => {
                        if let Err(reason) = self.tick().await {
                            break Err(Interrupted::Lost(reason));
                        }
                    }
                    Some(reason) = cancel.recv() => {
                        tracing::info!(%uuid, ?reason, "cancelling build");
                        if let Err(e) = self.conn.send(&ServerToWorker::Cancel { uuid, reason }).await {
                            break Err(Interrupted::Lost(format!("cannot send cancel: {}", Chain(&e))));
                        }
                    }
                    _ = self.shared.shutdown.cancelled() => break Err(Interrupted::Shutdown),
                }
            },
        };
        self.shared.workers.set_running(self.id, None);

        if let Err(Interrupted::Shutdown) = end {
            // Left marked running: the next start requeues it (and removes
            // what its writer leaves).
            self.shared.live.remove(uuid, &live);
            return Ok(false);
        }
        // Everything sent to the writer is on disk from here on.
        let mut spooled = spool.finish().await;
        let end = match (end, spooled.error.take()) {
            // An interruption that came first stands (and was told).
            (
                end @ Err(Interrupted::Lost(_) | Interrupted::Abort(_) | Interrupted::Storage(_)),
                _,
            ) => end,
            (_, Some(e)) => {
                let end = spool_error(&e);
                if let Interrupted::Lost(reason) | Interrupted::Storage(reason) = &end {
                    self.send_failure(reason).await;
                }
                Err(end)
            }
            (Err(Interrupted::Spool), None) => {
                Err(Interrupted::Storage("the spool's writer stopped".into()))
            }
            (end, None) => end,
        };
        let (finished, outcome) = match end {
            Ok(end) => end,
            Err(Interrupted::Lost(reason)) => {
                spooled.drop_artifacts().await;
                build_lost(self.shared, running, &live, &reason, spooled).await?;
                return Ok(false);
            }
            Err(Interrupted::Storage(reason)) => {
                // Not the worker's fault, and running it again would fail
                // the same way: the build ends here, without its artifacts.
                tracing::error!(job = ?running.job.job, %uuid, ?reason, "cannot store the build; recorded as aborted");
                spooled.drop_artifacts().await;
                self.abort(running, &live, started, reason, spooled).await?;
                return Ok(false);
            }
            Err(Interrupted::Abort(message)) => {
                spooled.drop_artifacts().await;
                self.abort(running, &live, started, message, spooled)
                    .await?;
                return Ok(false);
            }
            Err(Interrupted::Shutdown | Interrupted::Spool) => unreachable!("handled above"),
        };
        let storing = end_build(
            self.shared,
            &running,
            &live,
            started,
            finished,
            outcome,
            spooled,
        );
        let (stored, reachable) =
            with_heartbeats(self.conn, self.shared.config.heartbeat, storing).await;
        // Nothing was read while the record was written: the worker's
        // heartbeats of that time are still in the socket, unread.
        self.last_seen = Instant::now();
        let outcome = stored?;
        tracing::info!(job = ?running.job.job, %uuid, outcome = ?outcome.to_string(), "build finished");
        if !reachable {
            return Ok(false);
        }
        if let Err(e) = self.conn.send(&ServerToWorker::Stored { uuid }).await {
            tracing::debug!(%uuid, error = ?Chain(&e).to_string(), "worker left before its build was acknowledged");
            return Ok(false);
        }
        Ok(true)
    }

    /// The build went past a bound, or its artifacts cannot be stored:
    /// record it aborted with `message`, its artifacts already thrown away;
    /// the worker is dropped.
    async fn abort(
        &mut self,
        running: Running,
        live: &Arc<LiveBuild>,
        started: Timestamp,
        message: String,
        spooled: Spooled,
    ) -> anyhow::Result<()> {
        tracing::warn!(job = ?running.job.job, uuid = %running.uuid, worker = ?self.name, ?message, "build aborted by the server");
        let finished = bounds::clamp(Timestamp::now(), started, Timestamp::now());
        let outcome = JobOutcome::Aborted(message);
        end_build(
            self.shared,
            &running,
            live,
            started,
            finished,
            outcome,
            spooled,
        )
        .await?;
        Ok(())
    }

    /// Hands something to the build's writer, waiting while it catches up
    /// with the disk (backpressure). Meanwhile the worker keeps hearing
    /// from the server, and the time is not held against the worker: its
    /// messages wait unread in the socket.
    async fn spooling(
        &mut self,
        send: impl std::future::Future<Output = Result<(), WriterGone>>,
    ) -> Result<(), Interrupted> {
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => {
                    self.last_seen = Instant::now();
                    return sent.map_err(|WriterGone| Interrupted::Spool);
                }
                _ = self.ticker.tick() => {
                    if let Err(e) = self.conn.send(&ServerToWorker::Heartbeat).await {
                        return Err(Interrupted::Lost(format!("cannot send heartbeat: {}", Chain(&e))));
                    }
                }
            }
        }
    }

    /// Tells the worker why it is being dropped, without waiting long for
    /// a worker that does not read.
    async fn send_failure(&mut self, reason: &str) {
        let failure = ServerToWorker::Failure {
            reason: reason.to_owned(),
        };
        let every = self.shared.config.heartbeat;
        let _ = tokio::time::timeout(every, self.conn.send(&failure)).await;
    }

    /// Tells the worker why it is being dropped; the error ends the session.
    async fn refuse(&mut self, reason: String) -> anyhow::Error {
        self.send_failure(&reason).await;
        anyhow::anyhow!(reason)
    }
}

/// Runs `work` (writing a build record) while sending the worker a
/// heartbeat every `every`: a multi-GiB record takes longer to write than the
/// worker waits for a silent server. Returns the work's output and whether
/// the worker is still reachable. A failed send does not stop the work: the
/// record is stored whether or not the worker is still there.
async fn with_heartbeats<S, F>(
    conn: &mut Connection<S>,
    every: Duration,
    work: F,
) -> (F::Output, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: std::future::Future,
{
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reachable = true;
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return (output, reachable),
            _ = ticks.tick(), if reachable => {
                // Bounded, so a worker that stopped reading cannot hold up
                // the end of the store.
                let error = match tokio::time::timeout(every, conn.send(&ServerToWorker::Heartbeat)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => Chain(&e).to_string(),
                    Err(_) => format!("no room to send for {every:?}"),
                };
                tracing::debug!(peer = conn.peer(), ?error, "worker unreachable while its build is stored");
                reachable = false;
            }
        }
    }
}

/// A spooling failure: the server's own (disk full, unwritable folder) ends
/// the build aborted; a worker's inconsistent data means a lost worker.
fn spool_error(e: &SpoolError) -> Interrupted {
    if e.error.is_protocol() {
        Interrupted::Lost(Chain(&e.error).to_string())
    } else {
        Interrupted::Storage(e.error.abort_reason(e.what))
    }
}

fn kind(msg: &WorkerMessage) -> &'static str {
    match msg {
        WorkerMessage::RequestJob => "job request",
        WorkerMessage::Heartbeat => "heartbeat",
        WorkerMessage::Started { .. } => "start report",
        WorkerMessage::Console { .. } => "console output",
        WorkerMessage::ArtifactStart { .. } => "artifact",
        WorkerMessage::ArtifactChunk { .. } => "artifact chunk",
        WorkerMessage::Finished { .. } => "result",
    }
}

/// Claims the head of `platform`'s queue for `worker` (of either
/// protocol). `Ok(Err(when))` when the disk is full: no build can start,
/// look again at `when`. Fails when the state database is broken.
pub(crate) async fn claim(
    shared: &Arc<Shared>,
    platform: &str,
    worker: &str,
) -> anyhow::Result<Result<Option<Running>, Instant>> {
    // Draining for shutdown: hand out nothing, wait for the end.
    if shared.draining.is_cancelled() {
        return Ok(Ok(None));
    }
    let claimed = shared
        .db
        .claim(platform, worker, Timestamp::now())
        .await
        .map_err(|e| shared.fatal(e));
    match claimed {
        Ok(running) => Ok(Ok(running)),
        Err(e) if e.is_disk_full() => Ok(Err(Instant::now() + shared.config.heartbeat)),
        Err(e) => Err(e.into()),
    }
}

/// The build's worker is gone: requeue it, or record it as aborted when it
/// lost too many workers in a row. Observers get an end whatever happens.
///
/// `spooled` holds what the attempt spooled (its artifacts removed
/// already): its console goes into the record of a build given up, and
/// the spool goes in any case.
pub(crate) async fn build_lost(
    shared: &Arc<Shared>,
    running: Running,
    live: &Arc<LiveBuild>,
    reason: &str,
    spooled: Spooled,
) -> anyhow::Result<()> {
    let uuid = running.uuid;
    let now = Timestamp::now();
    let fate = match shared.db.worker_lost(uuid).await {
        Ok(fate) => fate,
        Err(e) => {
            // Still marked running: the next start requeues it.
            let e = shared.fatal(e);
            live.finish(
                now,
                JobOutcome::Aborted(format!("worker lost ({reason}); not requeued: {e}")),
            );
            spooled.discard_async().await;
            shared.live.remove(uuid, live);
            return if e.is_disk_full() {
                Ok(())
            } else {
                Err(e.into())
            };
        }
    };
    match fate {
        LostFate::Requeued => {
            let attempt = running.job.lost + 2;
            tracing::warn!(job = ?running.job.job, %uuid, ?reason, attempt, "worker lost; build requeued at the front");
            spooled.discard_async().await;
            // Same UUID: its observers follow it into its next attempt.
            live.requeued(Requeue {
                attempt,
                reason: reason.to_owned(),
            });
            shared.live.remove(uuid, live);
            shared.wake_platform(&running.job.platform);
        }
        LostFate::GiveUp(r) => {
            tracing::error!(job = ?r.job.job, %uuid, ?reason, "worker lost {} times in a row; build aborted", db::MAX_LOST);
            let outcome = JobOutcome::Aborted(format!("worker lost {} times", db::MAX_LOST));
            end_build(shared, &r, live, r.assigned, now, outcome, spooled).await?;
        }
        LostFate::Unknown => {
            spooled.discard_async().await;
            shared.live.remove(uuid, live);
        }
    }
    Ok(())
}

/// Stores the build with its console (see [`store_result`]), then gives its
/// observers the outcome recorded and forgets it as live: always, so no
/// observer waits for an end that never comes. Returns that outcome.
pub(crate) async fn end_build(
    shared: &Arc<Shared>,
    running: &Running,
    live: &Arc<LiveBuild>,
    started: Timestamp,
    finished: Timestamp,
    outcome: JobOutcome,
    spooled: Spooled,
) -> anyhow::Result<JobOutcome> {
    live.take_console();
    let stored = store_result(shared, running, started, finished, outcome.clone(), spooled).await;
    live.finish(
        finished,
        stored.as_ref().map_or(outcome, |recorded| recorded.clone()),
    );
    shared.live.remove(running.uuid, live);
    stored
}

/// How often an index that the full disk refused is tried again.
const INDEX_RETRY: Duration = Duration::from_secs(5);

/// Writes the build record and indexes it. Returns the outcome indexed.
///
/// A record that cannot be written (disk full, unwritable job folder) ends
/// this build only, once: the spool goes, and the build is recorded as
/// aborted with the reason ([`store::StoreError::abort_reason`]: `disk
/// full: ...` for lack of space) in a record of its job and console, or,
/// when even that cannot be written, in the index alone. An index the full
/// disk refuses is tried again every [`INDEX_RETRY`] until space returns
/// (or at the next start). Fails only when the state database is broken,
/// which stops the server.
pub(crate) async fn store_result(
    shared: &Arc<Shared>,
    running: &Running,
    started: Timestamp,
    finished: Timestamp,
    outcome: JobOutcome,
    mut spooled: Spooled,
) -> anyhow::Result<JobOutcome> {
    let job = &running.job;
    let (spool_dir, artifacts) = std::mem::take(&mut spooled.artifacts);
    let mut head = RecordHead {
        job: ScriptJob::new(
            job.job.as_bytes(),
            job.script.as_bytes(),
            Some(job.platform.as_bytes().to_vec()),
        ),
        uuid: *running.uuid.as_bytes(),
        // Streamed from the console's spool.
        console: Vec::new(),
        started: started.to_datetime(),
        finished: finished.to_datetime(),
        time_forms: TimeForms::default(),
        result: ExecResult::from(&outcome),
    };
    let build_dir = store::build_dir(&shared.config.dir, &job.job, running.uuid);
    let mut result = NewResult {
        uuid: running.uuid,
        job: job.job.clone(),
        platform: job.platform.clone(),
        started,
        finished,
        outcome,
        path: None,
        attempts: job.lost + 1,
    };
    // The record is written and fsynced off the async threads; the index
    // goes through the database owner.
    let blocking = Arc::clone(shared);
    let mut console_files = spooled.console.take();
    let result = tokio::task::spawn_blocking(move || {
        let written = store::write_full(
            &blocking.job_dirs,
            &build_dir,
            &head,
            console(&mut console_files),
            &artifacts,
        );
        result.path = match written {
            Ok(path) => {
                if let Some(spool) = &spool_dir {
                    store::remove_spool(spool);
                }
                spooled.discard();
                Some(path)
            }
            Err(e) => {
                // The artifacts' room is given back before the second try.
                if let Some(spool) = &spool_dir {
                    store::remove_spool(spool);
                }
                let reason =
                    e.abort_reason(&format!("cannot store the build ({})", result.outcome));
                tracing::error!(job = ?result.job, uuid = %result.uuid, ?reason, "build recorded as aborted");
                result.outcome = JobOutcome::Aborted(reason);
                head.result = ExecResult::from(&result.outcome);
                let written = store::write_full(
                    &blocking.job_dirs,
                    &build_dir,
                    &head,
                    console(&mut console_files),
                    &[],
                );
                spooled.discard();
                match written {
                    Ok(path) => Some(path),
                    Err(e) => {
                        tracing::error!(job = ?result.job, uuid = %result.uuid, error = ?e.abort_reason("cannot store the aborted build"), "build indexed without a record");
                        store::remove_incomplete(&build_dir);
                        None
                    }
                }
            }
        };
        result
    })
    .await
    .context("record writer panicked")?;
    let indexed = index(shared, &result).await;
    let outcome = result.outcome.clone();
    shared
        .metrics
        .build_finished(&job.platform, &outcome, started, finished);
    match indexed {
        Ok(()) => {}
        Err(e) if e.is_disk_full() => index_later(shared, result),
        Err(e) => return Err(e.into()),
    }
    Ok(outcome)
}

fn console(files: &mut Option<ConsoleFiles>) -> Option<&mut dyn protocol::record::ConsoleSource> {
    files
        .as_mut()
        .map(|c| c as &mut dyn protocol::record::ConsoleSource)
}

/// Indexes a finished build and wakes the uploader.
async fn index(shared: &Shared, result: &NewResult) -> Result<(), db::DbError> {
    let upload = shared.config.upload.is_some();
    shared
        .db
        .finish(result, upload)
        .await
        .map_err(|e| shared.fatal(e))?;
    if upload {
        shared.upload_wakeup.notify_one();
    }
    Ok(())
}

/// The full disk refused to index a finished build: it stays marked running
/// (the next start finds it) and is indexed as soon as there is room.
fn index_later(shared: &Arc<Shared>, result: NewResult) {
    tracing::warn!(job = ?result.job, uuid = %result.uuid, "disk full: the build is indexed when space returns");
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let result = Arc::new(result);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INDEX_RETRY) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            match index(&shared, &result).await {
                Ok(()) => {
                    tracing::info!(job = ?result.job, uuid = %result.uuid, "build indexed now that there is room");
                    return;
                }
                Err(e) if e.is_refused() => continue,
                // Fatal: the server is stopping.
                Err(_) => return,
            }
        }
    });
}

/// At start-up: builds still marked running lost their worker when the
/// server stopped. Each goes back to the front of its queue (or is recorded
/// as aborted after too many lost workers), and half-written files go.
///
/// Never stopped by one build: one whose record cannot be written is indexed
/// as aborted (see [`store_result`]); one the full disk will not let change
/// stays marked running for the next start. Fails only for a broken
/// database.
pub async fn recover(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let running = shared.db.running().await?;
    if !running.is_empty() {
        tracing::warn!(
            count = running.len(),
            "recovering builds that were running when the server stopped"
        );
    }
    for r in running {
        let build_dir = store::build_dir(&shared.config.dir, &r.job.job, r.uuid);
        if index_stored(shared, &r, &build_dir).await? {
            continue;
        }
        store::remove_incomplete(&build_dir);
        let fate = match shared.db.worker_lost(r.uuid).await {
            Ok(fate) => fate,
            Err(e) if e.is_disk_full() => {
                tracing::error!(job = ?r.job.job, uuid = %r.uuid, error = ?e.to_string(), "disk full: build left for the next start");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let LostFate::GiveUp(r) = fate {
            let outcome = JobOutcome::Aborted(format!("worker lost {} times", db::MAX_LOST));
            store_result(
                shared,
                &r,
                r.assigned,
                Timestamp::now(),
                outcome,
                Spooled::none(),
            )
            .await?;
        }
    }
    Ok(())
}

/// A build whose record was written durably but not indexed when the server
/// stopped: index it now instead of running it again. `Ok(false)` when
/// there is no complete record.
async fn index_stored(
    shared: &Arc<Shared>,
    running: &Running,
    build_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    let path = build_dir.join("full");
    if !path.exists() {
        return Ok(false);
    }
    let reading = path.clone();
    let head = tokio::task::spawn_blocking(move || -> anyhow::Result<RecordHead> {
        let file = std::fs::File::open(&reading)?;
        // Checked whole, but its console is not kept.
        Ok(protocol::record::index_record(file, u64::MAX)?.0)
    })
    .await
    .context("record reader panicked")?;
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            // `full` only ever appears complete (renamed after fsync), so
            // this is damage from outside; keep the file for inspection.
            tracing::error!(path = ?path.display(), error = ?format!("{e:#}"), "unreadable record; running the build again");
            let aside = build_dir.with_extension("unreadable");
            if let Err(e) = std::fs::rename(build_dir, &aside) {
                tracing::error!(dir = ?build_dir, error = ?e.to_string(), "cannot move the unreadable record aside");
            }
            return Ok(false);
        }
    };
    let result = NewResult {
        uuid: running.uuid,
        job: running.job.job.clone(),
        platform: running.job.platform.clone(),
        started: Timestamp::from_datetime(head.started),
        finished: Timestamp::from_datetime(head.finished),
        outcome: JobOutcome::from(&head.result),
        path: Some(path),
        attempts: running.job.lost + 1,
    };
    let indexed = index(shared, &result).await;
    match indexed {
        Ok(()) => {}
        Err(e) if e.is_disk_full() => {
            index_later(shared, result);
            return Ok(true);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(job = ?result.job, uuid = %result.uuid, "indexed a build stored just before the server stopped");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(5);

    fn pair() -> (
        Connection<tokio::io::DuplexStream>,
        Connection<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            Connection::new(a, 1024, "worker".into()),
            Connection::new(b, 1024, "server".into()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_store_keeps_the_worker_hearing_from_the_server() {
        let (mut server, mut worker) = pair();
        let store = async {
            tokio::time::sleep(EVERY * 10 + EVERY / 2).await;
            42
        };
        let (output, reachable) = with_heartbeats(&mut server, EVERY, store).await;
        assert_eq!((output, reachable), (42, true));
        drop(server);
        let mut heartbeats = 0;
        while let Some(msg) = worker.recv::<ServerToWorker>().await.unwrap() {
            assert!(matches!(msg, ServerToWorker::Heartbeat), "{msg:?}");
            heartbeats += 1;
        }
        // One per interval: never three intervals of silence.
        assert_eq!(heartbeats, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_worker_does_not_stop_the_store() {
        let (mut server, worker) = pair();
        drop(worker);
        let store = async {
            tokio::time::sleep(EVERY * 3).await;
            "stored"
        };
        let (output, reachable) = with_heartbeats(&mut server, EVERY, store).await;
        assert_eq!((output, reachable), ("stored", false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_stops_reading_does_not_hold_up_the_store() {
        // A tiny pipe the worker never reads: the first heartbeats fill it.
        let (a, _unread) = tokio::io::duplex(16);
        let mut server = Connection::new(a, 1024, "worker".into());
        let store = async {
            tokio::time::sleep(EVERY * 20).await;
            "stored"
        };
        let (output, reachable) = with_heartbeats(&mut server, EVERY, store).await;
        assert_eq!((output, reachable), ("stored", false));
    }
}
