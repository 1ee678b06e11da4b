//! The command line of `builder-client` (clap derive).
//!
//! Compatible with the reference client (SPEC §2a): the same commands and
//! positional arguments, `-r/--remote` and `BUILDER_REMOTE`. Additions:
//! `--cron`, `--timeout`, `--token-file`/`BUILDER_TOKEN`, `--json`, `cancel`,
//! `results`, `show`, `update`, `fetch`, `execute --observe` and
//! `observe-latest --wait`. Global options are accepted before or after the command.
//!
//! Everything that can be checked without the server is checked here, while
//! parsing (cron expressions, periods, RFC 3339 times, UUIDs, the remote
//! address), so a typo never reaches the network.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use protocol::message::Timestamp;
use protocol::trigger::Trigger;
use protocol::DEFAULT_REMOTE;
use uuid::Uuid;

/// builder-client: change and observe the schedule of a builder server.
#[derive(Parser, Debug)]
#[command(name = "builder-client", version)]
pub struct Cli {
    /// The server, as HOST:PORT (`127.0.0.1:1234`, `build.example:1234`,
    /// `[::1]:1234`).
    #[arg(
        short = 'r',
        long = "remote",
        global = true,
        env = "BUILDER_REMOTE",
        default_value = DEFAULT_REMOTE,
        value_name = "HOST:PORT",
        value_parser = parse_remote
    )]
    pub remote: String,

    /// Read the client token from the first line of FILE (surrounding
    /// whitespace is ignored). Without it, the `BUILDER_TOKEN` variable is
    /// used if set.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print machine-readable JSON instead of text (NDJSON for observe).
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Give up connecting to the server after SECS seconds.
    #[arg(long, global = true, value_name = "SECS", default_value = "10", value_parser = protocol::handshake::parse_timeout_secs)]
    pub connect_timeout: std::time::Duration,

    /// Give up when the server has not answered the hello after SECS
    /// seconds (the peer is then probably not a builder-server).
    #[arg(long, global = true, value_name = "SECS", default_value = "10", value_parser = protocol::handshake::parse_timeout_secs)]
    pub hello_timeout: std::time::Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The connect and hello timeouts given on the command line.
    pub fn timeouts(&self) -> protocol::handshake::Timeouts {
        protocol::handshake::Timeouts {
            connect: self.connect_timeout,
            hello: self.hello_timeout,
        }
    }
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Schedule a shell script job on one platform (and queue it at once).
    ///
    /// The job contract: a worker of PLATFORM runs the script in a fresh,
    /// empty directory under its $TMPDIR (its working directory, removed
    /// afterwards), with stdin from /dev/null and stdout+stderr as the
    /// console. It inherits the worker's environment, except BUILDER_TOKEN,
    /// which is removed. Every regular file it leaves in the directory
    /// (script.sh excepted; symlinks not followed) is an artifact. The worker
    /// does not isolate it: it runs as the worker's user with the worker's
    /// network, file system, CPU and memory, so run workers in a sandbox
    /// (jail, container, VM) when that matters.
    #[command(verbatim_doc_comment)]
    Schedule {
        /// Unique job name.
        name: String,
        /// The platform whose workers run it.
        platform: String,
        /// The script to run (read now, sent to the server).
        script_file: PathBuf,
        /// When it runs.
        #[command(flatten)]
        trigger: TriggerArgs,
        /// Kill the job after SECS seconds (default: the server's).
        #[arg(long, value_name = "SECS", value_parser = parse_job_timeout)]
        timeout: Option<u64>,
    },
    /// Schedule an opam package built with orb on every platform the server
    /// has a template for (and queue it at once).
    OrbBuild {
        /// Unique job name.
        name: String,
        /// The opam package to build.
        opam_package: String,
        /// When it runs.
        #[command(flatten)]
        trigger: TriggerArgs,
        /// Kill the job after SECS seconds (default: the server's).
        #[arg(long, value_name = "SECS", value_parser = parse_job_timeout)]
        timeout: Option<u64>,
    },
    /// Remove a job from the schedule and from every queue.
    Unschedule {
        /// The job.
        name: String,
    },
    /// Set a job's next run to exactly NEXT (and optionally its trigger);
    /// nothing is queued now. NEXT must be in the future: to run a job now,
    /// use `execute NAME`.
    Reschedule {
        /// The job.
        name: String,
        /// Its next run, an RFC 3339 time in the future
        /// (`2025-01-31T04:00:00Z`).
        #[arg(value_parser = parse_rfc3339)]
        next: Timestamp,
        /// When it runs.
        #[command(flatten)]
        trigger: TriggerArgs,
    },
    /// Put a job at the front of its queue(s) now; its schedule is unchanged.
    /// Prints the UUID of each build it queued.
    Execute {
        /// The job.
        name: String,
        /// Only on this platform (orb-build jobs run on all otherwise).
        #[arg(long, value_name = "P")]
        platform: Option<String>,
        /// Follow the build this queued, from its first line, and exit with
        /// its status (an orb-build job on several platforms needs
        /// --platform).
        #[arg(long)]
        observe: bool,
    },
    /// Show the schedule (without scripts), queues, running builds, dropped
    /// platforms and connected workers.
    Info,
    /// Show one scheduled job with its script.
    Show {
        /// The job.
        name: String,
    },
    /// Follow a build's console and result; exits with the build's status.
    ///
    /// A build keeps its UUID from the moment it is queued to its result,
    /// also when it is requeued after losing its worker: observe waits while
    /// it is queued, and follows it into its next attempt ("worker lost;
    /// requeued (attempt 2)" on stderr).
    Observe {
        /// The build.
        #[arg(value_parser = parse_uuid)]
        uuid: Uuid,
    },
    /// Follow the newest build matching the filters; exits with its status.
    ObserveLatest {
        /// Only builds on this platform.
        #[arg(long, value_name = "P")]
        platform: Option<String>,
        /// Only builds of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Wait for the next matching build to start and follow it from its
        /// first line, instead of showing the newest one.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a platform's queue and script jobs; refuse new ones.
    DropPlatform {
        /// The platform.
        platform: String,
    },
    /// Accept a dropped platform again.
    UndropPlatform {
        /// The platform.
        platform: String,
    },
    /// Stop a running build; it is recorded as aborted (`cancelled`).
    Cancel {
        /// The build.
        #[arg(value_parser = parse_uuid)]
        uuid: Uuid,
    },
    /// Change a scheduled job in place: it keeps its name, its history and,
    /// unless its trigger changes, its next run. Queued runs take the
    /// change too.
    Update {
        /// The job.
        name: String,
        /// A new script (read now, sent to the server).
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        /// A new trigger (its phase starts now).
        #[command(flatten)]
        trigger: TriggerArgs,
        /// A new timeout: kill the job after SECS seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_job_timeout)]
        timeout: Option<u64>,
        /// A new platform (script jobs only).
        #[arg(long, value_name = "P")]
        platform: Option<String>,
    },
    /// Download a stored build over the protocol: its record as DIR/full,
    /// or with --artifacts its artifacts under DIR (the same rules as
    /// `builder-inspect --output`: nothing outside DIR, nothing
    /// overwritten, no symlink followed).
    Fetch {
        /// The build.
        #[arg(value_parser = parse_uuid)]
        uuid: Uuid,
        /// Where to write (created if missing).
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        /// Write the artifacts instead of the record.
        #[arg(long)]
        artifacts: bool,
    },
    /// List recent builds with their result and upload state, newest first.
    Results {
        /// Only this job's builds.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// At most N builds.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: u32,
    },
}

