//! builder's worker: connects to the server, runs jobs of one platform and
//! reports their console, result and artifacts.
//!
//! - [`run`]: the worker's life — sessions, reconnection with backoff in
//!   `--loop` mode, shutdown.
//! - `session`: one connection's conversation (hello, heartbeats, job
//!   requests, forwarding a job's messages, waiting for `Stored`).
//! - [`job`]: one job's directory, process group, console, timeout and kill.
//! - [`console`]: splitting output into lines and lines into batches.
//! - [`artifacts`]: finding and streaming the files a job left behind.
//! - [`signals`]: host signals to wire signals.
//! - [`watchdog`]: what is left of a job when its worker dies.
//!
//! By default a worker serves one job and exits (its sandbox is then
//! recreated by the service manager); with `--loop` it keeps serving.
//!
//! Either way it outlives its server: a worker that cannot reach the server
//! (connection refused or timed out, a failed hello, a connection lost
//! before a job arrived) tries again with exponential backoff and full
//! jitter, capped at [`BACKOFF_MAX`], so it is back within seconds of the
//! server's return; `--connect-retry SECS` bounds one outage. A connection
//! lost while a one-shot worker runs its job ends the worker (the job is
//! requeued by the server; the sandbox is not reused). A refusal that
//! retrying cannot fix (bad token, dropped platform, other protocol
//! version) is final in both modes: [`Refused`], exit status
//! [`EXIT_REFUSED`].

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod artifacts;
pub mod cli;
pub mod console;
pub mod job;
mod session;
pub mod signals;
pub mod watchdog;

use session::{Ended, SessionError};

/// The first backoff step between connection attempts.
pub const BACKOFF_START: Duration = Duration::from_millis(250);

/// The largest backoff step: a worker is back at most this long after its
/// server.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// While the server stays unreachable, one log line this often (the first
/// failure is logged at once, the attempts between at debug level).
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The exit status after a final refusal ([`Refused`]). systemd units list
/// it in `RestartPreventExitStatus=`, so a worker with a bad token stays
/// failed with the reason instead of being restarted forever.
pub const EXIT_REFUSED: u8 = 3;

/// Refusal reasons of a server that is only busy or slow for now: these are
/// retried like an unreachable server. Any other refusal is final. (The
/// wording is builder-server's: `admission::Busy` and the hello's reasons.)
const TRANSIENT_REFUSALS: &[&str] = &[
    "server busy",
    "too many connections from",
    "no hello received in time",
    "connection closed before hello",
];

/// What a worker does and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// The platform whose jobs this worker runs.
    pub platform: String,
    /// The server, `HOST:PORT` (host names and `[v6]:port` work).
    pub remote: String,
    /// The worker token, if the server wants one.
    pub token: Option<String>,
    /// Keep serving jobs (and reconnecting) instead of exiting after one.
    pub looping: bool,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub kill_grace: Duration,
    /// How long to wait for the TCP connection and the server's hello.
    pub timeouts: protocol::handshake::Timeouts,
    /// How long one outage may last before the worker gives up
    /// (`--connect-retry`); `None`: retry forever.
    pub connect_retry: Option<Duration>,
    /// Where job directories are made (`$TMPDIR`, default `/tmp`).
    pub tmpdir: PathBuf,
    /// This worker's name, as the server's `info` shows it (`--name`,
    /// default [`default_name`]). Sent as the hello's `host`.
    pub host: String,
}

/// The server refused this worker for a reason that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("server refused the connection: {reason}")]
pub struct Refused {
    /// The server's reason.
    pub reason: String,
}

/// Whether the server's refusal `reason` is final (see
/// [`TRANSIENT_REFUSALS`]).
pub fn refusal_is_final(reason: &str) -> bool {
    !TRANSIENT_REFUSALS.iter().any(|p| reason.starts_with(p))
}

