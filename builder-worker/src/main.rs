//! `builder-worker PLATFORM [-r HOST:PORT] [--loop]`: see the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_worker::{host_name, Config};
use clap::Parser;
use protocol::DEFAULT_REMOTE;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let token = protocol::token::load_token(cli.token_file.as_deref())?;
    let config = Config {
        platform: cli.platform,
        remote: cli.remote,
        token,
        looping: cli.looping,
        kill_grace: Duration::from_secs(cli.kill_grace),
        tmpdir: std::env::temp_dir(),
        host: host_name(),
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