/// When a job runs: `--period` or `--cron`, not both.
#[derive(Args, Debug, Clone, Default)]
pub struct TriggerArgs {
    /// hourly, daily, weekly or never (default for a new job: daily).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "P",
        conflicts_with = "cron"
    )]
    pub period: Option<Period>,
    /// A cron expression instead of a period (`"0 3 * * *"`).
    #[arg(long, value_name = "EXPR", value_parser = parse_cron)]
    pub cron: Option<Trigger>,
}

impl TriggerArgs {
    /// The trigger the user asked for, if any.
    pub fn trigger(&self) -> Option<Trigger> {
        match (&self.period, &self.cron) {
            (Some(p), _) => Some(p.trigger()),
            (None, Some(c)) => Some(c.clone()),
            (None, None) => None,
        }
    }
}

/// The reference's named periods.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Every hour.
    Hourly,
    /// Every day.
    Daily,
    /// Every week.
    Weekly,
    /// Only when scheduled and on `execute`.
    Never,
}

impl Period {
    /// The wire trigger for this period.
    pub fn trigger(self) -> Trigger {
        match self {
            Period::Hourly => Trigger::Hourly,
            Period::Daily => Trigger::Daily,
            Period::Weekly => Trigger::Weekly,
            Period::Never => Trigger::Never,
        }
    }
}

/// Checks `HOST:PORT`: a socket address, or a host name and a port. A bare
/// IPv6 address must be bracketed (`[::1]:1234`).
pub fn parse_remote(s: &str) -> Result<String, String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let bad = |why: &str| Err(format!("invalid remote '{s}': {why} (expected HOST:PORT)"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("no port");
    };
    if host.is_empty() {
        return bad("no host");
    }
    if host.contains(':') || host.starts_with('[') {
        return bad("IPv6 addresses must be written [ADDRESS]:PORT");
    }
    if port.parse::<u16>().is_err() {
        return bad("the port must be a number from 0 to 65535");
    }
    Ok(s.to_owned())
}

