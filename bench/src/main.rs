//! `builder-bench`: measures the real release binaries (`builder-server`,
//! `builder-worker`, `builder-client`, found next to this executable) on
//! 127.0.0.1 in temporary directories. Speed and memory are measured here,
//! never asserted in tests; results go into `BENCHMARKS.md`.
//!
//! Build first: `cargo build --release --workspace`.

mod farm;
mod procs;
mod report;
mod scenarios;
mod sink;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use report::Report;
use scenarios::Common;

/// Default artifact size of the `artifact` scenario, MiB (issue 12's).
const ARTIFACT_MIB: u64 = 256;
/// Default number of jobs of the `jobs` scenario.
const JOBS: u32 = 2000;
/// Default number of workers of the `jobs` scenario.
const JOB_WORKERS: u32 = 4;
/// Default console of the `console` scenario: lines of 100 bytes.
const CONSOLE_LINES: u64 = 200_000;
/// The big console variant `all` runs, MiB (without an observer).
const CONSOLE_MIB: u64 = 512;
/// Default jobs of the `scale` scenario.
const SCALE_JOBS: u32 = 100_000;
/// The smaller `scale` that `all` runs.
const SCALE_JOBS_IN_ALL: u32 = 10_000;
/// Default deadline of a scenario, seconds.
const DEADLINE_SECS: u64 = 600;
/// Default deadline of `scale`, seconds.
const SCALE_DEADLINE_SECS: u64 = 3600;

/// Benchmarks of builder's release binaries (run `cargo build --release
/// --workspace` first). Each scenario starts its own server and workers on
/// 127.0.0.1 in a temporary directory, stops by itself at its deadline and
/// prints its figures with the command line that produced them.
#[derive(Parser, Debug)]
#[command(name = "builder-bench", version)]
struct Args {
    /// Where the temporary directories go (the artifact scenario needs
    /// about 4x the artifact's size free there).
    #[arg(long, global = true, env = "TMPDIR", default_value = "/tmp")]
    tmpdir: PathBuf,
    /// Where the workers' job directories go (default: next to the
    /// server's state, in --tmpdir). Production workers run on other
    /// hosts: `--worker-tmpdir /dev/shm` keeps their disk work off the
    /// server's disk.
    #[arg(long, global = true)]
    worker_tmpdir: Option<PathBuf>,
    /// How long one scenario may take before it gives up, in seconds
    /// (default: 600; 3600 for `scale`).
    #[arg(long, global = true)]
    deadline_secs: Option<u64>,
    /// One more argument for every builder-server started (repeat for
    /// more), e.g. `--server-arg=--max-console-bytes=1073741824`.
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Scenario {
    /// One job leaves a big artifact: time to store and upload it, and the
    /// peak memory of server and worker against its size.
    Artifact {
        /// Artifact size in MiB.
        #[arg(long, default_value_t = ARTIFACT_MIB)]
        size_mib: u64,
    },
    /// Many trivial jobs: scheduling rate, then jobs per second.
    Jobs {
        /// How many jobs.
        #[arg(long, default_value_t = JOBS)]
        count: u32,
        /// How many `--loop` workers.
        #[arg(long, default_value_t = JOB_WORKERS)]
        workers: u32,
    },
    /// Dispatch: 1000 `true` jobs queued before 8 `--loop` workers
    /// connect; jobs per second (`jobs` with these defaults).
    Dispatch {
        /// How many jobs.
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// How many `--loop` workers.
        #[arg(long, default_value_t = 8)]
        workers: u32,
    },
    /// The dispatch rate of a long queue against that of short ones.
    Drain {
        /// Jobs in the long queue.
        #[arg(long, default_value_t = 5000)]
        count: u32,
        /// Jobs in each short queue.
        #[arg(long, default_value_t = 10)]
        short: u32,
        /// How many short queues, one after the other.
        #[arg(long, default_value_t = 20)]
        batches: u32,
        /// How many `--loop` workers.
        #[arg(long, default_value_t = 4)]
        workers: u32,
    },
    /// One job prints a lot of console as fast as it can, one observer
    /// attached before the first line: time to the record, what the
    /// observer got, server memory.
    Console {
        /// Console lines of 100 bytes.
        #[arg(long, default_value_t = CONSOLE_LINES)]
        lines: u64,
        /// Console size in MiB instead of --lines.
        #[arg(long, conflicts_with = "lines")]
        mib: Option<u64>,
        /// Run without the observer.
        #[arg(long)]
        no_observer: bool,
    },
    /// Server memory per idle worker (and per idle client).
    Idle {
        /// How many idle workers (and clients).
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Only the workers.
        #[arg(long)]
        no_clients: bool,
    },
    /// `schedule` latency from a new client process and over one connection.
    ScheduleLatency {
        /// Calls of each kind.
        #[arg(long, default_value_t = 200)]
        count: u32,
    },
    /// 100 000 scheduled jobs: scheduling rate, info, restart, dispatch.
    Scale {
        /// How many jobs to schedule.
        #[arg(long, default_value_t = SCALE_JOBS)]
        jobs: u32,
    },
    /// `execute` → job start with an idle `--loop` worker.
    Latency {
        /// How many runs.
        #[arg(long, default_value_t = 500)]
        runs: u32,
    },
    /// The farm on HTTP: SSE console throughput with 1/10/100 readers,
    /// `info` latency with idle HTTP connections, RSS per idle event-stream
    /// subscriber.
    Http {
        /// Console lines of 100 bytes.
        #[arg(long, default_value_t = CONSOLE_LINES)]
        lines: u64,
        /// Idle HTTP connections held during the `info` calls.
        #[arg(long, default_value_t = 1000)]
        idle: u32,
        /// Size of the artifact fetched over HTTP, MiB (0: none).
        #[arg(long, default_value_t = 1024)]
        artifact_mib: u64,
    },
    /// Every scenario with its defaults (`scale` with 10 000 jobs, and the
    /// 512 MiB console without observer too), one after the other.
    All,
}

impl Scenario {
    /// The arguments that run this scenario alone.
    fn as_args(&self) -> String {
        match self {
            Scenario::Artifact { size_mib } => format!("artifact --size-mib {size_mib}"),
            Scenario::Jobs { count, workers } => {
                format!("jobs --count {count} --workers {workers}")
            }
            Scenario::Dispatch { count, workers } => {
                format!("dispatch --count {count} --workers {workers}")
            }
            Scenario::Drain {
                count,
                short,
                batches,
                workers,
            } => format!(
                "drain --count {count} --short {short} --batches {batches} --workers {workers}"
            ),
            Scenario::Console {
                lines,
                mib,
                no_observer,
            } => {
                let size = match mib {
                    Some(mib) => format!("--mib {mib}"),
                    None => format!("--lines {lines}"),
                };
                let observer = if *no_observer { " --no-observer" } else { "" };
                format!("console {size}{observer}")
            }
            Scenario::Idle { count, no_clients } => format!(
                "idle --count {count}{}",
                if *no_clients { " --no-clients" } else { "" }
            ),
            Scenario::ScheduleLatency { count } => format!("schedule-latency --count {count}"),
            Scenario::Scale { jobs } => format!("scale --jobs {jobs}"),
            Scenario::Latency { runs } => format!("latency --runs {runs}"),
            Scenario::Http {
                lines,
                idle,
                artifact_mib,
            } => format!("http --lines {lines} --idle {idle} --artifact-mib {artifact_mib}"),
            Scenario::All => "all".into(),
        }
    }

