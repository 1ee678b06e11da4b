//! `builder-worker PLATFORM [-r HOST:PORT] [--loop]`: see the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_worker::{check_name, default_name, read_token_file, Config, DEFAULT_REMOTE};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// Runs builder jobs of one platform: connects to the server, runs the job's
/// script in a fresh directory under $TMPDIR, and reports its console, result
/// and artifacts.
#[derive(Debug, Parser)]
#[command(name = "builder-worker", version)]
struct Cli {
    /// The platform whose jobs this worker runs.
    platform: String,

    /// The server to connect to.
    #[arg(
        short,
        long,
        value_name = "HOST:PORT",
        env = "BUILDER_REMOTE",
        default_value = DEFAULT_REMOTE
    )]
    remote: String,

    /// Keep serving jobs (and reconnecting) instead of exiting after one.
    #[arg(long = "loop")]
    looping: bool,

    /// Read the worker token from the first line of FILE [default: the
    /// BUILDER_TOKEN variable].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    kill_grace: u64,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Give up connecting to the server after SECS seconds (then retry
    /// with --loop).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = protocol::codec::parse_timeout_secs)]
    connect_timeout: Duration,

    /// Give up when the server has not answered the hello after SECS
    /// seconds (the peer is then probably not a builder-server).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = protocol::codec::parse_timeout_secs)]
    hello_timeout: Duration,

    /// This worker's name in the server's `info` [default: HOST/PID].
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,

    /// Log line format on stderr: text or json.
    #[arg(long, value_name = "FORMAT", default_value_t = builder_logging::LogFormat::Text)]
    log_format: builder_logging::LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    builder_logging::init(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let token = match &cli.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => std::env::var("BUILDER_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    };
    let config = Config {
        platform: cli.platform,
        remote: cli.remote,
        token,
        looping: cli.looping,
        kill_grace: Duration::from_secs(cli.kill_grace),
        timeouts: protocol::codec::HandshakeTimeouts {
            connect: cli.connect_timeout,
            hello: cli.hello_timeout,
        },
        tmpdir: std::env::temp_dir(),
        host: cli.name.unwrap_or_else(default_name),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        builder_worker::run(config, shutdown).await
    })
}

fn parse_name(name: &str) -> Result<String, String> {
    check_name(name).map(|()| name.to_owned())
}