/// Parses and validates a cron expression; the error quotes it.
pub fn parse_cron(s: &str) -> Result<Trigger, String> {
    Trigger::cron(s).map_err(|e| e.to_string())
}

/// Parses a job timeout in whole seconds, at least 1.
pub fn parse_job_timeout(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("the timeout must be at least 1 second (e.g. 3600 for an hour)".into()),
        Ok(secs) => Ok(secs),
        Err(_) => Err(format!(
            "'{s}' is not a whole number of seconds (e.g. 3600 for an hour)"
        )),
    }
}

/// Parses an RFC 3339 time; the error quotes it and, for a time without
/// its UTC offset or a date alone, says what to add.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| {
            let local = |f| chrono::NaiveDateTime::parse_from_str(s, f).is_ok();
            if local("%Y-%m-%dT%H:%M:%S%.f") || local("%Y-%m-%d %H:%M:%S%.f") {
                format!(
                    "time '{s}' has no UTC offset: add Z for UTC or the offset (e.g. {s}Z or {s}+01:00)"
                )
            } else if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
                format!(
                    "'{s}' is a date without a time: give the time and its UTC offset (e.g. {s}T04:00:00Z)"
                )
            } else {
                format!("invalid RFC 3339 time '{s}': {e} (example: 2025-01-31T04:00:00Z)")
            }
        })?
        .with_timezone(&chrono::Utc);
    t.timestamp_nanos_opt()
        .map(Timestamp)
        .ok_or_else(|| format!("time '{s}' is out of range (years 1678 to 2261)"))
}

/// Parses a UUID; the error quotes it.
pub fn parse_uuid(s: &str) -> Result<Uuid, String> {
    Uuid::parse_str(s).map_err(|e| format!("invalid UUID '{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn remote_forms() {
        for ok in [
            "127.0.0.1:1234",
            "[::1]:1234",
            "localhost:1",
            "build.example.org:65535",
        ] {
            assert_eq!(parse_remote(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "127.0.0.1",
            "::1:1234",
            ":1234",
            "host:port",
            "host:70000",
            "[::1]",
        ] {
            let err = parse_remote(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let t = parse_rfc3339("2025-01-31T04:00:00.5+01:00").unwrap();
        assert_eq!(
            t.to_datetime().to_rfc3339(),
            "2025-01-31T03:00:00.500+00:00"
        );
        let err = parse_rfc3339("tomorrow").unwrap_err();
        assert!(err.contains("'tomorrow'"), "{err}");
        let err = parse_rfc3339("2025-01-31").unwrap_err();
        assert!(err.contains("2025-01-31T04:00:00Z"), "{err}");
        let err = parse_rfc3339("2030-01-01T00:00:00").unwrap_err();
        assert!(err.contains("no UTC offset"), "{err}");
        assert!(err.contains("2030-01-01T00:00:00Z"), "{err}");
        assert!(parse_rfc3339("3000-01-01T00:00:00Z")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn job_timeouts() {
        assert_eq!(parse_job_timeout("60"), Ok(60));
        assert!(parse_job_timeout("0")
            .unwrap_err()
            .contains("at least 1 second"));
        assert!(parse_job_timeout("-1").unwrap_err().contains("'-1'"));
    }

    #[test]
    fn global_options_before_or_after_the_command() {
        let before = Cli::try_parse_from(["c", "-r", "h:1", "--json", "info"]).unwrap();
        let after = Cli::try_parse_from(["c", "info", "-r", "h:1", "--json"]).unwrap();
        for cli in [before, after] {
            assert_eq!(cli.remote, "h:1");
            assert!(cli.json);
            assert!(matches!(cli.command, Command::Info));
        }
    }

    #[test]
    fn period_and_cron_are_exclusive() {
        let err = Cli::try_parse_from([
            "c",
            "schedule",
            "j",
            "p",
            "f",
            "--period",
            "daily",
            "--cron",
            "0 * * * *",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn triggers() {
        let cli =
            Cli::try_parse_from(["c", "schedule", "j", "p", "f", "--period", "weekly"]).unwrap();
        let Command::Schedule { trigger, .. } = cli.command else {
            panic!()
        };
        assert_eq!(trigger.trigger(), Some(Trigger::Weekly));
        let cli = Cli::try_parse_from(["c", "orb-build", "j", "pkg"]).unwrap();
        let Command::OrbBuild { trigger, .. } = cli.command else {
            panic!()
        };
        assert_eq!(trigger.trigger(), None);
    }
}
