//! Child processes: the real release binaries, their stderr (each line
//! stamped when it arrives) and their memory and CPU read from `/proc`.
//! Every child is stopped when its [`Proc`] is dropped, and gets SIGKILL
//! from the kernel if the benchmark itself dies.

use std::io::Read;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often a child's memory is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// How long a child gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `/proc/<pid>/stat` times are in USER_HZ, which is 100 on every Linux
/// architecture's user ABI.
const USER_HZ: f64 = 100.0;

/// The release binaries, found next to `builder-bench` itself.
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Finds `builder-server`, `builder-worker` and `builder-client` in the
    /// directory of the running executable.
    pub fn locate() -> Result<Binaries> {
        let exe = std::env::current_exe().context("cannot find builder-bench's own path")?;
        let dir = exe
            .parent()
            .context("builder-bench's path has no directory")?
            .to_owned();
        for name in ["builder-server", "builder-worker", "builder-client"] {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} is missing: run `cargo build --release --workspace` first \
                     (builder-bench drives the binaries next to it)",
                    path.display()
                );
            }
        }
        Ok(Binaries { dir })
    }

    /// The path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One line a child wrote on stderr.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When it was logged: the line's own RFC 3339 time stamp (the
    /// binaries' `tracing` format starts with one), or when the benchmark
    /// read it if it has none.
    pub at: SystemTime,
    /// The line, without its newline.
    pub text: String,
}

/// What a child wrote on stdout, counted as it arrived.
#[derive(Debug, Default)]
pub struct Counted {
    /// Bytes.
    pub bytes: AtomicU64,
    /// Newlines.
    pub lines: AtomicU64,
    /// When the last bytes arrived.
    pub last_at: Mutex<Option<SystemTime>>,
}

/// Memory and CPU of a process, as last read from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Peak resident set size (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Largest `VmRSS` sampled, KiB.
    pub max_rss_kib: u64,
    /// User + system CPU time of the process itself, in USER_HZ ticks.
    pub cpu_ticks: u64,
    /// User + system CPU time of its waited-for children, in ticks.
    pub children_cpu_ticks: u64,
    /// User + system CPU time of its children still running (and of their
    /// own waited-for children), in ticks: a worker's watchdog.
    pub live_children_cpu_ticks: u64,
}

impl Usage {
    /// CPU seconds of the process itself.
    pub fn cpu_secs(&self) -> f64 {
        self.cpu_ticks as f64 / USER_HZ
    }

    /// CPU seconds of its finished children.
    pub fn children_cpu_secs(&self) -> f64 {
        self.children_cpu_ticks as f64 / USER_HZ
    }

    /// CPU seconds of its children still running.
    pub fn live_children_cpu_secs(&self) -> f64 {
        self.live_children_cpu_ticks as f64 / USER_HZ
    }
}

/// A running child process, stopped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<LogLine>>>,
    usage: Arc<Mutex<Usage>>,
    /// Every sample: when, CPU ticks of the process itself.
    cpu_series: Arc<Mutex<Vec<(SystemTime, u64)>>>,
    stop_sampling: Arc<AtomicBool>,
}

impl Proc {
    /// Starts `cmd` with stdin and stdout on `/dev/null` and stderr read
    /// line by line; its memory is sampled every [`SAMPLE_EVERY`].
    ///
    /// Call from the thread that outlives the child (the main thread): the
    /// child's parent-death signal fires when the spawning thread ends.
    pub fn spawn(name: &str, cmd: Command) -> Result<Proc> {
        Proc::start(name, cmd, None)
    }

    /// Like [`Proc::spawn`], but stdout is read and counted (bytes and
    /// newlines) without being kept: an observer's console.
    pub fn spawn_counting(name: &str, cmd: Command) -> Result<(Proc, Arc<Counted>)> {
        let counted = Arc::new(Counted::default());
        let proc = Proc::start(name, cmd, Some(counted.clone()))?;
        Ok((proc, counted))
    }

