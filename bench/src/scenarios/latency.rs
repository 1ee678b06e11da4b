//! From `execute` to the job's start with an idle `--loop` worker.
//!
//! One job (`true`) is scheduled once; then, `runs` times, the benchmark
//! sends `execute` over an open protocol connection (so no client process
//! start is counted) and reads when the worker started the script: the
//! time stamp of the worker's `job started` line, logged right after it
//! spawned the script. Between runs it waits for the worker's `result
//! stored by the server` line and 20 ms more, so the worker is idle again
//! (its next job request sent) when `execute` goes out.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Result};

use super::{Common, PLATFORM};
use crate::farm::{secs_between, Farm, BUILD_STARTED, JOB_STARTED, RESULT_STORED};
use crate::procs::Deadline;
use crate::report::{latencies, Report};

const JOB: &str = "bench-latency";

/// How long the worker gets after its previous build to ask for the next.
const SETTLE: Duration = Duration::from_millis(20);

/// Runs the scenario with `runs` executes.
pub async fn run(common: &Common, runs: u32) -> Result<Report> {
    ensure!(
        (1..=100_000).contains(&runs),
        "--runs must be between 1 and 100000"
    );
    let deadline = Deadline::new(common.deadline);
    let mut farm = Farm::start(common, &[], &deadline).await?;
    super::drain::start_workers(&mut farm, 1, &deadline).await?;
    let mut client = farm.connect().await?;
    // The first run comes from scheduling it.
    client.schedule(JOB, PLATFORM, "true\n").await?;

    let (mut to_script, mut to_dispatch, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs as usize {
        farm.workers[0]
            .wait_log("the previous build's ack", &deadline, i, |l| {
                l.contains(RESULT_STORED)
            })
            .await?;
        tokio::time::sleep(SETTLE).await;
        let t0 = SystemTime::now();
        let sent = Instant::now();
        client.execute(JOB).await?;
        acks.push(sent.elapsed().as_secs_f64());
        let dispatched = farm
            .server
            .wait_log("the build to start", &deadline, i + 1, |l| {
                l.contains(BUILD_STARTED)
            })
            .await?
            .at;
        let started = farm.workers[0]
            .wait_log("the script to start", &deadline, i + 1, |l| {
                l.contains(JOB_STARTED)
            })
            .await?
            .at;
        to_dispatch.push(secs_between(t0, dispatched));
        to_script.push(secs_between(t0, started));
    }
    let server = farm.server.usage();

    let mut r = Report::new(format!(
        "latency: `execute` → job start with one idle --loop worker, {runs} runs"
    ));
    r.row(
        "execute → script started",
        format!("{}  (goal: p50 < 5 ms, p99 < 20 ms)", latencies(&to_script)),
    );
    r.row(
        "  execute → build started (server)",
        latencies(&to_dispatch),
    );
    r.row("  execute answered (round trip)", latencies(&acks));
    r.row(
        "method",
        "execute over an open protocol connection; job start = the worker's `job started` \
         log line (logged once the script is spawned); server and worker log on this clock",
    );
    r.row(
        "server peak RSS (VmHWM)",
        crate::report::kib(server.hwm_kib),
    );
    Ok(r)
}
