//! One connection's conversation with the server.
//!
//! Connect, hello, then: ask for a job, run it while forwarding its messages,
//! wait until the server has stored the result, and (in `--loop` mode) ask
//! for the next one. Heartbeats go out every interval the server asked for,
//! whatever else happens; a server silent for three intervals is lost.
//!
//! Everything happens in one loop owning the [`Connection`]: the job runs in
//! its own task and hands its messages over a small bounded channel, so a
//! slow connection slows the job's console reading (and the job) instead of
//! filling memory.

use std::time::Duration;

use anyhow::{anyhow, Context};
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::handshake::{self, HandshakeError};
use protocol::message::{
    Hello, JobAssignment, JobOutcome, ServerHello, ServerToWorker, Timestamp, WorkerMessage,
};
use protocol::PROTOCOL_VERSION;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::job::{self, JobSettings};
use crate::{Config, Retry};

/// The shortest heartbeat interval the worker accepts from a server.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// A send that makes no progress this long (at least) means a lost server.
const MIN_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages buffered between a job and the connection; with artifact chunks
/// of 256 KiB this bounds the worker's memory to a few MiB.
const JOB_CHANNEL: usize = 8;

/// How a session ended well.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// One job was served and stored (one-shot mode).
    Served,
    /// The worker was asked to stop.
    Shutdown,
}

/// How a session ended badly.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// The server refused the hello, with its reason: final unless the
    /// reason says it is only busy ([`crate::refusal_is_final`]).
    Refused(String),
    /// No job was running (unreachable, a failed hello, lost while waiting
    /// for a job, protocol error): retried.
    Failed(anyhow::Error),
    /// Lost while a job was running (it has been killed): retried in
    /// `--loop` mode only; a one-shot worker does not take a second job.
    JobLost(anyhow::Error),
}

impl From<anyhow::Error> for SessionError {
    fn from(e: anyhow::Error) -> Self {
        SessionError::Failed(e)
    }
}

/// Connects, says hello and serves jobs until done, stopped or lost.
pub(crate) async fn run(
    config: &Config,
    stop: &CancellationToken,
    retry: &mut Retry,
) -> Result<Ended, SessionError> {
    let remote = &config.remote;
    debug!(%remote, "connecting");
    let hello = Hello::worker(
        &config.platform,
        &config.host,
        config.token.clone(),
        format!("builder-worker {}", env!("CARGO_PKG_VERSION")),
    );
    let connect = handshake::connect(remote, &hello, DEFAULT_MAX_FRAME, config.timeouts);
    let (conn, server) = tokio::select! {
        c = connect => match c {
            Ok(welcomed) => welcomed,
            Err(HandshakeError::Refused { reason }) => return Err(SessionError::Refused(reason)),
            Err(e) => return Err(anyhow::Error::new(e).into()),
        },
        () = stop.cancelled() => return Ok(Ended::Shutdown),
    };
    if server.version != PROTOCOL_VERSION {
        warn!(%remote, theirs = server.version, ours = PROTOCOL_VERSION, "server speaks another protocol version");
    }
    info!(%remote, server = ?server.software, platform = ?config.platform, "connected");
    retry.connected();

    let mut session = Session::new(config, conn, &server);
    session.serve(stop).await
}

/// A job being run on this connection.
struct Running {
    uuid: Uuid,
    name: String,
    /// The job's messages; `None` once the job task is over.
    events: Option<mpsc::Receiver<WorkerMessage>>,
    abort: watch::Sender<Option<String>>,
    handle: JoinHandle<()>,
    /// The job's `Finished` went out.
    finished_sent: bool,
    /// The server has the record.
    stored: bool,
}

impl Running {
    fn start(job: JobAssignment, settings: JobSettings) -> Running {
        let (tx, rx) = mpsc::channel(JOB_CHANNEL);
        let (abort, abort_rx) = watch::channel(None);
        let uuid = job.uuid;
        let name = job.name.clone();
        let handle = tokio::spawn(job::run(job, settings, tx, abort_rx));
        Running {
            uuid,
            name,
            events: Some(rx),
            abort,
            handle,
            finished_sent: false,
            stored: false,
        }
    }

    fn done(&self) -> bool {
        self.events.is_none()
    }

    fn abort(&self, reason: &str) {
        self.abort.send_replace(Some(reason.to_owned()));
    }

    /// Stops the job without reporting anything more and waits until its
    /// processes are gone and its directory removed.
    async fn kill(mut self, reason: &str) {
        self.events = None;
        self.abort(reason);
        if let Err(e) = self.handle.await {
            warn!(uuid = %self.uuid, "job task failed: {e}");
        }
    }
}

struct Session<'a> {
    config: &'a Config,
    conn: Connection<TcpStream>,
    heartbeat: Duration,
    /// A server silent this long is lost.
    liveness: Duration,
    send_timeout: Duration,
    settings: JobSettings,
}

