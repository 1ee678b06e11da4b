//! The farm on HTTP (`--http`): live-console throughput, `info` under idle
//! HTTP connections, and memory per idle event-stream subscriber.
//!
//! 1. Server RSS growth per idle subscriber of `/api/v1/events`, on the
//!    fresh server (later, freed memory would hide it).
//! 2. `info` latency over one protocol connection, first alone, then with
//!    `idle` HTTP keep-alive connections open (each sent one request and
//!    then stays silent).
//! 3. One job prints `lines` console lines of 100 bytes and is stored.
//!    Then 1, 10 and 100 readers at once fetch its console as server-sent
//!    events (`Accept: text/event-stream`, replayed from the record) to the
//!    `finished` event; the figure is lines per second over all readers and
//!    the time until the last reader is done. Every reader must get every
//!    line.
//! 4. Unless `artifact_mib` is 0: one job leaves an artifact of that size;
//!    it is fetched over HTTP twice (the first fetch also hashes it for its
//!    ETag); the figures are MB/s and the server's RSS growth, which must
//!    not follow the artifact's size.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{Common, PLATFORM};
use crate::farm::Farm;
use crate::procs::Deadline;
use crate::report::{kib, latencies, Report};

const JOB: &str = "bench-http";

/// `info` calls per latency figure.
const INFO_CALLS: usize = 200;

/// Idle event-stream subscribers for the memory figure.
const SUBSCRIBERS: u32 = 200;

