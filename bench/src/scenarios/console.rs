//! One job prints a lot of console in 100-byte lines as fast as it can:
//! job → worker → server → `full` record, with (by default) one
//! `builder-client observe-latest --wait` attached before the first line.
//! Measures the time from the first line printed to the record stored,
//! counts what the observer received, and the peak memory of the server.
//!
//! The observer is attached for sure before the first line: the script
//! waits for a gate file, which the benchmark creates once the observer
//! has printed the build's header.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use anyhow::{bail, ensure, Context, Result};
use protocol::record::{read_record_with_limit, ExecResult};

use super::{Common, PLATFORM};
use crate::farm::{read_mark, secs_between, sh_quote, Farm};
use crate::procs::{Deadline, Proc};
use crate::report::{rate, secs, Report, MIB};

const JOB: &str = "bench-console";

/// Each console line: 99 characters and a newline.
const LINE: &str =
    "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678";
const LINE_BYTES: u64 = LINE.len() as u64 + 1;

/// How much console the job prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// This many 100-byte lines.
    Lines(u64),
    /// This many MiB (the last line may be cut short).
    Mib(u64),
}

impl Size {
    fn bytes(self) -> Result<u64> {
        let (n, unit, flag) = match self {
            Size::Lines(n) => (n, LINE_BYTES, "--lines"),
            Size::Mib(n) => (n, MIB, "--mib"),
        };
        ensure!(n > 0, "{flag} must be at least 1");
        n.checked_mul(unit)
            .with_context(|| format!("{flag} is too large"))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Lines(n) => write!(f, "{n} lines of {LINE_BYTES} bytes"),
            Size::Mib(n) => write!(f, "{n} MiB of console in {LINE_BYTES}-byte lines"),
        }
    }
}

