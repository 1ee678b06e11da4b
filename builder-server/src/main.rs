//! `builder-server [--ip IP] [--port PORT] [--dir DIR] [--config-dir DIR] [--upload URL] ...`

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_server::upload::UploadConfig;
use builder_server::Config;
use clap::Parser;

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
    /// Most connections (clients, workers, observers) served at once once
    /// their hello is accepted. Connections still saying hello have a
    /// budget of their own (--max-unauthenticated).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Most connections that have not said hello yet; more are refused.
    #[arg(long, default_value_t = builder_server::DEFAULT_MAX_UNAUTHENTICATED)]
    max_unauthenticated: usize,
    /// Most connections from one IP address that have not said hello yet.
    #[arg(long, default_value_t = builder_server::DEFAULT_MAX_UNAUTHENTICATED_PER_IP)]
    max_unauthenticated_per_ip: usize,
    /// Seconds a new connection has to say hello.
    #[arg(long, default_value_t = builder_server::DEFAULT_HELLO_TIMEOUT.as_secs())]
    hello_timeout: u64,
    /// Seconds a frame may take to arrive once it has started (after the
    /// hello); a peer that stops in the middle of a frame is dropped.
    /// Waiting between frames is not limited.
    #[arg(long, default_value_t = builder_server::DEFAULT_FRAME_TIMEOUT.as_secs())]
    frame_timeout: u64,
    /// Most artifact bytes one build may send (counted as they arrive);
    /// past it the build is recorded aborted.
    #[arg(long, default_value_t = builder_server::bounds::DEFAULT_MAX_ARTIFACT_BYTES)]
    max_artifact_bytes: u64,
    /// Most artifacts one build may send; past it the build is recorded
    /// aborted.
    #[arg(long, default_value_t = builder_server::bounds::DEFAULT_MAX_ARTIFACTS)]
    max_artifacts: usize,
    /// Seconds past a job's timeout before the server drops a worker that
    /// has not reported the result and records the build aborted `timeout`
    /// (covers the worker's --kill-grace, the artifacts' transfer and a
    /// margin).
    #[arg(long, default_value_t = builder_server::bounds::DEFAULT_TIMEOUT_GRACE.as_secs())]
    timeout_grace: u64,
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    if args.heartbeat_ms == 0 || args.job_timeout == 0 {
        anyhow::bail!("--heartbeat-ms and --job-timeout must be positive");
    }
    if args.hello_timeout == 0 || args.frame_timeout == 0 {
        anyhow::bail!("--hello-timeout and --frame-timeout must be positive");
    }
    if args.max_unauthenticated == 0 || args.max_unauthenticated_per_ip == 0 {
        anyhow::bail!("--max-unauthenticated and --max-unauthenticated-per-ip must be positive");
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
        max_unauthenticated: args.max_unauthenticated,
        max_unauthenticated_per_ip: args.max_unauthenticated_per_ip,
        hello_timeout: Duration::from_secs(args.hello_timeout),
        frame_timeout: Duration::from_secs(args.frame_timeout),
        limits: builder_server::bounds::BuildLimits {
            max_artifact_bytes: args.max_artifact_bytes,
            max_artifacts: args.max_artifacts,
            timeout_grace: Duration::from_secs(args.timeout_grace),
        },
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        client_token,
        worker_token,
        upload,
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(args.ip, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        builder_server::run(config, listener, shutdown_signal()).await
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
