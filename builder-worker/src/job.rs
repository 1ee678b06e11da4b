//! Running one job: its directory, its process group, its console, its
//! timeout, its artifacts.
//!
//! [`run`] reports everything as [`WorkerMessage`]s on a channel, in order:
//! `Started` (once the script is running), `Console` batches, the artifacts,
//! and always a last `Finished` — a job that cannot even start is reported as
//! `Aborted("<what failed>: <error>")`, never dropped silently. The channel
//! closes when the job directory has been removed.
//!
//! How the script is started: the script's own path is executed, so its `#!`
//! line picks the interpreter; a script without `#!` (which the kernel would
//! refuse with `ENOEXEC`) is run as `/bin/sh script.sh`, as a shell would,
//! and so is one the kernel refuses anyway. The process is
//! not wrapped in a shell, so a signal death is reported as such rather than
//! as an exit status of 128 + n.
//!
//! Killing: the job is its own process group. On timeout, cancel, worker
//! shutdown or a lost connection the group gets SIGTERM, then SIGKILL after
//! the grace period. Whenever the main process ends, whatever is left of its
//! group is SIGKILLed at once, so background children neither outlive the job
//! nor keep the console pipe open; the pipe is then drained to its end.
//! If the worker itself dies, the worker's watchdog (the job is
//! [`Watched`]) kills the group and removes the directory.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{pipe2, Pid};
use protocol::message::{JobAssignment, JobOutcome, OutputLine, Timestamp, WorkerMessage};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::artifacts::{self, ArtifactError, SCRIPT_NAME};
use crate::console::{Batch, LineSplitter};
use crate::signals;
use crate::watchdog::{self, DirLock, Watched};

/// How jobs are run; the same for every job of a worker.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Where job directories are created (`$TMPDIR`, default `/tmp`).
    pub tmpdir: PathBuf,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub kill_grace: Duration,
}

/// Why a job is stopped before its end; the abort message it is recorded with.
pub const TIMEOUT: &str = "timeout";
/// The worker was asked to stop (SIGTERM/SIGINT).
pub const WORKER_STOPPED: &str = "worker stopped";
/// The connection to the server was lost.
pub const CONNECTION_LOST: &str = "connection lost";

/// Environment variables the job does not inherit from the worker.
const WITHHELD_ENV: &[&str] = &["BUILDER_TOKEN"];

/// Runs `job` to its end, sending its messages on `tx`.
///
/// Setting `abort` to `Some(reason)` stops the job (SIGTERM, grace, SIGKILL to
/// its group) and reports it as `Aborted(reason)`. If `tx`'s receiver goes
/// away the job is stopped the same way, as [`CONNECTION_LOST`].
pub async fn run(
    job: JobAssignment,
    settings: JobSettings,
    tx: mpsc::Sender<WorkerMessage>,
    abort: watch::Receiver<Option<String>>,
) {
    let uuid = job.uuid;
    let mut out = Out {
        tx,
        uuid,
        closed: false,
    };
    let dir = match create_dir(&settings.tmpdir) {
        Ok(dir) => dir,
        Err(e) => {
            let reason = format!(
                "cannot create the job directory in {}: {e}",
                settings.tmpdir.display()
            );
            error!(%uuid, "{reason}");
            out.finished(Timestamp::now(), JobOutcome::Aborted(reason))
                .await;
            return;
        }
    };
    debug!(%uuid, dir = ?dir.path.display(), "job directory created");
    let mut watchdog = None;
    let (outcome, finished) =
        run_in(&job, &dir.path, &settings, &mut out, abort, &mut watchdog).await;
    let outcome = if matches!(outcome, JobOutcome::Exited(_)) && !out.closed {
        match artifacts::send_all(&dir.path, uuid, &out.tx).await {
            Ok(()) => outcome,
            Err(ArtifactError::Closed) => {
                out.closed = true;
                outcome
            }
            Err(e) => {
                // The abort message carries the whole chain: the recorded
                // reason must say why the file could not be read.
                let reason = protocol::Chain(&e).to_string();
                error!(%uuid, "{reason}");
                JobOutcome::Aborted(reason)
            }
        }
    } else {
        outcome
    };
    info!(%uuid, job = ?job.name, outcome = ?outcome.to_string(), "job finished");
    out.finished(finished, outcome).await;
    remove_dir(dir).await;
    if let Some(watchdog) = watchdog {
        watchdog.release();
    }
}

/// The session side of a job's channel, remembering whether it is gone.
struct Out {
    tx: mpsc::Sender<WorkerMessage>,
    uuid: Uuid,
    closed: bool,
}

