//! The command line of `builder-server` (clap derive), in the library so
//! that man pages and completions can be generated from it
//! (`packaging/gen-docs`).
//!
//! Defaults come from [`crate::config`] and [`crate::upload`], where each is
//! written once. Ranges are checked here, while parsing, by value parsers
//! whose messages say what to give instead (`must be at least 1 second (got
//! 0)`); [`Config`](crate::config::Config) is built from the result.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use crate::bounds;
use crate::config::{self, default_config_dir, default_state_dir};
use crate::upload;

/// The builder server: persistent schedule, per-platform queues, result
/// store and upload to builder-web.
#[derive(Parser, Debug)]
#[command(name = "builder-server", version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Port to listen on.
    #[arg(long, value_name = "PORT", default_value_t = protocol::DEFAULT_PORT)]
    pub port: u16,
    /// State directory (database and build records).
    #[arg(long, value_name = "DIR", default_value = default_state_dir())]
    pub dir: PathBuf,
    /// Directory of orb-build.template.<platform> files.
    #[arg(long, value_name = "DIR", default_value = default_config_dir())]
    pub config_dir: PathBuf,
    /// Upload every build record to this builder-web endpoint
    /// (https://user:password@host/upload).
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,
    /// File holding `user:password` for --upload (keeps it out of `ps`).
    #[arg(long, value_name = "FILE", requires = "upload")]
    pub upload_credentials: Option<PathBuf>,
    /// Uploads in flight at once.
    #[arg(long, value_name = "N", default_value_t = upload::DEFAULT_CONCURRENCY,
          value_parser = positive_count, requires = "upload")]
    pub upload_concurrency: usize,
    /// Longest wait between two upload attempts of one record, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = upload::DEFAULT_BACKOFF_CAP.as_secs(),
          value_parser = positive_secs, requires = "upload")]
    pub upload_backoff_cap: u64,
    /// First wait after a failed upload, in milliseconds (doubling up to
    /// --upload-backoff-cap).
    #[arg(long, value_name = "MS", default_value_t = upload::DEFAULT_BACKOFF_BASE.as_millis() as u64,
          value_parser = positive_millis, requires = "upload", hide = true)]
    pub upload_backoff_min_ms: u64,
    /// Delete a build's directory once builder-web has its record (the
    /// result index keeps it). Off by default: records are kept forever.
    #[arg(long, requires = "upload")]
    pub delete_delivered: bool,
    /// Default job timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_JOB_TIMEOUT.as_secs(),
          value_parser = positive_secs)]
    pub job_timeout: u64,
    /// Largest frame accepted from a peer, in bytes (at least 1024).
    #[arg(long, value_name = "BYTES", default_value_t = protocol::codec::DEFAULT_MAX_FRAME,
          value_parser = frame_limit)]
    pub max_frame: usize,
    /// Most console bytes kept per build: the start and the end are kept, the
    /// middle of a longer console is dropped (the record says how much).
    #[arg(long, value_name = "BYTES", default_value_t = config::DEFAULT_MAX_CONSOLE,
          value_parser = bytes::<usize>)]
    pub max_console_bytes: usize,
    /// Heartbeat interval on worker connections, in milliseconds; a worker
    /// silent for three intervals is considered lost.
    #[arg(long, value_name = "MS", default_value_t = config::DEFAULT_HEARTBEAT.as_millis() as u64,
          value_parser = positive_millis)]
    pub heartbeat_ms: u64,
    /// Most connections (clients, workers, observers) served at once once
    /// their hello is accepted. Connections still saying hello have a
    /// budget of their own (--max-unauthenticated).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_CONNECTIONS,
          value_parser = positive_count)]
    pub max_connections: usize,
    /// Most connections that have not said hello yet; past it, a new one
    /// evicts the oldest of them (which is told why).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_UNAUTHENTICATED,
          value_parser = positive_count)]
    pub max_unauthenticated: usize,
    /// Most connections from one IP address that have not said hello yet;
    /// past it, a new one from that address evicts its oldest.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
          value_parser = positive_count)]
    pub max_unauthenticated_per_ip: usize,
    /// Seconds a new connection has to say hello.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_HELLO_TIMEOUT.as_secs(),
          value_parser = positive_secs)]
    pub hello_timeout: u64,
    /// Seconds a frame may take to arrive once it has started (after the
    /// hello); a peer that stops in the middle of a frame is dropped.
    /// Waiting between frames is not limited.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_FRAME_TIMEOUT.as_secs(),
          value_parser = positive_secs)]
    pub frame_timeout: u64,
    /// Most artifact bytes one build may send (counted as they arrive);
    /// past it the build is recorded aborted.
    #[arg(long, value_name = "BYTES", default_value_t = bounds::DEFAULT_MAX_ARTIFACT_BYTES,
          value_parser = bytes::<u64>)]
    pub max_artifact_bytes: u64,
    /// Most artifacts one build may send; past it the build is recorded
    /// aborted.
    #[arg(long, value_name = "N", default_value_t = bounds::DEFAULT_MAX_ARTIFACTS,
          value_parser = count)]
    pub max_artifacts: usize,
    /// Seconds past a job's timeout before the server drops a worker that
    /// has not reported the result and records the build aborted `timeout`
    /// (covers the worker's --kill-grace, the artifacts' transfer and a
    /// margin).
    #[arg(long, value_name = "SECS", default_value_t = bounds::DEFAULT_TIMEOUT_GRACE.as_secs(),
          value_parser = secs)]
    pub timeout_grace: u64,
    /// File holding the token clients must present.
    #[arg(long, value_name = "FILE")]
    pub client_token_file: Option<PathBuf>,
    /// File holding the token workers must present.
    #[arg(long, value_name = "FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Accept the OCaml builder's workers and clients, which cannot send a
    /// token, from these networks even when tokens are required
    /// (comma-separated, e.g. 127.0.0.0/8,172.17.0.0/16). Without tokens
    /// they are accepted from anywhere.
    #[arg(long, value_name = "CIDR,...")]
    pub legacy_peers: Option<String>,
    /// Import the OCaml builder server's `state` file into --dir, print a
    /// summary and exit (does not serve).
    #[arg(long, value_name = "FILE")]
    pub import_state: Option<PathBuf>,
    /// With --import-state: import into a state directory that already
    /// holds jobs (nothing already there is duplicated).
    #[arg(long, requires = "import_state")]
    pub force: bool,
    /// Allow listening on a non-loopback address without tokens.
    #[arg(long)]
    pub insecure: bool,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    // -- operations (issue 13) --
    /// Log line format on stderr: text or json.
    #[arg(long, value_name = "text|json", default_value_t = builder_logging::LogFormat::Text)]
    pub log_format: builder_logging::LogFormat,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics and a health
    /// check on /healthz. Loopback only, unless --insecure.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, hand out no new build and let running builds
    /// finish for up to SECS seconds; builds still running then are requeued
    /// at the next start. 0: stop at once (they are requeued likewise).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_DRAIN_TIMEOUT.as_secs(),
          value_parser = secs)]
    pub drain_timeout: u64,
    /// Serve the JSON API, live consoles, builder-web's URL shape, the
    /// dashboard, /metrics and /healthz on http://ADDR:PORT. Loopback only
    /// unless both tokens are configured, or --insecure.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// The URL the outside world uses for --http (e.g. behind a TLS proxy),
    /// for absolute links; by default http://ADDR:PORT.
    #[arg(long, value_name = "URL", requires = "http")]
    pub public_url: Option<String>,
    /// Let HTTP reads (API, dashboard) through without the client token;
    /// writes still need it.
    #[arg(long, requires = "http")]
    pub http_public_read: bool,
    /// Most HTTP connections at once; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS,
          value_parser = positive_count)]
    pub http_max_connections: usize,
    /// Most HTTP event streams (live consoles, /api/v1/events) at once.
    #[arg(long, value_name = "N", default_value_t = crate::http::DEFAULT_MAX_SSE,
          value_parser = positive_count)]
    pub http_max_sse: usize,
    /// Largest HTTP request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::http::DEFAULT_MAX_BODY,
          value_parser = bytes::<usize>)]
    pub http_max_body: usize,
    /// Seconds an HTTP request's headers may take to arrive.
    #[arg(long, value_name = "SECS", default_value_t = crate::http::DEFAULT_HEADER_TIMEOUT.as_secs(),
          value_parser = positive_secs)]
    pub http_header_timeout: u64,
    /// Seconds an HTTP connection may stay without any byte moving (event
    /// streams send keep-alives well within it).
    #[arg(long, value_name = "SECS", default_value_t = crate::http::DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = positive_secs)]
    pub http_idle_timeout: u64,
}

