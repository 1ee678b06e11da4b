//! The command line of `builder-server` (clap derive), in the library so
//! that man pages and completions can be generated from it
//! (`packaging/gen-docs`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

/// The builder server: persistent schedule, per-platform queues, result
/// store and upload to builder-web.
#[derive(Parser, Debug)]
#[command(name = "builder-server", version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = protocol::DEFAULT_PORT)]
    pub port: u16,
    /// State directory (database and build records).
    #[arg(long, default_value = crate::default_state_dir())]
    pub dir: PathBuf,
    /// Directory of orb-build.template.<platform> files.
    #[arg(long, default_value = crate::default_config_dir())]
    pub config_dir: PathBuf,
    /// Upload every build record to this builder-web endpoint
    /// (https://user:password@host/upload).
    #[arg(long)]
    pub upload: Option<String>,
    /// File holding `user:password` for --upload (keeps it out of `ps`).
    #[arg(long, requires = "upload")]
    pub upload_credentials: Option<PathBuf>,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 2, requires = "upload")]
    pub upload_concurrency: usize,
    /// Longest wait between two upload attempts of one record, in seconds.
    #[arg(long, default_value_t = 600, requires = "upload")]
    pub upload_backoff_cap: u64,
    /// First wait after a failed upload, in milliseconds (doubling up to
    /// --upload-backoff-cap).
    #[arg(long, default_value_t = 5000, requires = "upload", hide = true)]
    pub upload_backoff_min_ms: u64,
    /// Delete a build's directory once builder-web has its record (the
    /// result index keeps it). Off by default: records are kept forever.
    #[arg(long, requires = "upload")]
    pub delete_delivered: bool,
    /// Default job timeout in seconds.
    #[arg(long, default_value_t = 3600)]
    pub job_timeout: u64,
    /// Largest frame accepted from a peer, in bytes.
    #[arg(long, default_value_t = protocol::codec::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Most console bytes kept per build: the start and the end are kept, the
    /// middle of a longer console is dropped (the record says how much).
    #[arg(long, default_value_t = crate::DEFAULT_MAX_CONSOLE)]
    pub max_console_bytes: usize,
    /// Heartbeat interval on worker connections, in milliseconds; a worker
    /// silent for three intervals is considered lost.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// Most connections (clients, workers, observers) served at once once
    /// their hello is accepted. Connections still saying hello have a
    /// budget of their own (--max-unauthenticated).
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Most connections that have not said hello yet; more are refused.
    #[arg(long, default_value_t = crate::DEFAULT_MAX_UNAUTHENTICATED)]
    pub max_unauthenticated: usize,
    /// Most connections from one IP address that have not said hello yet.
    #[arg(long, default_value_t = crate::DEFAULT_MAX_UNAUTHENTICATED_PER_IP)]
    pub max_unauthenticated_per_ip: usize,
    /// Seconds a new connection has to say hello.
    #[arg(long, default_value_t = crate::DEFAULT_HELLO_TIMEOUT.as_secs())]
    pub hello_timeout: u64,
    /// Seconds a frame may take to arrive once it has started (after the
    /// hello); a peer that stops in the middle of a frame is dropped.
    /// Waiting between frames is not limited.
    #[arg(long, default_value_t = crate::DEFAULT_FRAME_TIMEOUT.as_secs())]
    pub frame_timeout: u64,
    /// Most artifact bytes one build may send (counted as they arrive);
    /// past it the build is recorded aborted.
    #[arg(long, default_value_t = crate::bounds::DEFAULT_MAX_ARTIFACT_BYTES)]
    pub max_artifact_bytes: u64,
    /// Most artifacts one build may send; past it the build is recorded
    /// aborted.
    #[arg(long, default_value_t = crate::bounds::DEFAULT_MAX_ARTIFACTS)]
    pub max_artifacts: usize,
    /// Seconds past a job's timeout before the server drops a worker that
    /// has not reported the result and records the build aborted `timeout`
    /// (covers the worker's --kill-grace, the artifacts' transfer and a
    /// margin).
    #[arg(long, default_value_t = crate::bounds::DEFAULT_TIMEOUT_GRACE.as_secs())]
    pub timeout_grace: u64,
    /// File holding the token clients must present.
    #[arg(long)]
    pub client_token_file: Option<PathBuf>,
    /// File holding the token workers must present.
    #[arg(long)]
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
    #[arg(long, value_name = "FORMAT", default_value_t = builder_logging::LogFormat::Text)]
    pub log_format: builder_logging::LogFormat,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics and a health
    /// check on /healthz. Loopback only, unless --insecure.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, hand out no new build and let running builds
    /// finish for up to SECS seconds; builds still running then are requeued
    /// at the next start. 0: stop at once (they are requeued likewise).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub drain_timeout: u64,
    // -- HTTP (issue 17) --
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
    #[arg(long, value_name = "N", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS)]
    pub http_max_connections: usize,
    /// Most HTTP event streams (live consoles, /api/v1/events) at once.
    #[arg(long, value_name = "N", default_value_t = crate::http::DEFAULT_MAX_SSE)]
    pub http_max_sse: usize,
    /// Largest HTTP request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::http::DEFAULT_MAX_BODY)]
    pub http_max_body: usize,
    /// Seconds an HTTP request's headers may take to arrive.
    #[arg(long, value_name = "SECS", default_value_t = crate::http::DEFAULT_HEADER_TIMEOUT.as_secs())]
    pub http_header_timeout: u64,
    /// Seconds an HTTP connection may stay without any byte moving (event
    /// streams send keep-alives well within it).
    #[arg(long, value_name = "SECS", default_value_t = crate::http::DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub http_idle_timeout: u64,
}
