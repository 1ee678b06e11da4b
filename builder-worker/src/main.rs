//! `builder-worker PLATFORM [-r HOST:PORT] [--loop]`: see the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_worker::cli::Cli;
use builder_worker::{default_name, Config, Refused, EXIT_REFUSED};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    builder_logging::init(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A final refusal has its own status, which units do not restart.
            if e.is::<Refused>() {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::FAILURE
            }
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
        timeouts: protocol::handshake::Timeouts {
            connect: cli.connect_timeout,
            hello: cli.hello_timeout,
        },
        connect_retry: cli.connect_retry,
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