/// `text` as a number, or a message saying what was expected
/// (`expected a whole number of seconds (got "x")`).
fn whole<T: FromStr>(text: &str, expected: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected {expected} (got {text:?})"))
}

/// `n`, unless it is below `min`: then a message naming the least value
/// (`must be at least 1 second (got 0)`); `unit` follows `min`.
fn at_least<T: PartialOrd + std::fmt::Display>(n: T, min: T, unit: &str) -> Result<T, String> {
    if n < min {
        return Err(format!("must be at least {min}{unit} (got {n})"));
    }
    Ok(n)
}

/// Seconds, 0 included.
pub fn secs(text: &str) -> Result<u64, String> {
    whole(text, "a whole number of seconds")
}

/// Seconds, at least 1.
pub fn positive_secs(text: &str) -> Result<u64, String> {
    at_least(secs(text)?, 1, " second")
}

/// Milliseconds, at least 1.
pub fn positive_millis(text: &str) -> Result<u64, String> {
    at_least(
        whole(text, "a whole number of milliseconds")?,
        1,
        " millisecond",
    )
}

/// A count, 0 included.
pub fn count(text: &str) -> Result<usize, String> {
    whole(text, "a whole number")
}

/// A count, at least 1.
pub fn positive_count(text: &str) -> Result<usize, String> {
    at_least(count(text)?, 1, "")
}