    fn start(name: &str, mut cmd: Command, count_stdout: Option<Arc<Counted>>) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(if count_stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();

        if let (Some(counted), Some(mut stdout)) = (count_stdout, child.stdout.take()) {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                            counted.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            counted.lines.fetch_add(lines as u64, Ordering::Relaxed);
                            *counted.last_at.lock().unwrap() = Some(SystemTime::now());
                        }
                    }
                }
            });
        }

        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let arrived = SystemTime::now();
                        let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        let at = logged_at(&text).unwrap_or(arrived);
                        sink.lock().unwrap().push(LogLine { at, text });
                    }
                }
            }
        });

        let usage = Arc::new(Mutex::new(Usage::default()));
        let stop_sampling = Arc::new(AtomicBool::new(false));
        let cpu_series = Arc::new(Mutex::new(Vec::new()));
        let (shared, series, stop) = (usage.clone(), cpu_series.clone(), stop_sampling.clone());
        std::thread::spawn(move || {
            // Bounded: the scenario's deadline ends the process, and with
            // it this loop (a 10 min run is 12,000 samples).
            while !stop.load(Ordering::Relaxed) {
                let Some(now) = read_usage(pid) else { break };
                series
                    .lock()
                    .unwrap()
                    .push((SystemTime::now(), now.cpu_ticks));
                shared.lock().unwrap().merge(now);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });

        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            usage,
            cpu_series,
            stop_sampling,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Memory and CPU now (read from `/proc` if the process is still
    /// there, otherwise the last sample).
    pub fn usage(&self) -> Usage {
        let mut usage = self.usage.lock().unwrap();
        if let Some(now) = read_usage(self.pid()) {
            usage.merge(now);
            usage.live_children_cpu_ticks = live_children_cpu_ticks(self.pid());
        }
        *usage
    }

    /// CPU seconds the process itself used between `from` and `to`, from
    /// the samples taken every [`SAMPLE_EVERY`] (so to about that
    /// precision at each end).
    pub fn cpu_secs_between(&self, from: SystemTime, to: SystemTime) -> f64 {
        let series = self.cpu_series.lock().unwrap();
        let at = |t: SystemTime| {
            series
                .iter()
                .take_while(|(when, _)| *when <= t)
                .last()
                .or(series.first())
                .map_or(0, |(_, ticks)| *ticks)
        };
        at(to).saturating_sub(at(from)) as f64 / USER_HZ
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.log.lock().unwrap().clone()
    }

    /// The last `n` lines logged, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let start = log.len().saturating_sub(n);
        log[start..]
            .iter()
            .map(|l| format!("  {}", l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `count` lines in all matched `pred`; returns the last of
    /// them. Fails if the process exits first or at the deadline.
    pub async fn wait_log(
        &mut self,
        what: &str,
        deadline: &Deadline,
        count: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Result<LogLine> {
        let mut cursor = 0;
        let mut seen = 0;
        let mut exited = None;
        loop {
            {
                let log = self.log.lock().unwrap();
                for line in &log[cursor..] {
                    if pred(&line.text) {
                        seen += 1;
                        if seen >= count {
                            return Ok(line.clone());
                        }
                    }
                }
                cursor = log.len();
            }
            if let Some(status) = exited {
                bail!(
                    "{} exited ({status}) while the benchmark waited for {what}; its last lines:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if let Some(status) = self.child.try_wait()? {
                // Scan once more: lines written just before the exit may
                // still have been in the pipe.
                tokio::time::sleep(Duration::from_millis(100)).await;
                exited = Some(status);
                continue;
            }
            deadline.check(what, || self.log_tail(20))?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `status` in words; a failure quotes the process's last error or
    /// warning.
    pub fn describe_exit(&self, status: ExitStatus) -> String {
        if status.success() {
            return "0 (success)".to_owned();
        }
        let log = self.log.lock().unwrap();
        let why = log
            .iter()
            .rev()
            .find(|l| {
                l.text.starts_with("error:")
                    || l.text.contains(" ERROR ")
                    || l.text.contains(" WARN ")
            })
            .map_or("", |l| l.text.as_str());
        format!("PROBLEM: {status}: {why}")
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, deadline: &Deadline) -> Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            deadline.check(&format!("{} to exit", self.name), || self.log_tail(20))?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Proc {
    /// Stops the process: SIGTERM, then SIGKILL after [`STOP_GRACE`]; waits
    /// for it. Its figures stay readable (the last sample).
    pub fn stop(&mut self) {
        self.stop_sampling.store(true, Ordering::Relaxed);
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < STOP_GRACE {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Usage {
    fn merge(&mut self, now: Usage) {
        self.hwm_kib = self.hwm_kib.max(now.hwm_kib);
        self.max_rss_kib = self.max_rss_kib.max(now.rss_kib).max(now.max_rss_kib);
        self.rss_kib = now.rss_kib;
        self.cpu_ticks = self.cpu_ticks.max(now.cpu_ticks);
        self.children_cpu_ticks = self.children_cpu_ticks.max(now.children_cpu_ticks);
    }
}

/// The time stamp a `tracing` line starts with
/// (`2026-01-02T03:04:05.123456Z  INFO ...`).
pub fn logged_at(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(SystemTime::from(t))
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` once the
/// process is gone (or a zombie, which has no memory left to show).
pub fn read_usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (rss, hwm) = parse_status(&status);
    let (rss_kib, hwm_kib) = (rss?, hwm?);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (cpu_ticks, children_cpu_ticks) = parse_stat_cpu(&stat).unwrap_or_default();
    Some(Usage {
        hwm_kib,
        rss_kib,
        max_rss_kib: rss_kib,
        cpu_ticks,
        children_cpu_ticks,
        // Only when asked for ([`Proc::usage`]), not at every sample.
        live_children_cpu_ticks: 0,
    })
}

/// CPU ticks of `pid`'s running children (each one's own and its waited-for
/// children's), from `/proc/<pid>/task/*/children`.
fn live_children_cpu_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut ticks = 0;
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace() {
            if let Some((own, waited)) = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parse_stat_cpu(&stat))
            {
                ticks += own + waited;
            }
        }
    }
    ticks
}

/// `VmRSS` and `VmHWM` (KiB) from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    (field("VmRSS"), field("VmHWM"))
}

/// `utime + stime` and `cutime + cstime` (ticks) from the text of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<(u64, u64)> {
    let rest = text.rsplit_once(')')?.1;
    // Field 3 (state) is index 0; utime, stime, cutime, cstime are fields
    // 14..=17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Option<u64> { fields.get(i)?.parse::<i64>().ok()?.try_into().ok() };
    Some((num(11)? + num(12)?, num(13)? + num(14)?))
}

/// A scenario's time limit: every wait checks it.
pub struct Deadline {
    end: Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from now.
    pub fn new(limit: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + limit,
            limit,
        }
    }

    /// Fails once the deadline has passed; `context` adds detail (a log tail).
    pub fn check(&self, what: &str, context: impl FnOnce() -> String) -> Result<()> {
        if Instant::now() >= self.end {
            let context = context();
            let sep = if context.is_empty() {
                ""
            } else {
                "; last log lines:\n"
            };
            bail!(
                "gave up waiting for {what}: the scenario's {} s deadline passed{sep}{context}",
                self.limit.as_secs()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_parsed() {
        let text = "Name:\tbuilder-server\nVmPeak:\t  900000 kB\nVmHWM:\t   20480 kB\n\
                    VmRSS:\t   10240 kB\nRssAnon:\t 5000 kB\n";
        assert_eq!(parse_status(text), (Some(10240), Some(20480)));
        // A zombie has no memory fields.
        assert_eq!(parse_status("Name:\tx\nState:\tZ (zombie)\n"), (None, None));
    }

    #[test]
    fn stat_cpu_is_counted_after_the_command_name() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 100 1000 200";
        assert_eq!(parse_stat_cpu(text), Some((300, 10)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn log_lines_carry_their_time() {
        let t =
            logged_at("2026-11-23T19:48:04.970106Z  INFO builder_server::worker: build started")
                .unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap(),
            Duration::from_micros(1_795_463_284_970_106)
        );
        assert_eq!(logged_at("error: no time here"), None);
        assert_eq!(logged_at(""), None);
    }

    #[test]
    fn this_process_has_usage() {
        let usage = read_usage(std::process::id()).expect("/proc/self");
        assert!(usage.rss_kib > 0 && usage.hwm_kib >= usage.rss_kib);
    }
}
