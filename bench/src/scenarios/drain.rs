//! The dispatch rate against the queue's length: `--loop` workers drain a
//! long queue (5000 `true` jobs), then the same workers run many small
//! batches of 10 queued jobs; the two rates should be about the same.
//!
//! How a batch is queued while the workers are connected: each worker is
//! first given a blocker job that waits for a gate file; the batch is
//! scheduled while they wait, then the gate opens. The rate is read from
//! the server's `build started` lines: for each worker, the time from one
//! build of the batch to its next build of the batch (its *cycle*: the
//! script, the record, the ack, the next request and the claim). Blockers
//! and the gaps around them are not counted, nor the partial last round of
//! a small batch, so both queue lengths are measured the same way.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use anyhow::{ensure, Result};

use super::{Common, PLATFORM};
use crate::farm::{secs_between, sh_quote, Client, Farm, BUILD_FINISHED, BUILD_STARTED};
use crate::procs::Deadline;
use crate::report::{percent, secs, Report};

/// Runs the scenario: `long` queued jobs, then `batches` batches of
/// `short` queued jobs, on `workers` `--loop` workers.
pub async fn run(
    common: &Common,
    long: u32,
    short: u32,
    batches: u32,
    workers: u32,
) -> Result<Report> {
    ensure!(
        (1..=100_000).contains(&long),
        "--count must be between 1 and 100000"
    );
    ensure!(
        (1..=1000).contains(&short),
        "--short must be between 1 and 1000"
    );
    ensure!(
        (1..=1000).contains(&batches),
        "--batches must be between 1 and 1000"
    );
    ensure!(
        (1..=64).contains(&workers),
        "--workers must be between 1 and 64"
    );
    let deadline = Deadline::new(common.deadline);
    let mut farm = Farm::start(common, &[], &deadline).await?;
    start_workers(&mut farm, workers, &deadline).await?;
    let mut client = farm.connect().await?;

    let mut small = Cycles::default();
    let started = Instant::now();
    for b in 0..batches {
        let tag = format!("drain-small-{b:04}");
        gated_batch(&mut farm, &mut client, &tag, short, workers, &deadline).await?;
        small.add(&cycles(&farm, &tag));
    }
    let small_took = started.elapsed().as_secs_f64();

    let tag = "drain-long";
    let wall = gated_batch(&mut farm, &mut client, tag, long, workers, &deadline).await?;
    let big = cycles(&farm, tag);
    let server = farm.server.usage();

    let mut r = Report::new(format!(
        "drain: {long} queued `true` jobs, then {batches} batches of {short} queued, \
         on {workers} --loop workers"
    ));
    r.row(
        format!("{long} queued: first build → last record"),
        format!(
            "{} = {:.0} jobs/s",
            secs(wall),
            f64::from(long) / wall.max(f64::MIN_POSITIVE)
        ),
    );
    r.row(
        format!("{long} queued: per-worker cycle"),
        big.describe(workers),
    );
    r.row(
        format!("{short} queued: per-worker cycle"),
        format!(
            "{}  ({batches} batches in {})",
            small.describe(workers),
            secs(small_took)
        ),
    );
    r.row(
        format!("ratio {long} queued / {short} queued"),
        format!(
            "{}  (goal ≥ 90%)",
            percent(big.rate(workers), small.rate(workers))
        ),
    );
    r.row(
        "method",
        "rate = workers / mean cycle; cycle = a worker's `build started` to its next \
         `build started` within the batch (server log time stamps)",
    );
    r.row(
        "server peak RSS (VmHWM)",
        crate::report::kib(server.hwm_kib),
    );
    Ok(r)
}

/// Starts `workers` `--loop` workers and waits until all are connected.
pub async fn start_workers(farm: &mut Farm, workers: u32, deadline: &Deadline) -> Result<()> {
    let before = farm
        .server
        .lines()
        .iter()
        .filter(|l| l.text.contains(crate::farm::WORKER_CONNECTED))
        .count();
    for _ in 0..workers {
        farm.worker(PLATFORM, true)?;
    }
    farm.server
        .wait_log(
            "the workers to connect",
            deadline,
            before + workers as usize,
            |l| l.contains(crate::farm::WORKER_CONNECTED),
        )
        .await?;
    Ok(())
}

