//! One job leaves one big artifact: worker → server spool → `full` record
//! → upload to an in-process sink. Measures time per phase and the peak
//! memory of the server and the worker against the artifact's size.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use protocol::record::{read_record, ExecResult};

use super::Common;
use crate::farm::{free_bytes, read_mark, secs_between, sh_quote, Farm, RECORD_DELIVERED};
use crate::procs::Deadline;
use crate::report::{rate, secs, Report, MIB};
use crate::sink::Sink;

const JOB: &str = "bench-artifact";
const ARTIFACT: &[u8] = b"big.bin";

/// Runs the scenario with an artifact of `size_mib` MiB.
pub async fn run(common: &Common, size_mib: u64) -> Result<Report> {
    ensure!(size_mib > 0, "--size-mib must be at least 1");
    let bytes = size_mib
        .checked_mul(MIB)
        .context("--size-mib is too large")?;
    // The worker's job file, the server's spool and the record exist at
    // once (the spool goes once the record is durable): about 3x, plus room.
    let need = bytes.saturating_mul(4);
    let free = free_bytes(&common.tmpdir)?;
    if free < need {
        bail!(
            "artifact --size-mib {size_mib} needs {} MiB free in {} (the worker's job file, \
             the server's spool and the record exist at once); only {} MiB are free: \
             use a smaller --size-mib or another --tmpdir",
            need / MIB,
            common.tmpdir.display(),
            free / MIB
        );
    }
    let deadline = Deadline::new(common.deadline);

    let sink = Sink::start().await?;
    let mut farm = Farm::start(common, &["--upload".into(), sink.url()], &deadline).await?;
    let written = farm.marks_dir().join("written");
    let script = format!(
        "#!/bin/sh\nset -e\nhead -c {bytes} /dev/zero > big.bin\ndate +%s%N > {}\n",
        sh_quote(&written)
    );
    let build = farm.one_build(JOB, &script, &deadline).await?;
    let (t0, stored, sent) = (build.t0, build.stored, build.worker_done);
    let delivery = loop {
        if let Some(d) = sink.deliveries().into_iter().next() {
            break d;
        }
        deadline.check("the upload to reach the sink", || farm.server.log_tail(20))?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    farm.server
        .wait_log("the server to log the delivery", &deadline, 1, |l| {
            l.contains(RECORD_DELIVERED)
        })
        .await?;
    let server = farm.server.usage();
    let worker = farm.workers[build.worker].usage();
    let written_at = read_mark(&written)?;

    let record_len = std::fs::metadata(&build.record)?.len();
    let verify_start = std::time::Instant::now();
    verify(&build.record, bytes)?;
    let verify_took = verify_start.elapsed();

    let artifact_kib = bytes / 1024;
    let mut r = Report::new(format!(
        "artifact: one job leaves a {size_mib} MiB artifact; one one-shot worker; \
         upload to an in-process sink"
    ));
    r.row(
        "schedule → record stored",
        format!(
            "{}  ({})",
            secs(secs_between(t0, stored)),
            rate(bytes, secs_between(t0, stored))
        ),
    );
    r.row(
        "schedule → upload delivered",
        secs(secs_between(t0, delivery.done)),
    );
    // The figure: from the artifact on the worker's disk to the
    // record durable on the server's.
    r.row(
        "artifact written → record stored",
        format!(
            "{}  ({})",
            secs(secs_between(written_at, stored)),
            rate(bytes, secs_between(written_at, stored))
        ),
    );
    build.start_rows(&mut r);
    let server_proc = &farm.server;
    let worker_proc = &farm.workers[build.worker];
    // A phase's duration, rate and the CPU server and worker used in it.
    let phase = |from: SystemTime, to: SystemTime, len: u64, note: &str| {
        let took = secs_between(from, to);
        format!(
            "{}  ({}{note}; CPU: server {:.2} s, worker {:.2} s)",
            secs(took),
            rate(len, took),
            server_proc.cpu_secs_between(from, to),
            worker_proc.cpu_secs_between(from, to),
        )
    };
    r.row(
        "  script writes the file",
        phase(
            build.script_started,
            written_at,
            bytes,
            ", head -c from /dev/zero",
        ),
    );
    r.row(
        "  worker sends it (→ server spool)",
        phase(written_at, sent, bytes, ""),
    );
    r.row(
        "  server writes the record",
        phase(sent, stored, bytes, ", spool → full, fsync"),
    );
    r.row(
        "  record stored → first byte at sink",
        secs(secs_between(stored, delivery.first_byte)),
    );
    r.row(
        "  upload body",
        phase(delivery.first_byte, delivery.done, delivery.len, ""),
    );
    r.row("record size", format!("{record_len} bytes"));
    r.row(
        "sink received",
        format!(
            "{} bytes ({}; credentials {})",
            delivery.len,
            if delivery.len == record_len {
                "= the record"
            } else {
                "DIFFERS from the record"
            },
            if delivery.authorized { "ok" } else { "MISSING" }
        ),
    );
    build.resource_rows(&mut r, server, worker, artifact_kib, "the artifact");
    r.row(
        "check",
        format!(
            "record decodes, exit 0, artifact {} = {bytes} bytes ({} to read it back)",
            String::from_utf8_lossy(ARTIFACT),
            secs(verify_took.as_secs_f64())
        ),
    );
    if delivery.len != record_len {
        bail!(
            "the sink received {} bytes but the record has {record_len}\n{}",
            delivery.len,
            r.render("", "")
        );
    }
    Ok(r)
}

/// Reads the record back without holding the artifact: exit 0 and exactly
/// one artifact of `bytes` bytes.
fn verify(record: &Path, bytes: u64) -> Result<()> {
    let file = std::fs::File::open(record)?;
    let mut artifacts = Vec::new();
    let head = read_record(file, |path, len, body| {
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        artifacts.push((path.to_vec(), len, read));
        Ok(())
    })
    .with_context(|| format!("{} does not decode", record.display()))?;
    ensure!(
        head.result == ExecResult::Exited(0),
        "the job did not succeed: {}",
        head.result
    );
    ensure!(
        artifacts == [(ARTIFACT.to_vec(), bytes, bytes)],
        "unexpected artifacts in the record: {:?}",
        artifacts
            .iter()
            .map(|(p, len, read)| (String::from_utf8_lossy(p).into_owned(), len, read))
            .collect::<Vec<_>>()
    );
    Ok(())
}