/// Runs the scenario: the job prints `size`; with `observe`, one observer
/// is attached before the first line.
pub async fn run(common: &Common, size: Size, observe: bool) -> Result<Report> {
    let bytes = size.bytes()?;
    let deadline = Deadline::new(common.deadline);

    let mut farm = Farm::start(common, &[], &deadline).await?;
    let marks = farm.marks_dir();
    let (gate, start_mark, end_mark) = (marks.join("go"), marks.join("start"), marks.join("end"));
    let wait_for_gate = if observe {
        format!(
            "while [ ! -e {gate} ]; do sleep 0.01; done\n",
            gate = sh_quote(&gate)
        )
    } else {
        String::new()
    };
    let script = format!(
        "#!/bin/sh\n{wait_for_gate}date +%s%N > {}\nyes '{LINE}' | head -c {bytes}\ndate +%s%N > {}\n",
        sh_quote(&start_mark),
        sh_quote(&end_mark)
    );
    let mut observer = if observe {
        let mut cmd = Command::new(farm.bin("builder-client"));
        cmd.args(["-r", &farm.addr, "observe-latest", "--wait", "--job", JOB]);
        let observer = Proc::spawn_counting("builder-client observe-latest", cmd)?;
        // Only then is the job scheduled: the observer cannot miss its start.
        farm.server
            .wait_log("the observer to wait", &deadline, 1, |l| {
                l.contains("observer waiting for the next build")
            })
            .await?;
        Some(observer)
    } else {
        None
    };
    let header = format!("of job {JOB} on {PLATFORM}");
    let open_gate = async {
        if let Some((proc, _)) = observer.as_mut() {
            proc.wait_log("the observer to see the build", &deadline, 1, |l| {
                l.contains(&header)
            })
            .await?;
            std::fs::write(&gate, b"")?;
        }
        anyhow::Ok(())
    };
    let (build, gated) = tokio::join!(farm.one_build(JOB, &script, &deadline), open_gate);
    gated?;
    let build = build?;
    let stored = build.stored;
    let server = farm.server.usage();
    let worker = farm.workers[build.worker].usage();
    let printing_started = read_mark(&start_mark)?;
    let printed = read_mark(&end_mark)?;
    let (expected_lines, _) = expected(bytes);

    let mut seen = None;
    if let Some((proc, counted)) = observer.as_mut() {
        let exit = proc.wait_exit(&deadline).await?;
        let not_shown: u64 = proc
            .lines()
            .iter()
            .filter_map(|l| {
                let rest = l.text.strip_prefix('[')?;
                let (n, tail) = rest.split_once(' ')?;
                tail.starts_with("lines not shown")
                    .then(|| n.parse::<u64>().ok())?
            })
            .sum();
        seen = Some(Observed {
            lines: counted.lines.load(Ordering::Relaxed),
            bytes: counted.bytes.load(Ordering::Relaxed),
            not_shown,
            last_at: *counted.last_at.lock().unwrap(),
            exit: proc.describe_exit(exit),
        });
    }

    let record_len = std::fs::metadata(&build.record)?.len();
    let verify_start = std::time::Instant::now();
    let kept = verify(&build.record, bytes)?;
    let verify_took = verify_start.elapsed();

    let mut r = Report::new(format!(
        "console: one job prints {size} as fast as it can; one one-shot worker; {}",
        if observe {
            "one observer (builder-client observe-latest --wait) attached before the first line"
        } else {
            "no observer"
        }
    ));
    let total = secs_between(printing_started, stored);
    r.row(
        "first line printed → record stored",
        format!("{}  ({})", secs(total), rate(bytes, total)),
    );
    build.start_rows(&mut r);
    let (server_proc, worker_proc) = (&farm.server, &farm.workers[build.worker]);
    // A phase's duration and the CPU server and worker used in it.
    let phase = |from: SystemTime, to: SystemTime, with_rate: bool| {
        let took = secs_between(from, to);
        let rate = if with_rate {
            format!("{}; ", rate(bytes, took))
        } else {
            String::new()
        };
        format!(
            "{}  ({rate}CPU: server {:.2} s, worker {:.2} s)",
            secs(took),
            server_proc.cpu_secs_between(from, to),
            worker_proc.cpu_secs_between(from, to),
        )
    };
    r.row(
        "  script prints (paced by readers)",
        phase(printing_started, printed, true),
    );
    r.row(
        "  script ends → worker done",
        phase(printed, build.worker_done, false),
    );
    r.row(
        "  worker done → record stored",
        phase(build.worker_done, stored, false),
    );
    if let Some(seen) = &seen {
        r.row(
            "observer received",
            format!(
                "{}/{expected_lines} lines ({} bytes){}{}",
                seen.lines,
                seen.bytes,
                if seen.lines == expected_lines {
                    ", all"
                } else {
                    ", NOT ALL"
                },
                if seen.not_shown > 0 {
                    format!("; it was told {} were not shown (too slow)", seen.not_shown)
                } else {
                    String::new()
                }
            ),
        );
        if let Some(last) = seen.last_at {
            r.row(
                "  first line printed → observer's last line",
                secs(secs_between(printing_started, last)),
            );
        }
        r.row("  observer exit", seen.exit.clone());
    }
    r.row(
        "console lines",
        if kept.dropped.0 == 0 {
            format!("{expected_lines} printed ({bytes} bytes with newlines), all in the record")
        } else {
            format!(
                "{expected_lines} printed ({bytes} bytes with newlines); the record keeps {} \
                 from the start and the end, the server dropped {} ({} bytes) from the middle \
                 (its --max-console-bytes)",
                kept.lines, kept.dropped.0, kept.dropped.1
            )
        },
    );
    r.row("record size", format!("{record_len} bytes"));
    build.resource_rows(&mut r, server, worker, bytes / 1024, "the console");
    r.row(
        "check",
        format!(
            "record decodes, exit 0, every line printed is in it or counted as dropped \
             ({} to read it back)",
            secs(verify_took.as_secs_f64())
        ),
    );
    if let Some(seen) = &seen {
        if seen.lines + seen.not_shown != expected_lines {
            bail!(
                "the observer received {} lines and was told of {} not shown; the job printed \
                 {expected_lines}\n{}",
                seen.lines,
                seen.not_shown,
                r.render("", "")
            );
        }
    }
    Ok(r)
}

