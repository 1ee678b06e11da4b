//! `builder-server [--ip IP] [--port PORT] [--dir DIR] [--config-dir DIR] [--upload URL] ...`
//! `builder-server --dir DIR --import-state FILE [--force]`

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_server::cli::Args;
use builder_server::upload::UploadConfig;
use builder_server::Config;
use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// glibc gives each thread that allocates under contention an arena of its
/// own (up to 8 per core) and rarely returns their free memory: large
/// answers (`info` of 100 000 jobs) built on different threads left the
/// server at 514 MiB after a flood of schedules with `info` polled
/// throughout (`builder-bench scale`), against 36 MiB with one arena. Two
/// arenas keep that bound and most of the concurrency. An operator's own
/// `MALLOC_ARENA_MAX` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread
        // exists; mallopt only changes the allocator's tuning.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// Reads the token of `flag` (rule: [`protocol::token`]).
fn read_token(path: &Path, flag: &str) -> anyhow::Result<String> {
    protocol::token::read_token_file(path).with_context(|| flag.to_owned())
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(file) = &args.import_state {
        if args.job_timeout == 0 {
            anyhow::bail!("--job-timeout must be positive");
        }
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let summary = runtime.block_on(builder_server::legacy::import::import_state(
            &args.dir,
            &args.config_dir,
            file,
            args.force,
            args.job_timeout,
        ))?;
        println!("{summary}");
        return Ok(());
    }
    let legacy_peers = match &args.legacy_peers {
        Some(text) => builder_server::legacy::peers::parse_list(text).context("--legacy-peers")?,
        None => Vec::new(),
    };
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
    // --http (issue 17).
    let http = match args.http {
        Some(addr) => {
            if !addr.ip().is_loopback()
                && (client_token.is_none() || worker_token.is_none())
                && !args.insecure
            {
                anyhow::bail!(
                    "refusing to serve --http on {addr} without --client-token-file and --worker-token-file; pass --insecure to do it anyway"
                );
            }
            if args.http_max_connections == 0 || args.http_max_sse == 0 {
                anyhow::bail!("--http-max-connections and --http-max-sse must be positive");
            }
            if args.http_header_timeout == 0 || args.http_idle_timeout == 0 {
                anyhow::bail!("--http-header-timeout and --http-idle-timeout must be positive");
            }
            if let Some(url) = args
                .public_url
                .as_deref()
                .filter(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                anyhow::bail!("--public-url {url:?}: give an absolute http:// or https:// URL");
            }
            Some(builder_server::http::HttpConfig {
                public_url: args.public_url.clone(),
                public_read: args.http_public_read,
                max_connections: args.http_max_connections,
                max_sse: args.http_max_sse,
                max_body: args.http_max_body,
                header_timeout: Duration::from_secs(args.http_header_timeout),
                idle_timeout: Duration::from_secs(args.http_idle_timeout),
                ..builder_server::http::HttpConfig::new(addr)
            })
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
        legacy_peers,
        metrics: args.metrics,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        http,
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
