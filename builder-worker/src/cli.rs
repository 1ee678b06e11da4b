//! The command line of `builder-worker` (clap derive), in the library so
//! that man pages and completions can be generated from it
//! (`packaging/gen-docs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use protocol::DEFAULT_REMOTE;

/// Runs builder jobs of one platform: connects to the server, runs the job's
/// script in a fresh directory under $TMPDIR, and reports its console, result
/// and artifacts.
#[derive(Debug, Parser)]
#[command(name = "builder-worker", version)]
pub struct Cli {
    /// The platform whose jobs this worker runs.
    pub platform: String,

    /// The server to connect to.
    #[arg(
        short,
        long,
        value_name = "HOST:PORT",
        env = "BUILDER_REMOTE",
        default_value = DEFAULT_REMOTE
    )]
    pub remote: String,

    /// Keep serving jobs (and reconnecting) instead of exiting after one.
    #[arg(long = "loop")]
    pub looping: bool,

    /// Read the worker token from the first line of FILE [default: the
    /// BUILDER_TOKEN variable].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub kill_grace: u64,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Give up one connection attempt after SECS seconds (then retry; see
    /// --connect-retry).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = protocol::handshake::parse_timeout_secs)]
    pub connect_timeout: Duration,

    /// Give up when the server has not answered the hello after SECS
    /// seconds (the peer is then probably not a builder-server).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = protocol::handshake::parse_timeout_secs)]
    pub hello_timeout: Duration,

    /// Stop retrying and exit non-zero once the server has been unreachable
    /// (refused, timed out, failed hello, lost before a job) for SECS
    /// seconds [default: retry forever, every 5 s at most].
    #[arg(long, value_name = "SECS", value_parser = parse_retry_secs)]
    pub connect_retry: Option<Duration>,

    /// This worker's name in the server's `info` [default: HOST/PID].
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Log line format on stderr: text or json.
    #[arg(long, value_name = "FORMAT", default_value_t = builder_logging::LogFormat::Text)]
    pub log_format: builder_logging::LogFormat,
}

/// `--connect-retry`: seconds, fractions allowed, 0 (no retry) to ten years.
fn parse_retry_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if (0.0..=315_360_000.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?} is not a number of seconds (e.g. 60, or 0 for no retry)"
        )),
    }
}

fn parse_name(name: &str) -> Result<String, String> {
    crate::check_name(name).map(|()| name.to_owned())
}
