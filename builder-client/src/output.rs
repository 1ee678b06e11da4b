//! Human and JSON rendering of the server's answers.
//!
//! The JSON documents are built from the view structs of [`protocol::api`]
//! (the HTTP API serves the same ones), not from the wire types, so their shape is a stable interface of its own: times are
//! RFC 3339 strings (UTC, `Z`, as many fraction digits as needed; in
//! `observe --json` always three, since a stored record keeps milliseconds
//! and a live build must print like a replayed one), UUIDs
//! are hyphenated, enums are tagged with a lowercase `kind`.

use std::io::{self, Write};
use std::time::Duration;

use protocol::info::InfoSummary;
use protocol::message::{
    BuildHeader, JobKind, JobOutcome, JobSummary, JobSummaryKind, OutputLine, ResultEntry,
    ScheduleEntry, Timestamp, UploadState,
};
use protocol::trigger::Trigger;
use serde::Serialize;

use crate::units::count;

// ---------------------------------------------------------------------------
// Small formatters shared with builder-inspect.

/// RFC 3339, whole seconds: `2024-05-05T05:05:05Z` (for tables).
pub fn time_secs(t: Timestamp) -> String {
    t.to_datetime()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with as many fraction digits as needed (for JSON).
pub fn time_exact(t: Timestamp) -> String {
    protocol::api::time(t)
}

/// RFC 3339 with milliseconds, truncated (`observe --json`): a stored
/// record keeps milliseconds, so live and replayed builds print alike.
pub fn time_millis(t: Timestamp) -> String {
    t.to_datetime()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Seconds rounded to milliseconds, for JSON (`12.345`, not `12.345678901`).
pub fn secs_millis(d: Duration) -> f64 {
    protocol::api::secs_millis(d)
}

/// How long a build took, the one duration every command prints
/// (`results`, `observe`, builder-inspect): `finished - started`, each
/// truncated to whole milliseconds first, as a stored record keeps them, so
/// a live build, a replayed one and the results list agree to the
/// millisecond. A finish before the start (a clock set back) is zero.
pub fn build_duration(started: Timestamp, finished: Timestamp) -> Duration {
    protocol::api::build_duration(started, finished)
}

/// A duration for people: `0.250s`, `59.999s`, `3m 05s`, `2h 03m 05s`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{secs}.{:03}s", d.subsec_millis())
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m {:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// A console line's time since the job started: `[   1.234s]`, signed,
/// truncated to milliseconds.
pub fn console_delta(delta_ns: i64) -> String {
    let sign = if delta_ns < 0 { "-" } else { "" };
    let abs = delta_ns.unsigned_abs();
    let secs = abs / 1_000_000_000;
    let millis = abs % 1_000_000_000 / 1_000_000;
    format!("[{:>8}s]", format!("{sign}{secs}.{millis:03}"))
}

/// `exited 0`, `killed by SIGKILL`, `stopped by SIGSTOP`, `aborted: timeout`
/// (the wording of `protocol`, shared by every program).
pub fn outcome(o: &JobOutcome) -> String {
    o.to_string()
}

/// `daily`, `cron "0 3 * * *"`.
pub fn trigger(t: &Trigger) -> String {
    match t {
        Trigger::Hourly => "hourly".to_owned(),
        Trigger::Daily => "daily".to_owned(),
        Trigger::Weekly => "weekly".to_owned(),
        Trigger::Never => "never".to_owned(),
        Trigger::Cron(expr) => format!("cron \"{expr}\""),
    }
}

/// `delivered`, `pending (2 attempts, last error: HTTP 500)`, `-`.
pub fn upload(u: &UploadState) -> String {
    match u {
        UploadState::NotConfigured => "-".to_owned(),
        UploadState::Delivered { .. } => "delivered".to_owned(),
        UploadState::Pending {
            attempts,
            last_error,
        } => {
            let s = if *attempts == 1 { "" } else { "s" };
            match last_error {
                Some(err) => format!("pending ({attempts} attempt{s}, last error: {err})"),
                None => format!("pending ({attempts} attempt{s})"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tables.

/// A text table: columns separated by two spaces, padded to the widest cell
/// (the last column is not padded).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// Writes the table, each line prefixed with `indent`.
    pub fn write(&self, out: &mut dyn Write, indent: &str) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// JSON views.

pub use protocol::api::{
    InfoView, OutcomeView, QueueView, ResultView, RunningView, ScheduleView, UploadView, WorkerView,
};

/// One NDJSON event of `observe --json`.
#[derive(Serialize, Debug)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ObserveEvent {
    /// Which build is shown.
    Start {
        /// Hyphenated UUID.
        uuid: String,
        /// Job name.
        job: String,
        /// Platform.
        platform: String,
        /// RFC 3339.
        started: String,
    },
    /// A console line.
    Line {
        /// Nanoseconds since the start.
        delta_ns: i64,
        /// The bytes, invalid UTF-8 replaced by U+FFFD.
        text: String,
    },
    /// Lines skipped because the observer was too slow.
    Dropped {
        /// How many.
        lines: u64,
    },
    /// The build is over.
    End {
        /// RFC 3339.
        finished: String,
        /// Structured outcome.
        outcome: OutcomeView,
        /// The outcome as text.
        result: String,
        /// The status this program exits with.
        exit_status: u8,
    },
}

// ---------------------------------------------------------------------------
// Human renderings.

/// The "JOB" column: `script on linux`, `orb-build solo5-hvt`.
fn job_kind(kind: &JobSummaryKind) -> String {
    match kind {
        JobSummaryKind::Script { platform, .. } => format!("script on {platform}"),
        JobSummaryKind::Orb { opam_package } => format!("orb-build {opam_package}"),
    }
}

/// `info` as text.
pub fn write_info(out: &mut dyn Write, info: &InfoSummary) -> io::Result<()> {
    if info.schedule.is_empty() {
        writeln!(out, "schedule: no jobs")?;
    } else {
        writeln!(out, "schedule ({}):", count(info.schedule.len(), "job"))?;
        let mut t = Table::new(&["NAME", "JOB", "TRIGGER", "NEXT RUN", "TIMEOUT"]);
        for e in &info.schedule {
            t.row(vec![
                e.name.clone(),
                job_kind(&e.kind),
                trigger(&e.trigger),
                e.next_run.map_or_else(|| "-".to_owned(), time_secs),
                timeout(e.timeout_secs),
            ]);
        }
        t.write(out, "  ")?;
    }

    if info.queues.is_empty() {
        writeln!(out, "queues: none")?;
    } else {
        writeln!(out, "queues (front first):")?;
        for q in &info.queues {
            if q.jobs.is_empty() {
                writeln!(out, "  {}: (empty)", q.platform)?;
            } else {
                writeln!(out, "  {}: {}", q.platform, q.jobs.join(", "))?;
            }
        }
    }

    if info.running.is_empty() {
        writeln!(out, "running: none")?;
    } else {
        writeln!(out, "running ({}):", info.running.len())?;
        let mut t = Table::new(&["UUID", "JOB", "PLATFORM", "STARTED", "WORKER"]);
        for r in &info.running {
            t.row(vec![
                r.uuid.hyphenated().to_string(),
                r.job.clone(),
                r.platform.clone(),
                time_secs(r.started),
                r.worker.clone(),
            ]);
        }
        t.write(out, "  ")?;
    }

    if info.dropped_platforms.is_empty() {
        writeln!(out, "dropped platforms: none")?;
    } else {
        writeln!(
            out,
            "dropped platforms: {}",
            info.dropped_platforms.join(", ")
        )?;
    }

    if info.workers.is_empty() {
        writeln!(out, "workers: none connected")?;
    } else {
        writeln!(out, "workers ({}):", info.workers.len())?;
        let mut platforms: Vec<&str> = info.workers.iter().map(|w| w.platform.as_str()).collect();
        platforms.sort_unstable();
        platforms.dedup();
        for p in platforms {
            let ws: Vec<String> = info
                .workers
                .iter()
                .filter(|w| w.platform == p)
                .map(|w| match w.running {
                    Some(u) => format!("{} ({}, running {})", w.host, w.peer, u.hyphenated()),
                    None => format!("{} ({}, idle)", w.host, w.peer),
                })
                .collect();
            writeln!(out, "  {p}: {}", ws.join("; "))?;
        }
    }
    Ok(())
}

/// `default` or `600s`.
fn timeout(secs: Option<u64>) -> String {
    secs.map_or_else(|| "default".to_owned(), |s| format!("{s}s"))
}

/// `show` as text: the job's settings, then its script verbatim.
pub fn write_job(out: &mut dyn Write, e: &ScheduleEntry) -> io::Result<()> {
    let summary = JobSummary::from(e);
    writeln!(out, "name:     {}", e.job.name)?;
    writeln!(out, "job:      {}", job_kind(&summary.kind))?;
    writeln!(out, "trigger:  {}", trigger(&e.trigger))?;
    writeln!(
        out,
        "next run: {}",
        e.next_run.map_or_else(|| "-".to_owned(), time_secs)
    )?;
    writeln!(out, "timeout:  {}", timeout(e.timeout_secs))?;
    if let JobKind::Script { script, .. } = &e.job.kind {
        writeln!(out, "script ({}):", count(script.len(), "byte"))?;
        out.write_all(script.as_bytes())?;
        if !script.is_empty() && !script.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// `results` as a table.
pub fn write_results(out: &mut dyn Write, results: &[ResultEntry]) -> io::Result<()> {
    if results.is_empty() {
        return writeln!(out, "no results");
    }
    let mut t = Table::new(&[
        "UUID", "JOB", "PLATFORM", "STARTED", "DURATION", "ATTEMPTS", "RESULT", "UPLOAD",
    ]);
    for entry in results {
        let r = &entry.summary;
        t.row(vec![
            r.uuid.hyphenated().to_string(),
            r.job.clone(),
            r.platform.clone(),
            time_secs(r.started),
            duration(build_duration(r.started, r.finished)),
            entry.attempts.to_string(),
            outcome(&r.outcome),
            upload(&r.upload),
        ]);
    }
    t.write(out, "")
}

/// The observe header, for stderr.
pub fn observe_header(h: &BuildHeader) -> String {
    format!(
        "build {} of job {} on {}, started {}",
        h.uuid.hyphenated(),
        h.job,
        h.platform,
        time_secs(h.started)
    )
}

/// The observe trailer, for stderr.
pub fn observe_end(h: Option<&BuildHeader>, finished: Timestamp, o: &JobOutcome) -> String {
    match h {
        Some(h) => format!(
            "build {} of job {}: {} (finished {}, after {})",
            h.uuid.hyphenated(),
            h.job,
            outcome(o),
            time_secs(finished),
            duration(build_duration(h.started, finished))
        ),
        None => format!("build {} (finished {})", outcome(o), time_secs(finished)),
    }
}

/// Writes console lines raw: the bytes unchanged, each followed by `\n`.
pub fn write_lines_raw(out: &mut dyn Write, lines: &[OutputLine]) -> io::Result<()> {
    for line in lines {
        out.write_all(&line.data)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes one value as a line of JSON.
pub fn write_json_line<T: Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(250)), "0.250s");
        // Truncated per timestamp, as a record stores them: 1.0159 s to
        // 1.0321 s is 1.015 to 1.032, 17 ms (not 16.2 ms truncated).
        let at = |ns: i64| Timestamp(ns);
        assert_eq!(
            build_duration(at(1_015_900_000), at(1_032_100_000)),
            Duration::from_millis(17)
        );
        assert_eq!(build_duration(at(5_000_000), at(1_000_000)), Duration::ZERO);
        assert_eq!(duration(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(duration(Duration::from_secs(7385)), "2h 03m 05s");
    }

    #[test]
    fn console_deltas() {
        assert_eq!(console_delta(1_234_567_890), "[   1.234s]");
        assert_eq!(console_delta(0), "[   0.000s]");
        assert_eq!(console_delta(-1), "[  -0.000s]");
        assert_eq!(console_delta(-1_500_000_000), "[  -1.500s]");
        assert_eq!(console_delta(i64::MAX), "[9223372036.854s]");
        assert_eq!(console_delta(i64::MIN), "[-9223372036.854s]");
    }

    #[test]
    fn uploads() {
        assert_eq!(upload(&UploadState::NotConfigured), "-");
        assert_eq!(
            upload(&UploadState::Delivered { at: Timestamp(0) }),
            "delivered"
        );
        assert_eq!(
            upload(&UploadState::Pending {
                attempts: 1,
                last_error: Some("HTTP 500".into())
            }),
            "pending (1 attempt, last error: HTTP 500)"
        );
        assert_eq!(
            upload(&UploadState::Pending {
                attempts: 0,
                last_error: None
            }),
            "pending (0 attempts)"
        );
    }

    #[test]
    fn table_pads_all_but_the_last_column() {
        let mut t = Table::new(&["A", "BB", "C"]);
        t.row(vec!["long".into(), "x".into(), "end".into()]);
        let mut out = Vec::new();
        t.write(&mut out, "  ").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "  A     BB  C\n  long  x   end\n"
        );
    }

    #[test]
    fn outcome_json() {
        let v = serde_json::to_value(OutcomeView::from(&JobOutcome::Exited(3))).unwrap();
        assert_eq!(v, serde_json::json!({"kind": "exited", "code": 3}));
        let v = serde_json::to_value(OutcomeView::from(&JobOutcome::Aborted("timeout".into())))
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "aborted", "message": "timeout"})
        );
    }
}
