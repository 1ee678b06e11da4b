//! The command line of `builder-server` (clap derive), in the library so
//! that man pages and completions can be generated from it
//! (`packaging/gen-docs`).

use std::net::IpAddr;
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
    /// Most connections (clients, workers, observers) served at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// File holding the token clients must present.
    #[arg(long)]
    pub client_token_file: Option<PathBuf>,
    /// File holding the token workers must present.
    #[arg(long)]
    pub worker_token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without tokens.
    #[arg(long)]
    pub insecure: bool,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
