//! How long one `schedule` takes: from a new `builder-client` process
//! (what an operator or a script sees), and over one open protocol
//! connection (the server's part alone). `builder-client --version` gives
//! the process start without any network.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use super::{Common, PLATFORM};
use crate::farm::{fsync_latency, Farm};
use crate::procs::Deadline;
use crate::report::{kib, latencies, Report};

/// Runs the scenario: `n` schedules of each kind.
pub async fn run(common: &Common, n: u32) -> Result<Report> {
    ensure!(
        (1..=100_000).contains(&n),
        "--count must be between 1 and 100000"
    );
    let deadline = Deadline::new(common.deadline);
    let farm = Farm::start(common, &[], &deadline).await?;
    let fsync = fsync_latency(farm.root(), 50)?;

    let mut process = Vec::with_capacity(n as usize);
    for i in 0..n {
        let took = farm.schedule_with_client(&format!("sched-proc-{i:06}"), PLATFORM, "true\n")?;
        process.push(took.as_secs_f64());
        deadline.check("builder-client schedule", String::new)?;
    }

    let mut start_only = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let start = Instant::now();
        let status = Command::new(farm.bin("builder-client"))
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot run builder-client --version")?;
        start_only.push(start.elapsed().as_secs_f64());
        if !status.success() {
            bail!("builder-client --version failed: {status}");
        }
        deadline.check("builder-client --version", String::new)?;
    }

    let mut client = farm.connect().await?;
    let mut wire = Vec::with_capacity(n as usize);
    for i in 0..n {
        let start = Instant::now();
        client
            .schedule(&format!("sched-conn-{i:06}"), PLATFORM, "true\n")
            .await?;
        wire.push(start.elapsed().as_secs_f64());
        deadline.check("schedule over one connection", String::new)?;
    }
    let server = farm.server.usage();

    let mut r = Report::new(format!(
        "schedule-latency: {n} `schedule` calls from new builder-client processes, \
         then {n} over one protocol connection (no worker; each job is queued)"
    ));
    r.row(
        "builder-client schedule (new process)",
        format!("{}  (goal: median < 2 ms)", latencies(&process)),
    );
    r.row(
        "  builder-client --version (process start alone)",
        latencies(&start_only),
    );
    r.row("schedule over one connection", latencies(&wire));
    r.row(
        "fsync latency (state dir)",
        format!("{} median of 50", crate::report::secs(fsync.as_secs_f64())),
    );
    r.row("server peak RSS (VmHWM)", kib(server.hwm_kib));
    r.row("check", format!("{} schedules answered Success", 2 * n));
    Ok(r)
}