/// Queues `count` `true` jobs named `{tag}-NNNNNN` while each of the
/// `workers` (connected, idle) workers is held by a blocker job, then
/// releases them and waits until every job's record is stored. Returns
/// the seconds from the first build of the batch started to its last
/// record.
pub async fn gated_batch(
    farm: &mut Farm,
    client: &mut Client,
    tag: &str,
    count: u32,
    workers: u32,
    deadline: &Deadline,
) -> Result<f64> {
    let gate = farm.marks_dir().join(format!("{tag}.go"));
    let blocker = format!(
        "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.01; done\n",
        sh_quote(&gate)
    );
    let blockers = format!("job=\"{tag}-block-");
    for w in 0..workers {
        client
            .schedule(&format!("{tag}-block-{w:03}"), PLATFORM, &blocker)
            .await?;
    }
    farm.server
        .wait_log(
            "every worker to take a blocker",
            deadline,
            workers as usize,
            |l| l.contains(BUILD_STARTED) && l.contains(&blockers),
        )
        .await?;
    schedule_many(client, tag, count, deadline).await?;
    std::fs::write(&gate, b"")?;
    let jobs = format!("job=\"{tag}-0");
    let last = farm
        .server
        .wait_log(
            &format!("the {count} records of {tag}"),
            deadline,
            count as usize,
            |l| l.contains(BUILD_FINISHED) && l.contains(&jobs),
        )
        .await?
        .at;
    farm.server
        .wait_log("the blockers' records", deadline, workers as usize, |l| {
            l.contains(BUILD_FINISHED) && l.contains(&blockers)
        })
        .await?;
    let first = farm
        .server
        .lines()
        .into_iter()
        .find(|l| l.text.contains(BUILD_STARTED) && l.text.contains(&jobs))
        .map_or(last, |l| l.at);
    Ok(secs_between(first, last))
}

/// Schedules `count` `true` jobs named `{tag}-NNNNNN` over `client`.
pub async fn schedule_many(
    client: &mut Client,
    tag: &str,
    count: u32,
    deadline: &Deadline,
) -> Result<()> {
    for i in 0..count {
        client
            .schedule(&format!("{tag}-{i:06}"), PLATFORM, "true\n")
            .await?;
        if i % 100 == 99 {
            deadline.check("scheduling", String::new)?;
        }
    }
    Ok(())
}

/// Per-worker cycles of a set of builds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cycles {
    /// How many (build, next build on the same worker) pairs.
    pub pairs: u64,
    /// Their seconds, summed.
    pub total: f64,
}

impl Cycles {
    fn add(&mut self, other: &Cycles) {
        self.pairs += other.pairs;
        self.total += other.total;
    }

    /// Builds per second of `workers` workers cycling at the mean.
    pub fn rate(&self, workers: u32) -> f64 {
        if self.pairs == 0 || self.total <= 0.0 {
            return 0.0;
        }
        f64::from(workers) * self.pairs as f64 / self.total
    }

    /// `123 jobs/s (mean cycle 32.1 ms over 4990 pairs)`.
    pub fn describe(&self, workers: u32) -> String {
        if self.pairs == 0 {
            return "- (no worker ran two builds)".to_owned();
        }
        format!(
            "{:.0} jobs/s  (mean cycle {} over {} pairs)",
            self.rate(workers),
            secs(self.total / self.pairs as f64),
            self.pairs
        )
    }
}

/// The cycles of the builds whose job name starts with `{prefix}-0`, from
/// the server's `build started` lines (`job="..." ... worker="..."`).
pub fn cycles(farm: &Farm, prefix: &str) -> Cycles {
    let jobs = format!("job=\"{prefix}-0");
    let mut per_worker: HashMap<String, Vec<SystemTime>> = HashMap::new();
    for line in farm.server.lines() {
        if !(line.text.contains(BUILD_STARTED) && line.text.contains(&jobs)) {
            continue;
        }
        if let Some((_, worker)) = line.text.split_once(" worker=") {
            per_worker
                .entry(worker.to_owned())
                .or_default()
                .push(line.at);
        }
    }
    let mut c = Cycles::default();
    for mut starts in per_worker.into_values() {
        starts.sort();
        for pair in starts.windows(2) {
            c.pairs += 1;
            c.total += secs_between(pair[0], pair[1]);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_rate() {
        let c = Cycles {
            pairs: 100,
            total: 1.0,
        };
        // 10 ms a build on each of 4 workers.
        assert!((c.rate(4) - 400.0).abs() < 1e-9);
        assert_eq!(Cycles::default().rate(4), 0.0);
        assert!(Cycles::default().describe(4).starts_with('-'));
    }
}