/// Runs the worker until it has served its job (one-shot), `shutdown`
/// completes, or a final error.
///
/// On `shutdown` a running job's process group is stopped and the job is
/// reported as `Aborted("worker stopped")` while the connection is up; then
/// `run` returns `Ok`.
///
/// # Errors
///
/// [`Refused`] when the server refused the hello for good (in every mode);
/// the server unreachable for longer than `--connect-retry`; or, without
/// `--loop`, the connection lost while the job ran.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let tmpdir = config.tmpdir.clone();
    let removed = tokio::task::spawn_blocking(move || watchdog::remove_stale_dirs(&tmpdir))
        .await
        .unwrap_or(0);
    if removed > 0 {
        info!(count = removed, dir = ?config.tmpdir.display(), "removed stale job directories of dead workers");
    }
    let stop = CancellationToken::new();
    let work = serve(&config, &stop);
    tokio::pin!(work);
    tokio::pin!(shutdown);
    let mut asked = false;
    loop {
        tokio::select! {
            result = &mut work => return result,
            () = &mut shutdown, if !asked => {
                info!("asked to stop");
                asked = true;
                stop.cancel();
            }
        }
    }
}

async fn serve(config: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
    let mut retry = Retry::new(&config.remote, config.connect_retry);
    loop {
        let failure = match session::run(config, stop, &mut retry).await {
            Ok(Ended::Served | Ended::Shutdown) => return Ok(()),
            Err(SessionError::Refused(reason)) if refusal_is_final(&reason) => {
                return Err(Refused { reason }.into())
            }
            Err(SessionError::Refused(reason)) => {
                anyhow!("server refused the connection for now: {reason}")
            }
            Err(SessionError::Failed(e) | SessionError::JobLost(e)) if stop.is_cancelled() => {
                warn!("{e:#}");
                return Ok(());
            }
            Err(SessionError::JobLost(e)) if !config.looping => return Err(e),
            Err(SessionError::Failed(e) | SessionError::JobLost(e)) => e,
        };
        let delay = retry.failed(&failure)?;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
}

/// One outage's retries: the backoff, the `--connect-retry` bound and the
/// log lines (the first failure, then one every [`REPORT_EVERY`]).
#[derive(Debug)]
pub struct Retry {
    remote: String,
    limit: Option<Duration>,
    backoff: Backoff,
    /// The first failure of the current outage.
    since: Option<Instant>,
    /// Failed attempts in the current outage.
    attempts: u32,
    last_report: Option<Instant>,
}

impl Retry {
    /// No outage yet; `limit` is `--connect-retry`.
    pub fn new(remote: &str, limit: Option<Duration>) -> Retry {
        Retry {
            remote: remote.to_owned(),
            limit,
            backoff: Backoff::new(),
            since: None,
            attempts: 0,
            last_report: None,
        }
    }

    /// An attempt failed with `cause`: the delay before the next one, or the
    /// final error once the outage has lasted `--connect-retry`.
    ///
    /// # Errors
    ///
    /// `cannot reach REMOTE for SECS s (--connect-retry): CAUSE`.
    pub fn failed(&mut self, cause: &anyhow::Error) -> anyhow::Result<Duration> {
        self.failed_at(cause, Instant::now())
    }

    fn failed_at(&mut self, cause: &anyhow::Error, now: Instant) -> anyhow::Result<Duration> {
        let since = *self.since.get_or_insert(now);
        let elapsed = now - since;
        self.attempts += 1;
        let remote = &self.remote;
        let mut delay = self.backoff.next_delay();
        if let Some(limit) = self.limit {
            if elapsed >= limit {
                return Err(anyhow!(
                    "cannot reach {remote} for {} s (--connect-retry): {cause:#}",
                    limit.as_secs_f64()
                ));
            }
            delay = delay.min(limit - elapsed);
        }
        let due = self
            .last_report
            .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if self.attempts == 1 {
            self.last_report = Some(now);
            let bound = match self.limit {
                Some(limit) => format!("for up to {} s (--connect-retry)", limit.as_secs_f64()),
                None => "until it answers".to_owned(),
            };
            warn!(%remote, "{cause:#}; retrying every {} s at most, {bound}", BACKOFF_MAX.as_secs());
        } else if due {
            self.last_report = Some(now);
            warn!(%remote, attempts = self.attempts, "still cannot reach the server after {} s: {cause:#}", elapsed.as_secs());
        } else {
            debug!(%remote, attempt = self.attempts, "{cause:#}; retrying in {:.2} s", delay.as_secs_f64());
        }
        Ok(delay)
    }

    /// The hello succeeded: the outage, if any, is over.
    pub fn connected(&mut self) {
        if let Some(since) = self.since.take() {
            info!(remote = %self.remote, attempts = self.attempts, "the server is back after {:.1} s", since.elapsed().as_secs_f64());
        }
        self.attempts = 0;
        self.last_report = None;
        self.backoff.reset();
    }
}

/// Exponential backoff with full jitter: steps of 250 ms doubling up to
/// [`BACKOFF_MAX`], back to the start after a successful hello. Each delay
/// is drawn uniformly between zero and its step, so the workers of a farm
/// do not all reconnect in the same instant after a server restart.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// Starts at [`BACKOFF_START`].
    pub fn new() -> Backoff {
        Backoff {
            next: BACKOFF_START,
        }
    }

    /// The delay before the next attempt: the current step, jittered.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next_step();
        step.mul_f64(rand::random_range(0.0..=1.0))
    }

    /// The current step (before jitter), and on to the next.
    fn next_step(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        step
    }

    /// After a success: start over.
    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// The worker's default name: the host name and the process id
