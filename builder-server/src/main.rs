//! `builder-server [--ip IP] [--port PORT] [--dir DIR] [--config-dir DIR] [--upload URL] ...`

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_server::cli::Args;
use builder_server::upload::UploadConfig;
use builder_server::Config;
use clap::Parser;

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

/// Reads the token of `flag` (rule: [`protocol::token`]).
fn read_token(path: &Path, flag: &str) -> anyhow::Result<String> {
    protocol::token::read_token_file(path).with_context(|| flag.to_owned())
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
