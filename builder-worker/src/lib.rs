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
//! recreated by the service manager); with `--loop` it keeps serving and
//! reconnects when the server goes away. A refusal of the hello (bad token,
//! dropped platform, other protocol version) is final in both modes.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod artifacts;
pub mod cli;
pub mod console;
pub mod job;
mod session;
pub mod signals;
pub mod watchdog;

use session::{Ended, SessionError};

/// The first delay before reconnecting in `--loop` mode.
pub const BACKOFF_START: Duration = Duration::from_secs(1);

/// The longest delay before reconnecting in `--loop` mode.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    /// Where job directories are made (`$TMPDIR`, default `/tmp`).
    pub tmpdir: PathBuf,
    /// This worker's name, as the server's `info` shows it (`--name`,
    /// default [`default_name`]). Sent as the hello's `host`.
    pub host: String,
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
/// The server refused the hello (in every mode); or, without `--loop`, the
/// server is unreachable or the connection was lost.
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
    let mut backoff = Backoff::new();
    loop {
        match session::run(config, stop, &mut backoff).await {
            Ok(Ended::Served | Ended::Shutdown) => return Ok(()),
            Err(SessionError::Refused(reason)) => {
                bail!("server refused the connection: {reason}")
            }
            Err(SessionError::Failed(e)) if stop.is_cancelled() => {
                warn!("{e:#}");
                return Ok(());
            }
            Err(SessionError::Failed(e)) if !config.looping => return Err(e),
            Err(SessionError::Failed(e)) => {
                let delay = backoff.next_delay();
                warn!(remote = %config.remote, "{e:#}; retrying in {:.1}s", delay.as_secs_f64());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// Exponential backoff between reconnections: 1 s doubling up to 30 s, back
/// to 1 s after a successful hello. Each delay is jittered to between half
/// and all of that, so the `--loop` workers of a farm do not all reconnect
/// in the same instant after a server restart.
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
        step.mul_f64(rand::random_range(0.5..=1.0))
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
        let steps: Vec<u64> = (0..8).map(|_| b.next_step().as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_step(), BACKOFF_START);
    }

    #[test]
    fn backoff_delays_are_jittered_within_their_step() {
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Backoff::new();
                b.next_step();
                b.next_delay() // the 2 s step
            })
            .collect();
        for d in &delays {
            assert!(
                (Duration::from_secs(1)..=Duration::from_secs(2)).contains(d),
                "{d:?}"
            );
        }
        // Workers that start together do not retry together.
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "no jitter: {first:?}");
    }
}