/// (`build1/4711`), so two workers on one host can be told apart.
pub fn default_name() -> String {
    format!("{}/{}", host_name(), std::process::id())
}

/// Checks a `--name`: 1 to 128 characters, none of them a control character.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 128 {
        return Err("--name must be 1 to 128 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("--name {name:?} holds a control character"));
    }
    Ok(())
}

/// This machine's host name, or `unknown` if it has none.
pub fn host_name() -> String {
    match nix::unistd::gethostname() {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(e) => {
            warn!("cannot get the host name: {}", io::Error::from(e));
            "unknown".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let steps: Vec<u128> = (0..8).map(|_| b.next_step().as_millis()).collect();
        assert_eq!(steps, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_step(), BACKOFF_START);
    }

    #[test]
    fn backoff_delays_are_fully_jittered_within_their_step() {
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Backoff::new();
                for _ in 0..5 {
                    b.next_step();
                }
                b.next_delay() // the 5 s step
            })
            .collect();
        for d in &delays {
            assert!(*d <= BACKOFF_MAX, "{d:?}");
        }
        // Full jitter: spread over the whole step, not bunched at its top.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(2500)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(2500)));
    }

    #[test]
    fn busy_is_retried_bad_token_is_final() {
        assert!(!refusal_is_final("server busy: 4096 connections already"));
        assert!(!refusal_is_final(
            "too many connections from 10.0.0.1 that have not said hello (64)"
        ));
        assert!(refusal_is_final("bad token"));
        assert!(refusal_is_final("a token is required"));
        assert!(refusal_is_final("platform old is dropped"));
        assert!(refusal_is_final(
            "unsupported protocol version 9 (this server speaks 1)"
        ));
    }

    #[test]
    fn connect_retry_bounds_one_outage_and_a_hello_resets_it() {
        let mut retry = Retry::new("h:1", Some(Duration::from_secs(2)));
        let cause = anyhow!("cannot connect to h:1");
        let start = Instant::now();
        let mut total = Duration::ZERO;
        let err = loop {
            match retry.failed_at(&cause, start + total) {
                Ok(delay) => {
                    assert!(delay <= BACKOFF_MAX);
                    total += delay;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(
            total,
            Duration::from_secs(2),
            "the last delay is cut to the bound"
        );
        assert_eq!(
            err.to_string(),
            "cannot reach h:1 for 2 s (--connect-retry): cannot connect to h:1"
        );
        retry.connected();
        assert!(retry.failed(&cause).is_ok(), "a new outage starts over");
    }
}
