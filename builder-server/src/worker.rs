//! A worker's connection (this project's protocol): it asks for a job of
//! its platform, gets the head of that queue (or waits for one), streams
//! console and artifacts, and reports the result, which is stored durably
//! before the worker is told so.
//!
//! This is a translator: the build's rules (bounds, storing, requeueing,
//! the server-side timeout) are [`crate::build`]'s, shared with the
//! reference's workers ([`crate::legacy::worker`]). What is this
//! protocol's own is the heartbeat: both sides send one every interval; a
//! worker silent for three intervals, or whose connection closes, is lost.

use std::sync::Arc;
use std::time::Duration;

use protocol::codec::Connection;
use protocol::message::{JobAssignment, JobOutcome, ServerToWorker, Timestamp, WorkerMessage};
use protocol::Chain;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::build::{self, Attempt, Concluded, End, Waiting};
use crate::db::Running;
use crate::state::Shared;

/// Serves one worker connection until it closes, is lost or the server stops.
pub async fn serve(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    platform: &str,
    host: &str,
) -> anyhow::Result<()> {
    let id = shared.workers.register(platform, host, conn.peer());
    shared.events.worker_connected(platform, host, conn.peer());
    // Only worth saying when there is an orb job that cannot run here.
    if shared
        .db
        .has_orb_jobs()
        .await
        .map_err(|e| shared.refuse_or_stop(e))?
    {
        shared.templates.warn_missing(platform);
    }
    tracing::info!(platform, host, peer = conn.peer(), "worker connected");
    shared
        .db
        .note_platform(platform, Timestamp::now())
        .await
        .map_err(|e| shared.refuse_or_stop(e))?;
    let mut ticker = tokio::time::interval(shared.config.heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut session = Session {
        shared,
        name: format!("{host} ({})", conn.peer()),
        conn,
        id,
        ticker,
        last_seen: Instant::now(),
    };
    let result = session.run(platform).await;
    shared.workers.unregister(id);
    shared
        .events
        .worker_disconnected(platform, host, conn.peer());
    tracing::info!(platform, host, "worker disconnected");
    result
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a mut Connection,
    name: String,
    id: u64,
    ticker: Interval,
    last_seen: Instant,
}

impl Waiting for Session<'_> {
    async fn idle(&mut self) -> anyhow::Result<bool> {
        tokio::select! {
            msg = self.conn.recv::<WorkerMessage>() => {
                self.last_seen = Instant::now();
                match msg {
                    Ok(Some(WorkerMessage::Heartbeat)) => Ok(true),
                    Ok(Some(other)) => Err(self.refuse(format!("unexpected {} while waiting for a job", other.name())).await),
                    Ok(None) => Ok(false),
                    Err(e) => Err(self.refuse(format!("bad frame: {}", Chain(&e))).await),
                }
            }
            _ = self.ticker.tick() => {
                self.tick().await.map_err(anyhow::Error::msg)?;
                Ok(true)
            }
        }
    }

    async fn dropped(&mut self, platform: &str) -> anyhow::Result<bool> {
        let reason = format!("platform {platform} was dropped");
        let _ = self.conn.send(&ServerToWorker::Failure { reason }).await;
        Ok(false)
    }
}

