//! What an idle connection costs the server: N idle workers, then N idle
//! authenticated clients, held by the benchmark itself (one task each, not
//! N processes).
//!
//! Each worker connection does what an idle `builder-worker --loop` does:
//! the worker hello, `RequestJob`, then a heartbeat every interval the
//! server asked for, answering nothing else. Each client connection says
//! the client hello and then waits. The figure is the server's `VmRSS`
//! growth per connection, read once every connection is in place (workers:
//! once each has also received a heartbeat from the server, so the server
//! has run its heartbeat path for every one of them). Memory is read at
//! N/2 and at N; the second half's growth is the marginal cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use protocol::codec::Connection;
use protocol::message::{ServerToWorker, WorkerMessage};
use tokio::task::JoinSet;

use super::{Common, PLATFORM};
use crate::farm::{connect, worker_connection, Farm, WORKER_CONNECTED};
use crate::procs::Deadline;
use crate::report::{kib, Report};

/// How many connections say their hello at once (the server limits
/// unauthenticated connections per address).
const CONNECTING_AT_ONCE: usize = 32;

/// Runs the scenario with `n` idle workers and `n` idle clients (none if
/// `clients` is false).
pub async fn run(common: &Common, n: u32, clients: bool) -> Result<Report> {
    ensure!(
        (2..=3000).contains(&n),
        "--count must be between 2 and 3000"
    );
    check_fd_limit(u64::from(n) * 2 + 256)?;
    let deadline = Deadline::new(common.deadline);
    let mut farm = Farm::start(common, &[], &deadline).await?;
    let base = farm.server.usage();

    let heartbeats = Arc::new(Heartbeats::default());
    let mut tasks = JoinSet::new();
    let half = n / 2;
    let mut at = Vec::new();
    for (from, to) in [(0, half), (half, n)] {
        connect_workers(&farm, &mut tasks, &heartbeats, from, to).await?;
        farm.server
            .wait_log("the idle workers to connect", &deadline, to as usize, |l| {
                l.contains(WORKER_CONNECTED)
            })
            .await?;
        // Every worker connection has had a heartbeat from the server.
        loop {
            if heartbeats.connections_heard.load(Ordering::Relaxed) >= u64::from(to) {
                break;
            }
            if let Some(done) = tasks.try_join_next() {
                done.context("an idle worker task panicked")??;
                bail!("the server closed an idle worker's connection");
            }
            deadline.check("a heartbeat on every idle worker connection", || {
                farm.server.log_tail(20)
            })?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        at.push(farm.server.usage());
    }
    let (mid, full) = (at[0], at[1]);

    let mut r = Report::new(format!(
        "idle: {n} idle workers (in-bench connections: worker hello, RequestJob, \
         heartbeats){}",
        if clients {
            format!(", then {n} idle clients (client hello, then nothing)")
        } else {
            String::new()
        }
    ));
    r.row("server RSS, no connection", kib(base.rss_kib));
    r.row(
        format!("server RSS, {half} / {n} idle workers"),
        format!("{} / {}", kib(mid.rss_kib), kib(full.rss_kib)),
    );
    r.row(
        "per idle worker",
        format!(
            "{:.1} KiB over all {n}; {:.1} KiB marginal (the second {} only)  (goal ≤ 4 KiB)",
            per(full.rss_kib, base.rss_kib, n),
            per(full.rss_kib, mid.rss_kib, n - half),
            n - half
        ),
    );

    if clients {
        let before = farm.server.usage();
        let mut held = Vec::with_capacity(n as usize);
        for chunk in (0..n).collect::<Vec<_>>().chunks(CONNECTING_AT_ONCE) {
            let mut hellos = JoinSet::new();
            for _ in chunk {
                let addr = farm.addr.clone();
                hellos.spawn(async move { connect(&addr).await });
            }
            while let Some(conn) = hellos.join_next().await {
                held.push(conn.context("a client hello task panicked")??);
            }
            deadline.check("the idle clients to connect", String::new)?;
        }
        let after = farm.server.usage();
        r.row(
            format!("server RSS, + {n} idle clients"),
            kib(after.rss_kib),
        );
        r.row(
            "per idle client",
            format!("{:.1} KiB", per(after.rss_kib, before.rss_kib, n)),
        );
        drop(held);
    }
    let server = farm.server.usage();
    r.row("server peak RSS (VmHWM)", kib(server.hwm_kib));
    r.row(
        "check",
        format!(
            "{n} `worker connected` lines; every worker connection got a heartbeat \
             ({} heartbeats in all)",
            heartbeats.total.load(Ordering::Relaxed)
        ),
    );
    tasks.abort_all();
    Ok(r)
}

/// KiB per connection of the growth from `from` to `to`.
fn per(to: u64, from: u64, n: u32) -> f64 {
    (to as f64 - from as f64) / f64::from(n)
}

#[derive(Default)]
struct Heartbeats {
    /// Worker connections that received at least one.
    connections_heard: AtomicU64,
    /// All received.
    total: AtomicU64,
}

/// Connects idle workers `from..to`, [`CONNECTING_AT_ONCE`] at a time;
/// each then runs in `tasks`.
async fn connect_workers(
    farm: &Farm,
    tasks: &mut JoinSet<Result<()>>,
    heartbeats: &Arc<Heartbeats>,
    from: u32,
    to: u32,
) -> Result<()> {
    let ids: Vec<u32> = (from..to).collect();
    for chunk in ids.chunks(CONNECTING_AT_ONCE) {
        let mut hellos = JoinSet::new();
        for &i in chunk {
            let addr = farm.addr.clone();
            hellos.spawn(async move {
                worker_connection(&addr, PLATFORM, &format!("idle-{i:05}")).await
            });
        }
        while let Some(joined) = hellos.join_next().await {
            let (conn, hello) = joined.context("a worker hello task panicked")??;
            let every = Duration::from_millis(hello.heartbeat_ms.max(100));
            tasks.spawn(idle_worker(conn, every, heartbeats.clone()));
        }
    }
    Ok(())
}

/// An idle `--loop` worker: asks for a job, then only heartbeats.
async fn idle_worker(mut conn: Connection, every: Duration, heard: Arc<Heartbeats>) -> Result<()> {
    conn.send(&WorkerMessage::RequestJob).await?;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut first = true;
    loop {
        tokio::select! {
            _ = ticks.tick() => conn.send(&WorkerMessage::Heartbeat).await?,
            msg = conn.recv::<ServerToWorker>() => match msg? {
                Some(ServerToWorker::Heartbeat) => {
                    heard.total.fetch_add(1, Ordering::Relaxed);
                    if std::mem::take(&mut first) {
                        heard.connections_heard.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(other) => bail!("an idle worker got {other:?}"),
                None => bail!("the server closed an idle worker's connection"),
            },
        }
    }
}

/// Fails unless this process (and so the server it starts, which inherits
/// the limit) may open `need` files.
fn check_fd_limit(need: u64) -> Result<()> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    match soft {
        Some(soft) if soft < need => bail!(
            "this scenario needs {need} open files, but the limit is {soft}: \
             raise it (ulimit -n {need}) or use a smaller --count"
        ),
        _ => Ok(()),
    }
}
