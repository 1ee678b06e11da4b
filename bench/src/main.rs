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

/// Default artifact size of the `artifact` scenario, MiB.
const ARTIFACT_MIB: u64 = 2048;
/// Default number of jobs of the `jobs` scenario.
const JOBS: u32 = 2000;
/// Default number of workers of the `jobs` scenario.
const JOB_WORKERS: u32 = 4;
/// Default console size of the `console` scenario, MiB.
const CONSOLE_MIB: u64 = 512;

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
    /// How long one scenario may take before it gives up, in seconds.
    #[arg(long, global = true, default_value_t = 600)]
    deadline_secs: u64,
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
    /// One job prints a lot of console: throughput into the record.
    Console {
        /// Console size in MiB.
        #[arg(long, default_value_t = CONSOLE_MIB)]
        mib: u64,
    },
    /// The three scenarios with their defaults, one after the other.
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
            Scenario::Console { mib } => format!("console --mib {mib}"),
            Scenario::All => "all".into(),
        }
    }

    async fn run(&self, common: &Common) -> Result<Report> {
        match *self {
            Scenario::Artifact { size_mib } => scenarios::artifact::run(common, size_mib).await,
            Scenario::Jobs { count, workers } => scenarios::jobs::run(common, count, workers).await,
            Scenario::Console { mib } => scenarios::console::run(common, mib).await,
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
    let common = Common {
        tmpdir: args.tmpdir,
        worker_tmpdir: args.worker_tmpdir,
        deadline: Duration::from_secs(args.deadline_secs),
        server_args: args.server_args,
    };
    let command = command_line();
    let runs = match args.scenario {
        Scenario::All => vec![
            Scenario::Artifact {
                size_mib: ARTIFACT_MIB,
            },
            Scenario::Jobs {
                count: JOBS,
                workers: JOB_WORKERS,
            },
            Scenario::Console { mib: CONSOLE_MIB },
        ],
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
        let report = scenario.run(&common).await?;
        println!("{}", report.render(&shown));
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
        assert_eq!(args.scenario, Scenario::Artifact { size_mib: 2048 });
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
        assert_eq!(args.scenario, Scenario::Console { mib: 512 });
        assert_eq!(args.deadline_secs, 5);
        assert_eq!(args.scenario.as_args(), "console --mib 512");
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
}
