//! `builder-server [--ip IP] [--port PORT] [--dir DIR] [--config-dir DIR] [--upload URL] ...`
//! `builder-server --dir DIR --import-state FILE [--force]`

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use builder_server::cli::Args;
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
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let command = <Args as clap::CommandFactory>::command();
            return builder_logging::exit::usage_error(e, command, false);
        }
    };
    builder_logging::init(args.verbose, args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => builder_logging::exit::failure(&e, false),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(file) = &args.import_state {
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
    let addr = SocketAddr::new(args.ip, args.port);
    let config = Config::try_from(args)?;
    raise_open_file_limit(&config);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Before anything else: a SIGHUP from here on is logged, not fatal.
        let signals = Signals::new()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        builder_server::run(config, listener, signals.shutdown()).await
    })
}

/// Raises the soft limit on open files to the hard one (systemd starts
/// services at 1024 soft, 524288 hard): every connection is a file, and a
/// server out of them cannot even accept a connection to evict an idle
/// one. Warns when the limit is below what the connection budgets need.
fn raise_open_file_limit(config: &Config) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // The budgets, plus room for the database, spools, uploads and metrics.
    let needed = config.max_connections + config.max_unauthenticated + 256;
    let have = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    if have < needed {
        tracing::warn!(
            open_files = have,
            needed,
            "the open-file limit (ulimit -n) is below --max-connections plus --max-unauthenticated; raise it (LimitNOFILE= in a systemd unit) or lower those"
        );
    }
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
