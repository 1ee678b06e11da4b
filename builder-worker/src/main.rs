//! `builder-worker PLATFORM [-r HOST:PORT] [--loop]`: see the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder_logging::exit;
use builder_worker::cli::Cli;
use builder_worker::{default_name, Config, Refused, EXIT_REFUSED};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let cli = match exit::parse_args::<Cli>(false) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    builder_logging::init(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A final refusal has its own status, which units do not restart.
        Err(e) if e.is::<Refused>() => {
            exit::failure(&e, false);
            ExitCode::from(EXIT_REFUSED)
        }
        Err(e) => exit::failure(&e, false),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let token = protocol::token::load_token(cli.token_file.as_deref())?;
    let token_sent = token.is_some();
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
    runtime
        .block_on(async {
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
        .map_err(|e| with_token_hint(e, token_sent))
}

/// A refused hello that carried no token says how to give one. It stays a
/// [`Refused`], so its exit status stays [`EXIT_REFUSED`].
fn with_token_hint(err: anyhow::Error, token_sent: bool) -> anyhow::Error {
    let hint = err
        .downcast_ref::<Refused>()
        .and_then(|r| protocol::token::refusal_hint(&r.reason, token_sent).map(|h| (r, h)))
        .map(|(r, hint)| format!("{}; {hint}", r.reason));
    match hint {
        Some(reason) => anyhow::Error::new(Refused { reason }),
        None => err,
    }
}
