//! `builder-server [--ip IP] [--port PORT] [--dir DIR] [--config-dir DIR] [--upload URL] ...`

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_server::upload::UploadConfig;
use builder_server::Config;
use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The builder server: persistent schedule, per-platform queues, result
/// store and upload to builder-web.
#[derive(Parser, Debug)]
#[command(name = "builder-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 1234)]
    port: u16,
    /// State directory (database and build records).
    #[arg(long, default_value = builder_server::default_state_dir())]
    dir: PathBuf,
    /// Directory of orb-build.template.<platform> files.
    #[arg(long, default_value = builder_server::default_config_dir())]
    config_dir: PathBuf,
    /// Upload every build record to this builder-web endpoint
    /// (https://user:password@host/upload).
    #[arg(long)]
    upload: Option<String>,
    /// File holding `user:password` for --upload (keeps it out of `ps`).
    #[arg(long, requires = "upload")]
    upload_credentials: Option<PathBuf>,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 2, requires = "upload")]
    upload_concurrency: usize,
    /// Longest wait between two upload attempts of one record, in seconds.
    #[arg(long, default_value_t = 600, requires = "upload")]
    upload_backoff_cap: u64,
    /// First wait after a failed upload, in milliseconds (doubling up to
    /// --upload-backoff-cap).
    #[arg(long, default_value_t = 5000, requires = "upload", hide = true)]
    upload_backoff_min_ms: u64,
    /// Delete a build's directory once builder-web has its record (the
    /// result index keeps it). Off by default: records are kept forever.
    #[arg(long, requires = "upload")]
    delete_delivered: bool,
    /// Default job timeout in seconds.
    #[arg(long, default_value_t = 3600)]
    job_timeout: u64,
    /// Largest frame accepted from a peer, in bytes.
    #[arg(long, default_value_t = protocol::codec::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Most console bytes kept per build: the start and the end are kept, the
    /// middle of a longer console is dropped (the record says how much).
    #[arg(long, default_value_t = builder_server::DEFAULT_MAX_CONSOLE)]
    max_console_bytes: usize,
    /// Heartbeat interval on worker connections, in milliseconds; a worker
    /// silent for three intervals is considered lost.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Most connections (clients, workers, observers) served at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// File holding the token clients must present.
    #[arg(long)]
    client_token_file: Option<PathBuf>,
    /// File holding the token workers must present.
    #[arg(long)]
    worker_token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without tokens.
    #[arg(long)]
    insecure: bool,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    // -- operations (issue 13) --
    /// Log line format on stderr: text or json.
    #[arg(long, value_name = "FORMAT", default_value_t = builder_logging::LogFormat::Text)]
    log_format: builder_logging::LogFormat,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics and a health
    /// check on /healthz. Loopback only, unless --insecure.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, hand out no new build and let running builds
    /// finish for up to SECS seconds; builds still running then are requeued
    /// at the next start. 0: stop at once (they are requeued likewise).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    drain_timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    builder_logging::init(args.verbose, args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a token file: the token is its first line, whitespace trimmed.
fn read_token(path: &Path, flag: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag} {}: cannot read", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("{flag} {}: the file holds no token", path.display());
    }
    Ok(token)
}

fn run(args: Args) -> anyhow::Result<()> {
    let client_token = args
        .client_token_file
        .as_deref()
        .map(|p| read_token(p, "--client-token-file"))
        .transpose()?;
    let worker_token = args
        .worker_token_file
        .as_deref()
        .map(|p| read_token(p, "--worker-token-file"))
        .transpose()?;
    if !args.ip.is_loopback()
        && (client_token.is_none() || worker_token.is_none())
        && !args.insecure
    {
        anyhow::bail!(
            "refusing to listen on {} without --client-token-file and --worker-token-file; pass --insecure to do it anyway",
            args.ip
        );
    }
    if let Some(addr) = args.metrics.filter(|a| !a.ip().is_loopback()) {
        if !args.insecure {
            anyhow::bail!(
                "refusing to serve --metrics on {addr}, which is not a loopback address; pass --insecure to do it anyway"
            );
        }
        tracing::warn!(%addr, "serving metrics beyond loopback (--insecure)");
    }
    if args.heartbeat_ms == 0 || args.job_timeout == 0 {
        anyhow::bail!("--heartbeat-ms and --job-timeout must be positive");
    }
    let upload = match &args.upload {
        Some(url) => {
            let credentials = args
                .upload_credentials
                .as_deref()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| {
                        format!("--upload-credentials {}: cannot read", p.display())
                    })
                })
                .transpose()?;
            let mut upload = UploadConfig::parse(url, credentials.as_deref())?;
            if args.upload_concurrency == 0 {
                anyhow::bail!("--upload-concurrency must be at least 1");
            }
            upload.concurrency = args.upload_concurrency;
            upload.backoff_cap = Duration::from_secs(args.upload_backoff_cap.max(1));
            upload.backoff_base =
                Duration::from_millis(args.upload_backoff_min_ms.max(1)).min(upload.backoff_cap);
            upload.delete_delivered = args.delete_delivered;
            Some(upload)
        }
        None => None,
    };
    let config = Config {
        dir: args.dir,
        config_dir: args.config_dir,
        job_timeout: Duration::from_secs(args.job_timeout),
        max_frame: args.max_frame,
        max_console: args.max_console_bytes,
        max_connections: args.max_connections.max(1),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        client_token,
        worker_token,
        upload,
        metrics: args.metrics,
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Before anything else: a SIGHUP from here on is logged, not fatal.
        let signals = Signals::new()?;
        let addr = SocketAddr::new(args.ip, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        builder_server::run(config, listener, signals.shutdown()).await
    })
}

/// The signals the server handles: SIGTERM and SIGINT stop it (after a
/// drain, with --drain-timeout); SIGHUP is logged and ignored, so a server
/// started from a shell survives the end of the session.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot handle {name}"))
        };
        Ok(Signals {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
            hup: watch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Completes on SIGTERM or SIGINT.
    async fn shutdown(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return tracing::info!("SIGTERM received"),
                _ = self.int.recv() => return tracing::info!("SIGINT received"),
                _ = self.hup.recv() => tracing::info!("SIGHUP received; ignored (the server keeps running)"),
            }
        }
    }
}
