//! A server with many scheduled jobs (100 000 by default).
//!
//! 1. The dispatch rate with 10 queued, as in `drain` (gated batches on
//!    4 `--loop` workers, which are then stopped).
//! 2. The flood: N `true` jobs scheduled by protocol clients, one
//!    connection each (hello, `schedule`, close), 8 at a time. Meanwhile a
//!    legitimate client asks for `info` (new connection each time) every
//!    half second.
//! 3. With N jobs: `info` (its size and time), then a restart of the server
//!    on the same state: the time from starting the process to the first
//!    `info` answered.
//! 4. The dispatch rate with N queued: 4 `--loop` workers run the first
//!    1000 builds of the queue; the rate is measured as in `drain`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::task::JoinSet;

use super::drain::{cycles, gated_batch, start_workers};
use super::{Common, PLATFORM};
use crate::farm::{connect, Farm, BUILD_FINISHED};
use crate::procs::Deadline;
use crate::report::{kib, latencies, percent, secs, Report};

/// Clients scheduling at once.
const PARALLEL: usize = 8;
/// Workers for the dispatch rates.
const WORKERS: u32 = 4;
/// Small batches (of 10 queued) for the reference dispatch rate.
const SMALL_BATCHES: u32 = 10;
/// Builds run from the long queue.
const LONG_BUILDS: u32 = 1000;
/// How often the legitimate client asks for `info` during the flood.
const INFO_EVERY: Duration = Duration::from_millis(500);