/// Runs the scenario with a console of `lines` lines and `idle` idle
/// HTTP connections.
pub async fn run(common: &Common, lines: u64, idle: u32, artifact_mib: u64) -> Result<Report> {
    ensure!(
        (1..=10_000_000).contains(&lines),
        "--lines must be between 1 and 10000000"
    );
    ensure!(
        (1..=5000).contains(&idle),
        "--idle must be between 1 and 5000"
    );
    let deadline = Deadline::new(common.deadline);
    let extra: Vec<String> = [
        "--http",
        "127.0.0.1:0",
        "--http-max-connections",
        "8192",
        "--http-max-sse",
        "1024",
        "--http-idle-timeout",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut farm = Farm::start(common, &extra, &deadline).await?;
    let line = farm
        .server
        .wait_log("the HTTP listener", &deadline, 1, |l| {
            l.contains("HTTP listening")
        })
        .await?;
    let http = line
        .text
        .split(" http=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("no http= address in the server's log")?
        .to_owned();
    let base = format!("http://{http}");

    let mut r = Report::new(format!(
        "http: console of {lines} lines of 100 bytes read as server-sent events by \
         1/10/100 readers at once; `info` with {idle} idle HTTP connections; \
         RSS per idle /api/v1/events subscriber"
    ));
    let mut client = farm.connect().await?;

    // 1. Memory per idle event-stream subscriber, on the fresh server.
    let before = farm.server.usage().rss_kib;
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS as usize);
    for _ in 0..SUBSCRIBERS {
        subscribers.push(subscribe_events(&http).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = farm.server.usage().rss_kib;
    r.row(
        format!("per idle /api/v1/events subscriber ({SUBSCRIBERS})"),
        format!(
            "{:.1} KiB ({} → {})",
            (after as f64 - before as f64) / f64::from(SUBSCRIBERS),
            kib(before),
            kib(after)
        ),
    );
    drop(subscribers);
    // 2. info alone, then with idle HTTP connections open.
    let alone = info_latencies(&mut client).await?;
    let mut held = Vec::with_capacity(idle as usize);
    for _ in 0..idle {
        held.push(idle_connection(&http).await?);
        deadline.check("the idle HTTP connections", String::new)?;
    }
    let busy = info_latencies(&mut client).await?;
    r.row(
        format!("info, no HTTP connection ({INFO_CALLS} calls)"),
        latencies(&alone),
    );
    r.row(
        format!("info, {idle} idle HTTP connections"),
        latencies(&busy),
    );
    drop(held);

    // 3. A stored console, read by 1, 10, 100 readers at once.
    let script = format!("yes \"$(printf '%099d' 0)\" | head -n {lines}\n");
    client.schedule(JOB, PLATFORM, &script).await?;
    farm.worker(PLATFORM, false)?;
    let uuid = finished_build(&base, JOB, &deadline).await?;
    let url = format!("{base}/api/v1/builds/{uuid}/console");

    for readers in [1u32, 10, 100] {
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..readers {
            tasks.spawn(read_console(url.clone()));
        }
        let mut total = 0u64;
        while let Some(done) = tasks.join_next().await {
            let got = done.context("a console reader panicked")??;
            ensure!(got == lines, "a reader got {got} of {lines} lines");
            total += got;
            deadline.check("the console readers", String::new)?;
        }
        let took = start.elapsed().as_secs_f64();
        r.row(
            format!("SSE console, {readers} reader(s)"),
            format!(
                "{:.0} lines/s over all readers; last reader done after {took:.2} s",
                total as f64 / took
            ),
        );
    }
    r.row(
        "server peak RSS after the readers (VmHWM)",
        kib(farm.server.usage().hwm_kib),
    );

    // 4. A big artifact over HTTP.
    if artifact_mib > 0 {
        const BIG: &str = "bench-http-artifact";
        let script = format!("head -c {}M /dev/zero > big.bin\n", artifact_mib);
        client.schedule(BIG, PLATFORM, &script).await?;
        farm.worker(PLATFORM, false)?;
        let uuid = finished_build(&base, BIG, &deadline).await?;
        let before = farm.server.usage();
        let url = format!("{base}/api/v1/builds/{uuid}/artifacts/big.bin");
        for fetch in ["first fetch (hashes it for the ETag)", "second fetch"] {
            let start = Instant::now();
            let mut response = reqwest::get(&url).await?;
            ensure!(
                response.status().is_success(),
                "artifact: HTTP {}",
                response.status()
            );
            let mut got = 0u64;
            while let Some(chunk) = response.chunk().await? {
                got += chunk.len() as u64;
            }
            let took = start.elapsed().as_secs_f64();
            ensure!(got == artifact_mib << 20, "artifact: got {got} bytes");
            r.row(
                format!("{artifact_mib} MiB artifact over HTTP, {fetch}"),
                format!("{:.0} MB/s ({took:.2} s)", got as f64 / took / 1e6),
            );
        }
        let after = farm.server.usage();
        r.row(
            "  server RSS before / after the fetches",
            format!(
                "{} / {} (VmHWM {})",
                kib(before.rss_kib),
                kib(after.rss_kib),
                kib(after.hwm_kib)
            ),
        );
    }
    r.row("server peak RSS (VmHWM)", kib(farm.server.usage().hwm_kib));
    Ok(r)
}

/// Waits until `job` has a finished build in the API; returns its UUID.
async fn finished_build(base: &str, job: &str, deadline: &Deadline) -> Result<String> {
    loop {
        let builds = reqwest::get(format!("{base}/api/v1/builds?job={job}&state=finished"))
            .await?
            .text()
            .await?;
        if let Some(uuid) = builds
            .split("\"uuid\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            return Ok(uuid.to_owned());
        }
        deadline.check(&format!("a finished build of {job}"), String::new)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a console as server-sent events to its `finished` event; returns
/// how many `line` events came.
async fn read_console(url: String) -> Result<u64> {
    let response = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "console: HTTP {}",
        response.status()
    );
    let mut stream = response.bytes_stream();
    let mut lines = 0u64;
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        tail.extend_from_slice(&chunk?);
        let mut start = 0;
        while let Some(end) = tail[start..].iter().position(|&b| b == b'\n') {
            let line = &tail[start..start + end];
            if line == b"event: line" || line == b"event:line" {
                lines += 1;
            } else if line == b"event: finished" || line == b"event:finished" {
                return Ok(lines);
            }
            start += end + 1;
        }
        tail.drain(..start);
    }
    bail!("the console stream ended without a finished event after {lines} lines")
}

/// `info` round trips over one connection.
async fn info_latencies(client: &mut crate::farm::Client) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(INFO_CALLS);
    for _ in 0..INFO_CALLS {
        let t = Instant::now();
        client.info().await?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(samples)
}

/// An HTTP keep-alive connection that made one request and stays open.
async fn idle_connection(addr: &str) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await?;
    ensure!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "healthz: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(stream)
}

/// An idle subscriber of `/api/v1/events`, past the response head.
async fn subscribe_events(addr: &str) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            b"GET /api/v1/events HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n",
        )
        .await?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await?;
    ensure!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "events: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(stream)
}