impl Out {
    async fn send(&mut self, msg: WorkerMessage) {
        if !self.closed && self.tx.send(msg).await.is_err() {
            debug!(uuid = %self.uuid, "the session is gone");
            self.closed = true;
        }
    }

    async fn console(&mut self, lines: Vec<OutputLine>) {
        let uuid = self.uuid;
        self.send(WorkerMessage::Console { uuid, lines }).await;
    }

    async fn finished(&mut self, finished: Timestamp, outcome: JobOutcome) {
        let uuid = self.uuid;
        self.send(WorkerMessage::Finished {
            uuid,
            finished,
            outcome,
        })
        .await;
    }
}

/// A job's private directory, locked for as long as this worker has it.
struct JobDir {
    path: PathBuf,
    _lock: DirLock,
}

/// How often a job directory is made again when another worker's start-up
/// sweep takes it between its creation and its lock.
const CREATE_ATTEMPTS: u32 = 5;

/// A fresh private (0700) directory under `tmpdir`, locked against
/// [`watchdog::remove_stale_dirs`] of other workers.
fn create_dir(tmpdir: &Path) -> io::Result<JobDir> {
    create_dir_checked(tmpdir, &mut |_| {})
}

/// [`create_dir`], running `between` after creating a directory and before
/// locking it (where another worker starting may sweep it away: its
/// [`watchdog::remove_stale_dirs`] takes every unlocked one). Then the lock
/// fails, or holds a directory that is gone, and another is made.
fn create_dir_checked(tmpdir: &Path, between: &mut dyn FnMut(&Path)) -> io::Result<JobDir> {
    let mut attempt = 1;
    loop {
        // Removed explicitly (and loudly) by `remove_dir`.
        let path = tempfile::Builder::new()
            .prefix(watchdog::JOB_DIR_PREFIX)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(tmpdir)?
            .keep();
        between(&path);
        let locked = DirLock::take(&path).and_then(|lock| lock.still_at(&path).map(|()| lock));
        match locked {
            Ok(lock) => return Ok(JobDir { path, _lock: lock }),
            Err(e) if attempt < CREATE_ATTEMPTS => {
                debug!(dir = ?path.display(), "job directory swept away before its lock ({e}), making another");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes the job directory, then lets its lock go.
async fn remove_dir(dir: JobDir) {
    let shown = dir.path.display().to_string();
    let result = tokio::task::spawn_blocking(move || watchdog::remove_dir_all(&dir.path))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    match result {
        Ok(()) => debug!(dir = ?shown, "job directory removed"),
        Err(e) => error!(dir = ?shown, "cannot remove the job directory: {e}"),
    }
}

/// Writes the script (mode 0500) and runs it [`Watched`] (left in
/// `watchdog` for the caller to release once the directory is gone);
/// returns how it ended and when.
async fn run_in(
    job: &JobAssignment,
    dir: &Path,
    settings: &JobSettings,
    out: &mut Out,
    abort: watch::Receiver<Option<String>>,
    watchdog: &mut Option<Watched>,
) -> (JobOutcome, Timestamp) {
    let script = dir.join(SCRIPT_NAME);
    if let Err(e) = write_script(&script, &job.script) {
        let reason = format!("cannot write {}: {e}", script.display());
        error!(uuid = %job.uuid, "{reason}");
        return (JobOutcome::Aborted(reason), Timestamp::now());
    }
    // Close-on-exec: only the copies given to the child as stdout and
    // stderr cross the exec.
    let (reader, writer) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => {
            let reason = format!("cannot create the console pipe: {}", io::Error::from(e));
            error!(uuid = %job.uuid, "{reason}");
            return (JobOutcome::Aborted(reason), Timestamp::now());
        }
    };
    let child = match spawn(&script, job.script.starts_with("#!"), dir, writer) {
        Ok(child) => child,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", script.display());
            error!(uuid = %job.uuid, "{reason}");
            return (JobOutcome::Aborted(reason), Timestamp::now());
        }
    };
    let spawned = Instant::now();
    out.send(WorkerMessage::Started {
        uuid: job.uuid,
        at: Timestamp::now(),
    })
    .await;
    let pgid = Pid::from_raw(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0),
    );
    info!(uuid = %job.uuid, job = ?job.name, pid = pgid.as_raw(), "job started");
    // (No group to watch if the child's pid is unknown: it already ended.)
    if pgid.as_raw() > 1 {
        match Watched::start(pgid, dir) {
            Ok(w) => *watchdog = Some(w),
            // The job still runs; only a worker's death would leave it behind.
            Err(e) => warn!(uuid = %job.uuid, "cannot watch the job: {e}"),
        }
    }
    let mut supervisor = Supervisor {
        uuid: job.uuid,
        child,
        pgid,
        spawned,
        grace: settings.kill_grace,
        exited: None,
        abort_reason: None,
        kill_at: None,
        stop_draining: false,
    };
    let console = match pipe::Receiver::from_owned_fd(reader) {
        Ok(rx) => Some(rx),
        Err(e) => {
            supervisor.begin_abort(format!("cannot read the console pipe: {e}"));
            None
        }
    };
    let timeout_at = spawned.checked_add(Duration::from_secs(job.timeout_secs));
    let ended = supervisor.supervise(console, timeout_at, abort, out).await;
    // `supervise` SIGKILLed what was left of the group when its leader ended.
    if let Some(w) = watchdog {
        w.group_ended();
    }
    ended
}

fn write_script(path: &Path, script: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .open(path)?;
    file.write_all(script.as_bytes())
    // `file` is closed on return: executing a file that is still open for
    // writing fails with ETXTBSY.
}

/// Starts the script in its own process group with stdout and stderr on
/// `writer`: executed itself when it has a `#!` line, else (or when the
/// kernel refuses it) with `/bin/sh script`. Deciding up front saves a
/// failed `exec` for every script without `#!`.
fn spawn(script: &Path, shebang: bool, dir: &Path, writer: OwnedFd) -> io::Result<Child> {
    let with_sh = || {
        debug!(script = ?script.display(), "no #! line, running it with /bin/sh");
        command("/bin/sh".as_ref(), Some(script), dir, &writer)?.spawn()
    };
    if !shebang {
        return with_sh();
    }
    match command(script.as_os_str(), None, dir, &writer)?.spawn() {
        Err(e) if e.raw_os_error() == Some(Errno::ENOEXEC as i32) => with_sh(),
        other => other,
    }
    // `writer` and the commands (holding the child's copies) are dropped
    // here, so the pipe ends when the job's processes have all closed it.
}

fn command(
    program: &std::ffi::OsStr,
    arg: Option<&Path>,
    dir: &Path,
    writer: &OwnedFd,
) -> io::Result<Command> {
    let mut cmd = Command::new(program);
    cmd.args(arg)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer.try_clone()?)
        .process_group(0)
        .kill_on_drop(true);
    for var in WITHHELD_ENV {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Watches a running job: its exit, its console, its deadlines.
struct Supervisor {
    uuid: Uuid,
    child: Child,
    pgid: Pid,
    spawned: Instant,
    grace: Duration,
    /// How the main process ended, once it has.
    exited: Option<(JobOutcome, Timestamp)>,
    /// Why the job is being stopped, once it is.
    abort_reason: Option<String>,
    /// When the group gets SIGKILL (after SIGTERM).
    kill_at: Option<Instant>,
    /// Stopped after the main process ended: do not wait for the console.
    stop_draining: bool,
}

impl Supervisor {
    async fn supervise(
        &mut self,
        mut console: Option<pipe::Receiver>,
        timeout_at: Option<Instant>,
        mut abort: watch::Receiver<Option<String>>,
        out: &mut Out,
    ) -> (JobOutcome, Timestamp) {
        let mut splitter = LineSplitter::new();
        let mut batch = Batch::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut watching_abort = true;
        // After the main process ended: stop reading when the pipe stays
        // silent until then without reaching its end (a process that left
        // the group still holds it).
        let mut drain_until: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);

        loop {
            if self.exited.is_some() && (console.is_none() || self.stop_draining) {
                break;
            }
            if out.closed && self.abort_reason.is_none() {
                self.begin_abort(CONNECTION_LOST.to_owned());
                continue;
            }
            tokio::select! {
                biased;
                changed = abort.changed(), if watching_abort && self.abort_reason.is_none() => {
                    match changed {
                        Ok(()) => {
                            let reason = abort.borrow_and_update().clone();
                            if let Some(reason) = reason {
                                self.begin_abort(reason);
                            }
                        }
                        Err(_) => {
                            watching_abort = false;
                            self.begin_abort(WORKER_STOPPED.to_owned());
                        }
                    }
                }
                status = self.child.wait(), if self.exited.is_none() => {
                    let now = Timestamp::now();
                    // Whatever is left of the group goes with its leader.
                    self.signal_group(Signal::SIGKILL);
                    let outcome = match status {
                        Ok(status) => outcome_of(status),
                        Err(e) => JobOutcome::Aborted(format!("cannot wait for the script: {e}")),
                    };
                    debug!(uuid = %self.uuid, outcome = ?outcome.to_string(), "main process ended");
                    self.exited = Some((outcome, now));
                    self.kill_at = None;
                    drain_until = Some(Instant::now() + self.drain_idle());
                }
                _ = sleep_until(timeout_at.unwrap_or(far)),
                    if timeout_at.is_some() && self.abort_reason.is_none() => {
                    if self.exited.is_some() {
                        warn!(uuid = %self.uuid, "console still open at the job's timeout \
                            (a process left its process group); not reading it further");
                        break;
                    }
                    info!(uuid = %self.uuid, "job timed out");
                    self.begin_abort(TIMEOUT.to_owned());
                }
                _ = sleep_until(self.kill_at.unwrap_or(far)), if self.kill_at.is_some() => {
                    warn!(uuid = %self.uuid, "job still running after the grace period, killing it");
                    self.signal_group(Signal::SIGKILL);
                    self.kill_at = None;
                }
                read = read_some(&mut console, &mut buf) => {
                    let n = match read {
                        Ok(n) => n,
                        Err(e) => {
                            warn!(uuid = %self.uuid, "cannot read the console: {e}");
                            0
                        }
                    };
                    if n == 0 {
                        console = None;
                        continue;
                    }
                    let now = Instant::now();
                    let delta_ns = i64::try_from((now - self.spawned).as_nanos()).unwrap_or(i64::MAX);
                    let mut full = false;
                    splitter.push(&buf[..n], |data| {
                        full |= batch.push(OutputLine { delta_ns, data }, now);
                    });
                    if full || batch.deadline().is_some_and(|d| d <= now) {
                        out.console(batch.take()).await;
                    }
                    if drain_until.is_some() {
                        drain_until = Some(now + self.drain_idle());
                    }
                }
                _ = sleep_until(batch.deadline().unwrap_or(far)), if !batch.is_empty() => {
                    out.console(batch.take()).await;
                }
                _ = sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                    warn!(uuid = %self.uuid, "console still open after the job ended \
                        (a process left its process group); not waiting for it");
                    break;
                }
            }
        }

        if let Some(data) = splitter.finish() {
            let delta_ns = i64::try_from(self.spawned.elapsed().as_nanos()).unwrap_or(i64::MAX);
            batch.push(OutputLine { delta_ns, data }, Instant::now());
        }
        if !batch.is_empty() {
            out.console(batch.take()).await;
        }
        let (outcome, at) = self.exited.take().unwrap_or_else(|| {
            (
                JobOutcome::Aborted("lost track of the job".into()),
                Timestamp::now(),
            )
        });
        match self.abort_reason.take() {
            Some(reason) => (JobOutcome::Aborted(reason), at),
            None => (outcome, at),
        }
    }

    /// Stops the job: SIGTERM now, SIGKILL after the grace period (or as soon
    /// as the main process ends).
    fn begin_abort(&mut self, reason: String) {
        info!(uuid = %self.uuid, ?reason, "stopping the job");
        self.abort_reason = Some(reason);
        if self.exited.is_none() {
            self.signal_group(Signal::SIGTERM);
            self.kill_at = Some(Instant::now() + self.grace);
        } else {
            self.stop_draining = true;
        }
    }

    /// After the main process ended, how long the console may stay silent
    /// without reaching its end.
    fn drain_idle(&self) -> Duration {
        self.grace.max(Duration::from_secs(1))
    }

    fn signal_group(&self, sig: Signal) {
        if self.pgid.as_raw() <= 1 {
            return;
        }
        match killpg(self.pgid, sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                warn!(uuid = %self.uuid, pgid = self.pgid.as_raw(), "cannot send {sig} to the job: {e}")
            }
        }
    }
}

/// Reads from the console, or never completes when it is closed.
async fn read_some(console: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> io::Result<usize> {
    match console {
        Some(rx) => rx.read(buf).await,
        None => std::future::pending().await,
    }
}

/// How a wait status reads on the wire.
fn outcome_of(status: ExitStatus) -> JobOutcome {
    if let Some(code) = status.code() {
        JobOutcome::Exited(code)
    } else if let Some(sig) = status.signal() {
        JobOutcome::Signalled(signals::from_host_number(sig))
    } else if let Some(sig) = status.stopped_signal() {
        JobOutcome::Stopped(signals::from_host_number(sig))
    } else {
        JobOutcome::Aborted(format!("unknown wait status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_directory_swept_before_its_lock_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut made = 0;
        let dir = create_dir_checked(tmp.path(), &mut |_| {
            made += 1;
            if made == 1 {
                // Another worker starts now.
                assert_eq!(watchdog::remove_stale_dirs(tmp.path()), 1);
            }
        })
        .unwrap();
        assert_eq!(made, 2);
        assert!(dir.path.is_dir());
        // Locked: the next sweep leaves it.
        assert_eq!(watchdog::remove_stale_dirs(tmp.path()), 0);
        assert!(dir.path.is_dir());
    }
}