/// A size in bytes, 0 included.
pub fn bytes<T: FromStr>(text: &str) -> Result<T, String> {
    whole(text, "a whole number of bytes")
}

/// `--max-frame`: at least [`config::MIN_MAX_FRAME`] bytes.
pub fn frame_limit(text: &str) -> Result<usize, String> {
    at_least(bytes(text)?, config::MIN_MAX_FRAME, " bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_errors_say_what_to_give() {
        assert_eq!(
            positive_secs("0").unwrap_err(),
            "must be at least 1 second (got 0)"
        );
        assert_eq!(positive_secs("7"), Ok(7));
        assert_eq!(
            positive_millis("0").unwrap_err(),
            "must be at least 1 millisecond (got 0)"
        );
        assert_eq!(
            positive_count("0").unwrap_err(),
            "must be at least 1 (got 0)"
        );
        assert_eq!(
            positive_count("many").unwrap_err(),
            "expected a whole number (got \"many\")"
        );
        assert_eq!(
            frame_limit("10").unwrap_err(),
            "must be at least 1024 bytes (got 10)"
        );
        assert_eq!(
            secs("-1").unwrap_err(),
            "expected a whole number of seconds (got \"-1\")"
        );
        assert_eq!(secs("0"), Ok(0));
    }

    #[test]
    fn every_default_passes_its_own_parser() {
        // clap parses default values with the value parser too: a default
        // out of range would fail every start.
        let args = Args::try_parse_from(["builder-server"]).unwrap();
        assert_eq!(args.job_timeout, config::DEFAULT_JOB_TIMEOUT.as_secs());
        assert_eq!(
            args.heartbeat_ms,
            config::DEFAULT_HEARTBEAT.as_millis() as u64
        );
        assert_eq!(args.max_connections, config::DEFAULT_MAX_CONNECTIONS);
    }
}