/// What the observer got.
struct Observed {
    lines: u64,
    bytes: u64,
    /// Lines the server told it it skipped (`[N lines not shown: ...]`).
    not_shown: u64,
    last_at: Option<SystemTime>,
    exit: String,
}

/// Lines and data bytes `yes LINE | head -c bytes` prints.
fn expected(bytes: u64) -> (u64, u64) {
    let full = bytes / LINE_BYTES;
    let rest = bytes % LINE_BYTES;
    (full + u64::from(rest > 0), full * (LINE_BYTES - 1) + rest)
}

/// What the record kept of the console.
struct Kept {
    /// Console lines in the record (without the server's note).
    lines: u64,
    /// Lines the server dropped from the middle to stay within its
    /// `--max-console-bytes`, and their bytes (from its note in the record).
    dropped: (u64, u64),
}

/// Reads the record back: exit 0, and every line printed is either in the
/// record, in order, or counted in the server's note of dropped lines.
fn verify(record: &Path, bytes: u64) -> Result<Kept> {
    let file = std::fs::File::open(record)?;
    let head = read_record_with_limit(file, u64::MAX, |_, _, _| Ok(()))
        .with_context(|| format!("{} does not decode", record.display()))?;
    ensure!(
        head.result == ExecResult::Exited(0),
        "the job did not succeed: {}",
        head.result
    );
    let mut notes = head
        .console
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((i, dropped_note(&l.data)?)));
    let note = notes.next();
    ensure!(
        notes.next().is_none(),
        "the record has several dropped-lines notes"
    );
    let dropped = note.map_or((0, 0), |(_, d)| d);
    let kept = head.console.len() as u64 - u64::from(note.is_some());
    let kept_data: u64 = head
        .console
        .iter()
        .enumerate()
        .filter(|(i, _)| note.map(|(n, _)| n) != Some(*i))
        .map(|(_, l)| l.data.len() as u64)
        .sum();
    let (lines, data) = expected(bytes);
    ensure!(
        kept + dropped.0 == lines && kept_data + dropped.1 == data,
        "the record holds {kept} console lines ({kept_data} bytes) and says {} ({} bytes) \
         were dropped; the job printed {lines} ({data} bytes)",
        dropped.0,
        dropped.1
    );
    // Newest first: the last line printed comes first.
    let last_len = (bytes - 1) % LINE_BYTES + 1;
    let last = &LINE.as_bytes()[..(last_len.min(LINE_BYTES - 1)) as usize];
    let line_ok = |(i, l): (usize, &protocol::record::ConsoleLine)| {
        note.map(|(n, _)| n) == Some(i)
            || if i == 0 {
                l.data == last
            } else {
                l.data == LINE.as_bytes()
            }
    };
    ensure!(
        head.console.iter().enumerate().all(line_ok),
        "the record's console lines are not the lines printed"
    );
    Ok(Kept {
        lines: kept,
        dropped,
    })
}

/// The lines and bytes a server's note says it dropped: `[builder: 12
/// console lines (1188 bytes) dropped here: ...]`.
fn dropped_note(data: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(data).ok()?.strip_prefix("[builder: ")?;
    let mut words = text.split_whitespace();
    let lines = words.next()?.parse().ok()?;
    (words.next()? == "console" && words.next()? == "lines").then_some(())?;
    let bytes = words.next()?.strip_prefix('(')?.parse().ok()?;
    (words.next()? == "bytes)" && words.next()? == "dropped").then_some(())?;
    Some((lines, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_lines() {
        assert_eq!(LINE_BYTES, 100);
        assert_eq!(expected(100), (1, 99));
        assert_eq!(expected(250), (3, 99 + 99 + 50));
        assert_eq!(expected(MIB), (10486, 10485 * 99 + 76));
    }

    #[test]
    fn dropped_notes_are_read() {
        let note = b"[builder: 1826092 console lines (180783045 bytes) dropped here: \
                     the console exceeded the server's limit of 268435456 bytes]";
        assert_eq!(dropped_note(note), Some((1_826_092, 180_783_045)));
        assert_eq!(dropped_note(LINE.as_bytes()), None);
        assert_eq!(
            dropped_note(b"[builder: x console lines (1 bytes) dropped"),
            None
        );
    }
}