impl<'a> Session<'a> {
    fn new(config: &'a Config, conn: Connection<TcpStream>, server: &ServerHello) -> Session<'a> {
        let heartbeat = Duration::from_millis(server.heartbeat_ms).max(MIN_HEARTBEAT);
        let liveness = heartbeat * 3;
        Session {
            config,
            conn,
            heartbeat,
            liveness,
            send_timeout: liveness.max(MIN_SEND_TIMEOUT),
            settings: JobSettings {
                tmpdir: config.tmpdir.clone(),
                kill_grace: config.kill_grace,
            },
        }
    }

    async fn send(&mut self, msg: &WorkerMessage) -> anyhow::Result<()> {
        match timeout(self.send_timeout, self.conn.send(msg)).await {
            Ok(r) => r.with_context(|| format!("cannot send to {}", self.config.remote)),
            Err(_) => Err(anyhow!(
                "{} accepted nothing for {:?}",
                self.config.remote,
                self.send_timeout
            )),
        }
    }

    async fn serve(&mut self, stop: &CancellationToken) -> Result<Ended, SessionError> {
        let mut running: Option<Running> = None;
        let result = self.serve_jobs(stop, &mut running).await;
        if let Some(job) = running {
            if !job.done() {
                warn!(uuid = %job.uuid, job = ?job.name, "killing the job: the connection is lost");
            }
            let (uuid, name) = (job.uuid, job.name.clone());
            job.kill(job::CONNECTION_LOST).await;
            if let Err(SessionError::Failed(e)) = result {
                return Err(SessionError::JobLost(e.context(format!(
                    "lost the connection to {} while running job {name} ({uuid})",
                    self.config.remote
                ))));
            }
        }
        result
    }

    /// The session's loop. Leaves a job in `running` only when it fails.
    async fn serve_jobs(
        &mut self,
        stop: &CancellationToken,
        running: &mut Option<Running>,
    ) -> Result<Ended, SessionError> {
        let remote = self.config.remote.clone();
        let mut ticks = interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut stopping = false;
        // When stopping: give up waiting for `Stored` at this time.
        let mut stop_deadline: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);

        self.send(&WorkerMessage::RequestJob).await?;
        debug!("job requested");
        loop {
            tokio::select! {
                biased;
                msg = self.conn.recv::<ServerToWorker>() => {
                    let msg = match msg {
                        Ok(Some(msg)) => msg,
                        Ok(None) => return Err(anyhow!("{remote} closed the connection").into()),
                        Err(e) => return Err(anyhow!(e).context(format!("cannot read from {remote}")).into()),
                    };
                    last_heard = Instant::now();
                    match msg {
                        ServerToWorker::Heartbeat => {}
                        ServerToWorker::Job(job) => {
                            if let Some(current) = running.as_ref() {
                                return Err(anyhow!(
                                    "{remote} sent job {} ({}) while job {} ({}) is running",
                                    job.name, job.uuid, current.name, current.uuid
                                ).into());
                            }
                            info!(uuid = %job.uuid, job = ?job.name, timeout_secs = job.timeout_secs, "job received");
                            // (Never while stopping: a stop without a job
                            // ends the session at once.)
                            *running = Some(Running::start(job, self.settings.clone()));
                        }
                        ServerToWorker::Cancel { uuid, reason } => match running.as_ref() {
                            Some(job) if job.uuid == uuid && !job.done() => {
                                info!(%uuid, ?reason, "job cancelled by the server");
                                job.abort(&reason);
                            }
                            _ => debug!(%uuid, "cancel for a job not running here, ignored"),
                        },
                        ServerToWorker::Stored { uuid } => match running.as_mut() {
                            Some(job) if job.uuid == uuid => {
                                debug!(%uuid, "result stored");
                                job.stored = true;
                            }
                            _ => warn!(%uuid, "stored for a job not running here, ignored"),
                        },
                        ServerToWorker::Failure { reason } => {
                            warn!(%remote, ?reason, "the server reported a failure");
                            return Err(anyhow!("{remote} reported a failure: {reason}").into());
                        }
                    }
                }
                () = sleep_until(last_heard + self.liveness) => {
                    return Err(anyhow!("{remote} has been silent for {:?}", self.liveness).into());
                }
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    match running.as_ref() {
                        None => {
                            info!("stopping");
                            return Ok(Ended::Shutdown);
                        }
                        Some(job) if !job.done() => {
                            info!(uuid = %job.uuid, "stopping: aborting the running job");
                            job.abort(job::WORKER_STOPPED);
                        }
                        Some(_) => {}
                    }
                }
                _ = ticks.tick() => {
                    self.send(&WorkerMessage::Heartbeat).await?;
                }
                msg = next_event(running) => {
                    let Some(job) = running.as_mut() else { continue };
                    match msg {
                        Some(msg) => {
                            job.finished_sent |= matches!(msg, WorkerMessage::Finished { .. });
                            self.send(&msg).await?;
                        }
                        None => {
                            job.events = None;
                            if !job.finished_sent {
                                // Only if the job task panicked: never leave
                                // the server without a result.
                                job.finished_sent = true;
                                let uuid = job.uuid;
                                self.send(&WorkerMessage::Finished {
                                    uuid,
                                    finished: Timestamp::now(),
                                    outcome: JobOutcome::Aborted("the worker failed to run the job".into()),
                                })
                                .await?;
                            }
                        }
                    }
                }
                () = sleep_until(stop_deadline.unwrap_or(far)), if stop_deadline.is_some() => {
                    warn!("stopping without the server's confirmation that the result is stored");
                    return Ok(Ended::Shutdown);
                }
            }

            let Some(job) = running.as_ref() else {
                continue;
            };
            if job.done() && job.stored {
                let job = running.take().expect("checked above");
                info!(uuid = %job.uuid, job = ?job.name, "result stored by the server");
                if let Err(e) = job.handle.await {
                    warn!(uuid = %job.uuid, "job task failed: {e}");
                }
                if stopping {
                    return Ok(Ended::Shutdown);
                }
                if !self.config.looping {
                    return Ok(Ended::Served);
                }
                self.send(&WorkerMessage::RequestJob).await?;
                debug!("job requested");
            } else if job.done() && stopping && stop_deadline.is_none() {
                stop_deadline = Some(Instant::now() + self.liveness);
            }
        }
    }
}

/// The running job's next message; `None` when its task is over; never
/// completes when no job is running.
async fn next_event(running: &mut Option<Running>) -> Option<WorkerMessage> {
    match running.as_mut().and_then(|job| job.events.as_mut()) {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