impl Session<'_> {
    async fn run(&mut self, platform: &str) -> anyhow::Result<()> {
        loop {
            if !self.wait_for_request().await? {
                return Ok(());
            }
            let (shared, name) = (self.shared, self.name.clone());
            let Some(running) = build::wait_for_job(shared, platform, &name, self).await? else {
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
                        Err(e) => return Err(self.refuse(format!("bad frame: {}", Chain(&e))).await),
                    };
                    match msg {
                        Some(WorkerMessage::RequestJob) => return Ok(true),
                        Some(WorkerMessage::Heartbeat) => {}
                        Some(other) => return Err(self.refuse(format!("unexpected {} before a job request", other.name())).await),
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

    /// Runs one build on this worker. `Ok(false)` when the connection is over.
    async fn run_build(&mut self, running: Running) -> anyhow::Result<bool> {
        let uuid = running.uuid;
        let assignment = ServerToWorker::Job(JobAssignment {
            uuid,
            name: running.job.job.clone(),
            platform: running.job.platform.clone(),
            script: running.job.script.clone(),
            timeout_secs: running.job.timeout_secs,
        });
        let mut attempt = Attempt::begin(self.shared, running, self.id, &self.name);
        let end = match self.conn.send(&assignment).await {
            Err(e) => Err(End::Lost(format!("cannot send the job: {}", Chain(&e)))),
            Ok(()) => self.converse(&mut attempt).await,
        };
        let settled = attempt.settle(end).await;
        if let Some(reason) = settled.untold_failure() {
            let reason = reason.to_owned();
            self.send_failure(&reason).await;
        }
        let (concluded, reachable) =
            with_heartbeats(self.conn, self.shared.config.heartbeat, settled.conclude()).await;
        // Nothing was read while the record was written: the worker's
        // heartbeats of that time are still in the socket, unread.
        self.last_seen = Instant::now();
        if concluded? == Concluded::Ended || !reachable {
            return Ok(false);
        }
        if let Err(e) = self.conn.send(&ServerToWorker::Stored { uuid }).await {
            tracing::debug!(%uuid, error = ?Chain(&e), "worker left before its build was acknowledged");
            return Ok(false);
        }
        Ok(true)
    }

    /// Translates the worker's messages about the build into the attempt's
    /// events until its result arrives or the build ends otherwise.
    async fn converse(&mut self, attempt: &mut Attempt) -> Result<(Timestamp, JobOutcome), End> {
        let uuid = attempt.uuid();
        let deadline = attempt.deadline();
        loop {
            tokio::select! {
                msg = self.conn.recv::<WorkerMessage>() => {
                    self.last_seen = Instant::now();
                    let msg = match msg {
                        Ok(Some(msg)) => msg,
                        Ok(None) => return Err(End::Lost("connection closed".into())),
                        Err(e) => {
                            let reason = format!("bad frame: {}", Chain(&e));
                            self.send_failure(&reason).await;
                            return Err(End::Lost(reason));
                        }
                    };
                    let step = match msg {
                        WorkerMessage::Heartbeat => Ok(()),
                        // The build's start is its assignment (see
                        // `Attempt::begin`), not the worker's word.
                        WorkerMessage::Started { uuid: u, .. } if u == uuid => Ok(()),
                        WorkerMessage::Console { uuid: u, lines } if u == uuid => {
                            self.spooling(attempt.console(lines)).await
                        }
                        WorkerMessage::ArtifactStart { uuid: u, path, len } if u == uuid => {
                            self.spooling(attempt.artifact_start(path, len)).await
                        }
                        WorkerMessage::ArtifactChunk { uuid: u, data } if u == uuid => {
                            self.spooling(attempt.artifact_chunk(data)).await
                        }
                        WorkerMessage::Finished { uuid: u, finished, outcome } if u == uuid => {
                            return Ok(attempt.result(finished, outcome));
                        }
                        other => Err(End::Lost(format!("unexpected {} during build {uuid}", other.name()))),
                    };
                    if let Err(end) = step {
                        if let Some(reason) = end.reason() {
                            self.send_failure(reason).await;
                        }
                        return Err(end);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let (reason, end) = attempt.timed_out();
                    self.send_failure(&reason).await;
                    return Err(end);
                }
                _ = self.ticker.tick() => self.tick().await.map_err(End::Lost)?,
                reason = attempt.cancelled() => {
                    tracing::info!(%uuid, ?reason, "cancelling build");
                    if let Err(e) = self.conn.send(&ServerToWorker::Cancel { uuid, reason }).await {
                        return Err(End::Lost(format!("cannot send cancel: {}", Chain(&e))));
                    }
                }
                _ = self.shared.shutdown.cancelled() => return Err(End::Shutdown),
            }
        }
    }

    /// Hands something to the build's writer, waiting while it catches up
    /// with the disk (backpressure). Meanwhile the worker keeps hearing
    /// from the server, and the time is not held against the worker: its
    /// messages wait unread in the socket.
    async fn spooling(
        &mut self,
        send: impl std::future::Future<Output = Result<(), End>>,
    ) -> Result<(), End> {
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => {
                    self.last_seen = Instant::now();
                    return sent;
                }
                _ = self.ticker.tick() => {
                    if let Err(e) = self.conn.send(&ServerToWorker::Heartbeat).await {
                        return Err(End::Lost(format!("cannot send heartbeat: {}", Chain(&e))));
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
