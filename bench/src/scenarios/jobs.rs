//! Many trivial jobs on one platform: scheduling rate over one protocol
//! connection, then throughput with several `--loop` workers.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use anyhow::{ensure, Result};
use protocol::message::JobOutcome;

use super::{Common, PLATFORM};
use crate::farm::{
    fsync_latency, secs_between, Farm, BUILD_FINISHED, BUILD_STARTED, JOB_FINISHED, JOB_RECEIVED,
    JOB_STARTED, RESULT_STORED, WORKER_CONNECTED,
};
use crate::procs::Deadline;
use crate::report::{kib, percent, secs, Report};

/// Runs the scenario: `count` jobs (`true`), `workers` workers; `name`
/// heads the report (`jobs`, or `dispatch` for issue 12's figure).
pub async fn run(common: &Common, name: &str, count: u32, workers: u32) -> Result<Report> {
    // One `results` answer lists them all: keep it well inside a frame.
    ensure!(
        (1..=100_000).contains(&count),
        "--count must be between 1 and 100000"
    );
    ensure!(
        (1..=256).contains(&workers),
        "--workers must be between 1 and 256"
    );
    let deadline = Deadline::new(common.deadline);
    let mut farm = Farm::start(common, &[], &deadline).await?;
    let fsync = fsync_latency(farm.root(), 50)?;

    // Schedule everything over one connection, one request after another.
    let mut client = farm.connect().await?;
    let server_idle = farm.server.usage();
    let sched_start = Instant::now();
    for i in 1..=count {
        client
            .schedule(&format!("bench-job-{i:06}"), PLATFORM, "true\n")
            .await?;
        if i % 100 == 0 {
            deadline.check("scheduling", String::new)?;
        }
    }
    let sched_took = sched_start.elapsed().as_secs_f64();
    let server_scheduled = farm.server.usage();

    // Then the workers.
    let t0 = SystemTime::now();
    for _ in 0..workers {
        farm.worker(PLATFORM, true)?;
    }
    let first = farm
        .server
        .wait_log("the first build", &deadline, 1, |l| {
            l.contains(BUILD_STARTED)
        })
        .await?
        .at;
    let connected = farm
        .server
        .wait_log(
            "every worker to connect",
            &deadline,
            workers as usize,
            |l| l.contains(WORKER_CONNECTED),
        )
        .await?
        .at;
    let done = farm
        .server
        .wait_log(
            &format!("{count} records"),
            &deadline,
            count as usize,
            |l| l.contains(BUILD_FINISHED),
        )
        .await?
        .at;
    let server = farm.server.usage();
    let worker_usage: Vec<_> = farm.workers.iter().map(|w| w.usage()).collect();

    // The index agrees: every build is listed, and succeeded.
    let results = client.results(count).await?;
    let failed = results
        .iter()
        .filter(|r| r.outcome != JobOutcome::Exited(0))
        .count();
    let first_failed = results
        .iter()
        .find(|r| r.outcome != JobOutcome::Exited(0))
        .map(|r| format!(" (the first: {} {}: {})", r.job, r.uuid, r.outcome))
        .unwrap_or_default();
    ensure!(
        results.len() == count as usize && failed == 0,
        "results lists {} builds, {failed} of them failed{first_failed}; expected {count} successes",
        results.len()
    );
    let job_time: f64 = results
        .iter()
        .map(|r| r.finished.since(r.started).as_secs_f64())
        .sum::<f64>()
        / f64::from(count);

    let run = secs_between(t0, done);
    let busy = secs_between(first, done);
    let mut r = Report::new(format!(
        "{name}: {count} trivial jobs (`true`) queued before {workers} --loop workers connect"
    ));
    r.row(
        "schedule (one connection)",
        format!(
            "{count} jobs in {} = {:.0} jobs/s",
            secs(sched_took),
            f64::from(count) / sched_took
        ),
    );
    r.row(
        "run (workers started → last record)",
        format!(
            "{count} jobs in {} = {:.0} jobs/s",
            secs(run),
            f64::from(count) / run
        ),
    );
    r.row(
        "  first build → last record",
        format!("{} = {:.0} jobs/s", secs(busy), f64::from(count) / busy),
    );
    r.row(
        "  workers started → all connected",
        secs(secs_between(t0, connected)),
    );
    r.row(
        "  per build, per worker",
        format!(
            "{} (the script itself: {} on average)",
            secs(busy * f64::from(workers) / f64::from(count)),
            secs(job_time)
        ),
    );
    let server_sched_cpu = server_scheduled.cpu_secs() - server_idle.cpu_secs();
    let server_run_cpu = server.cpu_secs() - server_scheduled.cpu_secs();
    let phases = Phases::from_logs(&farm);
    r.row(
        "  per build, mean of each step",
        format!(
            "dispatch {}, job setup {}, script {}, store {}, ack {}, next request {} (over {} builds)",
            secs(phases.mean[0]),
            secs(phases.mean[1]),
            secs(phases.mean[2]),
            secs(phases.mean[3]),
            secs(phases.mean[4]),
            secs(phases.mean[5]),
            phases.builds
        ),
    );
    r.row(
        "server CPU",
        format!(
            "scheduling {server_sched_cpu:.2} s ({} of one core), running {server_run_cpu:.2} s ({})",
            percent(server_sched_cpu, sched_took),
            percent(server_run_cpu, run)
        ),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker_cpu: f64 = worker_usage.iter().map(|u| u.cpu_secs()).sum();
    let jobs_cpu: f64 = worker_usage.iter().map(|u| u.children_cpu_secs()).sum();
    r.row(
        "workers' CPU",
        format!(
            "{worker_cpu:.2} s, their jobs {jobs_cpu:.2} s ({cores} cores give {:.2} s)",
            cores as f64 * run
        ),
    );
    // Per build: the server while running, the workers themselves, the
    // jobs (the workers' waited-for children: each job's processes, and
    // before issue 16 a watchdog `sh` per job) and the workers' children
    // still running (since issue 16: one watchdog per worker).
    let live_cpu: f64 = worker_usage
        .iter()
        .map(|u| u.live_children_cpu_secs())
        .sum();
    let per_build = |secs: f64| format!("{:.2} ms", secs * 1000.0 / f64::from(count));
    r.row(
        "CPU per build",
        format!(
            "{} total: server {}, workers {}, jobs {}, watchdogs still running {}",
            per_build(server_run_cpu + worker_cpu + jobs_cpu + live_cpu),
            per_build(server_run_cpu),
            per_build(worker_cpu),
            per_build(jobs_cpu),
            per_build(live_cpu)
        ),
    );
    r.row(
        "fsync latency (state dir)",
        format!("{} median of 50", secs(fsync.as_secs_f64())),
    );
    r.row(
        "server peak RSS (VmHWM)",
        format!(
            "{}  (idle before: {})",
            kib(server.hwm_kib),
            kib(server_idle.rss_kib)
        ),
    );
    r.row(
        "worker peak RSS (VmHWM)",
        kib(worker_usage.iter().map(|u| u.hwm_kib).max().unwrap_or(0)),
    );
    r.row(
        "check",
        format!("results lists {count} builds, all exited 0"),
    );
    Ok(r)
}

/// Where a build's time goes, from the log lines' own time stamps:
/// server `build started` → worker `job received` (dispatch) → `job started`
/// (job directory, script, spawn) → `job finished` (the script, the
/// artifact scan) → server `build finished` (the record written and fsynced,
/// the result committed) → worker `result stored by the server` (ack) →
/// server `build started` of the worker's next build (its request, the
/// claim).
struct Phases {
    /// Mean seconds of each of the six steps.
    mean: [f64; 6],
    /// How many builds had every step.
    builds: usize,
}

impl Phases {
    fn from_logs(farm: &Farm) -> Phases {
        #[derive(Default, Clone, Copy)]
        struct Build {
            at: [Option<SystemTime>; 6],
        }
        let mut builds: HashMap<String, (usize, Build)> = HashMap::new();
        let uuid = |text: &str| {
            text.split_whitespace()
                .find_map(|t| t.strip_prefix("uuid="))
                .map(str::to_owned)
        };
        for (w, worker) in farm.workers.iter().enumerate() {
            for line in worker.lines() {
                let step = if line.text.contains(JOB_RECEIVED) {
                    1
                } else if line.text.contains(JOB_STARTED) {
                    2
                } else if line.text.contains(JOB_FINISHED) {
                    3
                } else if line.text.contains(RESULT_STORED) {
                    5
                } else {
                    continue;
                };
                if let Some(id) = uuid(&line.text) {
                    let entry = builds.entry(id).or_default();
                    entry.0 = w;
                    entry.1.at[step] = Some(line.at);
                }
            }
        }
        for line in farm.server.lines() {
            let step = if line.text.contains(BUILD_STARTED) {
                0
            } else if line.text.contains(BUILD_FINISHED) {
                4
            } else {
                continue;
            };
            if let Some(entry) = uuid(&line.text).and_then(|id| builds.get_mut(&id)) {
                entry.1.at[step] = Some(line.at);
            }
        }
        // Each worker's builds in order, to find the gap to its next one.
        let mut per_worker: Vec<Vec<[SystemTime; 6]>> = vec![Vec::new(); farm.workers.len()];
        for (w, build) in builds.into_values() {
            if build.at.iter().all(Option::is_some) {
                per_worker[w].push(build.at.map(|t| t.expect("checked")));
            }
        }
        let mut sums = [0.0; 6];
        let mut counts = [0usize; 6];
        for builds in &mut per_worker {
            builds.sort_by_key(|b| b[0]);
            for (i, b) in builds.iter().enumerate() {
                for step in 0..5 {
                    sums[step] += secs_between(b[step], b[step + 1]);
                    counts[step] += 1;
                }
                if let Some(next) = builds.get(i + 1) {
                    sums[5] += secs_between(b[5], next[0]);
                    counts[5] += 1;
                }
            }
        }
        let mut mean = [0.0; 6];
        for step in 0..6 {
            if counts[step] > 0 {
                mean[step] = sums[step] / counts[step] as f64;
            }
        }
        Phases {
            mean,
            builds: counts[0],
        }
    }
}
