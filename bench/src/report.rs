//! A scenario's result block: what ran, on what, and the figures.

use std::fmt::Write as _;

/// One MiB.
pub const MIB: u64 = 1024 * 1024;

/// A scenario's figures, printed as an aligned block.
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
}

impl Report {
    /// An empty report headed `title`.
    pub fn new(title: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.rows.push((label.into(), value.into()));
    }

    /// The block: title, command, date, machine and its load (`load_before`
    /// the scenario, [`load`] now), then the figures.
    pub fn render(&self, command: &str, load_before: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {}", self.title);
        let head = [
            ("command", command.to_owned()),
            (
                "date",
                chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            ),
            ("machine", machine()),
            ("load", format!("before: {load_before}; after: {}", load())),
        ];
        let width = head
            .iter()
            .map(|(l, _)| l.len())
            .chain(self.rows.iter().map(|(l, _)| l.len()))
            .max()
            .unwrap_or(0);
        for (label, value) in head.iter().map(|(l, v)| (*l, v.as_str())) {
            let _ = writeln!(out, "{label:<width$}  {value}");
        }
        for (label, value) in &self.rows {
            let _ = writeln!(out, "{label:<width$}  {value}");
        }
        out
    }
}

/// CPUs, memory, kernel and the compiler builder-bench was built with.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or_else(
            || "? GiB".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / MIB as f64),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_owned(), |k| k.trim().to_owned());
    format!(
        "{cpus} CPUs, {mem} RAM, Linux {kernel}, {}",
        env!("BENCH_RUSTC_VERSION")
    )
}

/// `12.345 s`.
pub fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.3} s")
    }
}

/// `123.4 MiB` from KiB.
pub fn kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `123.4 MiB/s, 129.4 MB/s` for `bytes` in `secs`.
pub fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".to_owned();
    }
    let per_sec = bytes as f64 / secs;
    format!(
        "{:.1} MiB/s, {:.1} MB/s",
        per_sec / MIB as f64,
        per_sec / 1e6
    )
}

/// `x` as a percentage of `of`.
pub fn percent(x: f64, of: f64) -> String {
    if of <= 0.0 {
        return "-".to_owned();
    }
    format!("{:.1}%", 100.0 * x / of)
}

/// The `p`-th percentile (0..=100) of `sorted` seconds, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `median 1.2 ms, p99 3.4 ms, max 5.6 ms (n = 200)` of `samples` seconds.
pub fn latencies(samples: &[f64]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "median {}, p99 {}, max {}  (n = {})",
        secs(percentile(&sorted, 50.0)),
        secs(percentile(&sorted, 99.0)),
        secs(sorted.last().copied().unwrap_or(0.0)),
        sorted.len()
    )
}

/// The machine's load averages (`/proc/loadavg`): other work on the same
/// cores skews every figure.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".to_owned(),
        |l| {
            let avg: Vec<&str> = l.split_whitespace().take(3).collect();
            format!("{} (1, 5, 15 min)", avg.join(" "))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert!(latencies(&[0.003, 0.001, 0.002]).starts_with("median 2.0 ms, p99 3.0 ms"));
    }

    #[test]
    fn figures_are_formatted() {
        assert_eq!(secs(0.0123), "12.3 ms");
        assert_eq!(secs(12.3456), "12.346 s");
        assert_eq!(kib(2048), "2.0 MiB");
        assert_eq!(rate(100 * MIB, 2.0), "50.0 MiB/s, 52.4 MB/s");
        assert_eq!(percent(1.0, 4.0), "25.0%");
        let mut r = Report::new("t");
        r.row("a label", "1");
        let text = r.render("builder-bench x", "0.5");
        assert!(text.contains("command  builder-bench x") && text.contains("a label  1"));
    }
}