/// Runs the scenario with `jobs` scheduled jobs.
pub async fn run(common: &Common, jobs: u32) -> Result<Report> {
    ensure!(
        (10..=100_000).contains(&jobs),
        "--jobs must be between 10 and 100000"
    );
    let deadline = Deadline::new(common.deadline);
    let mut farm = Farm::start(common, &[], &deadline).await?;

    // 1. The reference: 10 queued.
    start_workers(&mut farm, WORKERS, &deadline).await?;
    let mut client = farm.connect().await?;
    let mut small = super::drain::Cycles::default();
    for b in 0..SMALL_BATCHES {
        let tag = format!("scale-small-{b:04}");
        gated_batch(&mut farm, &mut client, &tag, 10, WORKERS, &deadline).await?;
        let c = cycles(&farm, &tag);
        small.pairs += c.pairs;
        small.total += c.total;
    }
    drop(client);
    farm.stop_workers();

    // 2. The flood.
    let flood_start = Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let done = Arc::new(Mutex::new(Vec::with_capacity(jobs as usize)));
    let mut tasks = JoinSet::new();
    for _ in 0..PARALLEL {
        let (addr, next, done) = (farm.addr.clone(), next.clone(), done.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return anyhow::Ok(());
                }
                let start = Instant::now();
                let mut client = connect(&addr).await?;
                client
                    .schedule(&format!("scale-job-{i:06}"), PLATFORM, "true\n")
                    .await?;
                drop(client);
                let end = Instant::now();
                done.lock()
                    .unwrap()
                    .push((end.duration_since(flood_start), end.duration_since(start)));
            }
        });
    }
    let mut info_during = Vec::new();
    let mut info_errors = 0u32;
    loop {
        let tick = Instant::now();
        match timed_info(&farm.addr).await {
            Ok((took, _)) => info_during.push(took),
            Err(_) => info_errors += 1,
        }
        if tasks.is_empty() {
            break;
        }
        while let Some(joined) = tasks.try_join_next() {
            joined.context("a scheduling client panicked")??;
        }
        let scheduled = done.lock().unwrap().len();
        deadline.check(&format!("the flood ({scheduled}/{jobs} scheduled)"), || {
            farm.server.log_tail(10)
        })?;
        tokio::time::sleep(INFO_EVERY.saturating_sub(tick.elapsed())).await;
    }
    let flood_took = flood_start.elapsed().as_secs_f64();
    let mut done = std::mem::take(&mut *done.lock().unwrap());
    done.sort();
    ensure!(
        done.len() == jobs as usize,
        "{} of {jobs} schedules completed",
        done.len()
    );

    // 3. `info` with N jobs, then a restart.
    let mut info_after = Vec::new();
    let mut info_size = Default::default();
    for _ in 0..3 {
        let (took, size) = timed_info(&farm.addr).await?;
        info_after.push(took);
        info_size = size;
    }
    let before_restart = farm.server.usage();
    let (spawned, listening) = farm.restart_server(&deadline).await?;
    let serving = loop {
        if let Ok((_, size)) = timed_info(&farm.addr).await {
            ensure!(
                size.items >= u64::from(jobs),
                "after the restart, info lists {} items; {jobs} jobs were scheduled",
                size.items
            );
            break spawned.elapsed();
        }
        deadline.check("the restarted server to answer info", || {
            farm.server.log_tail(10)
        })?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };

    // 4. Dispatch from the long queue.
    let long_builds = LONG_BUILDS.min(jobs);
    start_workers(&mut farm, WORKERS, &deadline).await?;
    farm.server
        .wait_log(
            &format!("{long_builds} records from the long queue"),
            &deadline,
            long_builds as usize,
            |l| l.contains(BUILD_FINISHED) && l.contains("job=\"scale-job-0"),
        )
        .await?;
    let long = cycles(&farm, "scale-job");
    farm.stop_workers();
    let after_restart = farm.server.usage();

    let window = (jobs as usize / 2).min(1000);
    let first = &done[..window];
    let last = &done[done.len() - window..];
    let rate = |w: &[(Duration, Duration)], from: Duration| {
        let span = w
            .last()
            .map_or(0.0, |l| l.0.saturating_sub(from).as_secs_f64());
        w.len() as f64 / span.max(f64::MIN_POSITIVE)
    };
    let first_rate = rate(first, Duration::ZERO);
    let last_rate = rate(last, done[done.len() - window - 1].0);
    let mean = |w: &[(Duration, Duration)]| {
        secs(w.iter().map(|d| d.1.as_secs_f64()).sum::<f64>() / w.len() as f64)
    };

    let mut r = Report::new(format!(
        "scale: {jobs} scheduled `true` jobs (protocol clients, one connection each, \
         {PARALLEL} at a time); restart; dispatch from the long queue on {WORKERS} --loop workers"
    ));
    r.row(
        "flood",
        format!(
            "{jobs} schedules in {} = {:.0} calls/s",
            secs(flood_took),
            f64::from(jobs) / flood_took
        ),
    );
    r.row(
        format!("  first {window} calls"),
        format!("{first_rate:.0} calls/s (mean call {})", mean(first)),
    );
    r.row(
        format!("  last {window} calls"),
        format!(
            "{last_rate:.0} calls/s (mean call {}) = {} of the first  (goal ≥ 80%)",
            mean(last),
            percent(last_rate, first_rate)
        ),
    );
    r.row(
        "  legit info during the flood",
        format!(
            "{}{}  (connect + hello + info; goal < 1 s)",
            latencies(&info_during),
            if info_errors > 0 {
                format!(", {info_errors} FAILED")
            } else {
                String::new()
            }
        ),
    );
    r.row(
        format!("info with {jobs} jobs"),
        format!(
            "{}  ({} items, {} bytes; goal < 1 s)",
            latencies(&info_after),
            info_size.items,
            info_size.bytes
        ),
    );
    r.row(
        "restart: process started → listening",
        secs(listening.duration_since(spawned).as_secs_f64()),
    );
    r.row(
        "restart: process started → first info answered",
        format!("{}  (goal < 1 s)", secs(serving.as_secs_f64())),
    );
    r.row(
        "dispatch, 10 queued",
        format!("{}  ({SMALL_BATCHES} batches)", small.describe(WORKERS)),
    );
    r.row(
        format!("dispatch, {jobs} queued"),
        format!(
            "{}  ({long_builds} builds) = {} of 10 queued  (goal ≥ 90%)",
            long.describe(WORKERS),
            percent(long.rate(WORKERS), small.rate(WORKERS))
        ),
    );
    r.row(
        "server peak RSS (VmHWM)",
        format!(
            "{} before the restart, {} after it (goal < 200 MB)",
            kib(before_restart.hwm_kib),
            kib(after_restart.hwm_kib)
        ),
    );
    r.row(
        "check",
        format!("{jobs} schedules answered Success; after the restart info lists ≥ {jobs} items"),
    );
    Ok(r)
}

/// Connects, says hello, asks for `info` and reads it all: the time taken
/// and the answer's size.
async fn timed_info(addr: &str) -> Result<(f64, crate::farm::InfoSize)> {
    let start = Instant::now();
    let mut client = connect(addr).await?;
    let size = client.info().await?;
    Ok((start.elapsed().as_secs_f64(), size))
}