    /// Every scenario as `all` runs it.
    fn all() -> Vec<Scenario> {
        vec![
            Scenario::Dispatch {
                count: 1000,
                workers: 8,
            },
            Scenario::Drain {
                count: 5000,
                short: 10,
                batches: 20,
                workers: 4,
            },
            Scenario::Console {
                lines: CONSOLE_LINES,
                mib: None,
                no_observer: false,
            },
            Scenario::Console {
                lines: CONSOLE_LINES,
                mib: Some(CONSOLE_MIB),
                no_observer: true,
            },
            Scenario::Artifact {
                size_mib: ARTIFACT_MIB,
            },
            Scenario::Idle {
                count: 1000,
                no_clients: false,
            },
            Scenario::ScheduleLatency { count: 200 },
            Scenario::Latency { runs: 500 },
            Scenario::Http {
                lines: CONSOLE_LINES,
                idle: 1000,
                artifact_mib: 1024,
            },
            Scenario::Jobs {
                count: JOBS,
                workers: JOB_WORKERS,
            },
            Scenario::Scale {
                jobs: SCALE_JOBS_IN_ALL,
            },
        ]
    }

    /// The deadline when `--deadline-secs` is not given.
    fn default_deadline(&self) -> Duration {
        Duration::from_secs(match self {
            Scenario::Scale { .. } => SCALE_DEADLINE_SECS,
            _ => DEADLINE_SECS,
        })
    }

    async fn run(&self, common: &Common) -> Result<Report> {
        match *self {
            Scenario::Artifact { size_mib } => scenarios::artifact::run(common, size_mib).await,
            Scenario::Jobs { count, workers } => {
                scenarios::jobs::run(common, "jobs", count, workers).await
            }
            Scenario::Dispatch { count, workers } => {
                scenarios::jobs::run(common, "dispatch", count, workers).await
            }
            Scenario::Drain {
                count,
                short,
                batches,
                workers,
            } => scenarios::drain::run(common, count, short, batches, workers).await,
            Scenario::Console {
                lines,
                mib,
                no_observer,
            } => {
                let size = mib.map_or(
                    scenarios::console::Size::Lines(lines),
                    scenarios::console::Size::Mib,
                );
                scenarios::console::run(common, size, !no_observer).await
            }
            Scenario::Idle { count, no_clients } => {
                scenarios::idle::run(common, count, !no_clients).await
            }
            Scenario::ScheduleLatency { count } => {
                scenarios::schedule_latency::run(common, count).await
            }
            Scenario::Scale { jobs } => scenarios::scale::run(common, jobs).await,
            Scenario::Latency { runs } => scenarios::latency::run(common, runs).await,
            Scenario::Http {
                lines,
                idle,
                artifact_mib,
            } => scenarios::http::run(common, lines, idle, artifact_mib).await,
            Scenario::All => unreachable!("expanded by the caller"),
        }
    }
}

/// The command line as typed, quoted for a shell where needed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(args: Args) -> Result<()> {
    let bins = procs::Binaries::locate()?;
    if cfg!(debug_assertions) || bins.dir().file_name() != Some("release".as_ref()) {
        eprintln!(
            "warning: these are not release binaries ({}); the figures mean little. \
             Run `cargo build --release --workspace && target/release/builder-bench ...`",
            bins.dir().display()
        );
    }
    let command = command_line();
    let runs = match args.scenario {
        Scenario::All => Scenario::all(),
        one => vec![one],
    };
    let all = runs.len() > 1;
    for scenario in runs {
        let shown = if all {
            let exe = std::env::args()
                .next()
                .unwrap_or_else(|| "builder-bench".into());
            format!("{command}  (the same as: {exe} {})", scenario.as_args())
        } else {
            command.clone()
        };
        eprintln!("running: {}", scenario.as_args());
        let common = Common {
            tmpdir: args.tmpdir.clone(),
            worker_tmpdir: args.worker_tmpdir.clone(),
            deadline: args
                .deadline_secs
                .map_or_else(|| scenario.default_deadline(), Duration::from_secs),
            server_args: args.server_args.clone(),
        };
        let load = report::load();
        let report = scenario.run(&common).await?;
        println!("{}", report.render(&shown, &load));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Children are spawned from this (main) thread: block_on runs the
    // scenarios here, so their parent-death signal stays armed while we run.
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            // Dropping the scenario stops its processes and removes its
            // directory before we exit.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_with_defaults() {
        let args = Args::try_parse_from(["builder-bench", "artifact"]).unwrap();
        assert_eq!(args.scenario, Scenario::Artifact { size_mib: 256 });
        let args = Args::try_parse_from(["builder-bench", "jobs", "--count", "10"]).unwrap();
        assert_eq!(
            args.scenario,
            Scenario::Jobs {
                count: 10,
                workers: 4
            }
        );
        let args =
            Args::try_parse_from(["builder-bench", "console", "--deadline-secs", "5"]).unwrap();
        assert_eq!(
            args.scenario,
            Scenario::Console {
                lines: 200_000,
                mib: None,
                no_observer: false
            }
        );
        assert_eq!(args.deadline_secs, Some(5));
        assert_eq!(args.scenario.as_args(), "console --lines 200000");
        let args =
            Args::try_parse_from(["builder-bench", "console", "--mib", "512", "--no-observer"])
                .unwrap();
        assert_eq!(args.scenario.as_args(), "console --mib 512 --no-observer");
        assert!(
            Args::try_parse_from(["builder-bench", "console", "--mib", "1", "--lines", "2"])
                .is_err()
        );
        let args = Args::try_parse_from([
            "builder-bench",
            "console",
            "--server-arg",
            "--max-console-bytes=1024",
            "--server-arg=-v",
        ])
        .unwrap();
        assert_eq!(args.server_args, ["--max-console-bytes=1024", "-v"]);
        assert!(Args::try_parse_from(["builder-bench"]).is_err());
        assert!(Args::try_parse_from(["builder-bench", "jobs", "--count", "x"]).is_err());
    }

    #[test]
    fn every_scenario_round_trips_through_its_arguments() {
        for scenario in Scenario::all() {
            let line = format!("builder-bench {}", scenario.as_args());
            let args = Args::try_parse_from(line.split_whitespace()).unwrap();
            assert_eq!(args.scenario, scenario, "{line}");
        }
        let scale = Args::try_parse_from(["builder-bench", "scale"]).unwrap();
        assert_eq!(scale.scenario, Scenario::Scale { jobs: 100_000 });
        assert_eq!(scale.scenario.default_deadline(), Duration::from_secs(3600));
        let idle = Args::try_parse_from(["builder-bench", "idle"]).unwrap();
        assert_eq!(idle.scenario.as_args(), "idle --count 1000");
    }
}
