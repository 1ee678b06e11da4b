//! A build farm for one scenario: a real `builder-server` on 127.0.0.1
//! with port 0 and its workers, all in one temporary directory that is
//! removed (after the processes are stopped) when the [`Farm`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::handshake;
use protocol::message::{
    ClientRequest, Hello, JobKind, JobSpec, ResultSummary, ServerHello, ServerToClient,
};
use protocol::trigger::Trigger;

use crate::procs::{Binaries, Deadline, Proc, Usage};
use crate::report::{kib, percent, secs, Report};
use crate::scenarios::{Common, PLATFORM};

/// One build run by one one-shot worker, as the server's and the worker's
/// logs tell it; see [`Farm::one_build`].
pub struct OneBuild {
    /// The worker's index in [`Farm::workers`].
    pub worker: usize,
    /// Server and worker usage once the worker had connected.
    pub server_base: Usage,
    /// See `server_base`.
    pub worker_base: Usage,
    /// When the job was scheduled.
    pub t0: SystemTime,
    /// How long `builder-client schedule` took.
    pub client_took: Duration,
    /// The server handed the build to the worker.
    pub dispatched: SystemTime,
    /// The worker started the script.
    pub script_started: SystemTime,
    /// The worker sent the result and every artifact.
    pub worker_done: SystemTime,
    /// The server logged the record durable and indexed.
    pub stored: SystemTime,
    /// The worker's exit, in words.
    pub worker_exit: String,
    /// The build's record.
    pub record: PathBuf,
}

impl OneBuild {
    /// The rows from scheduling to the script's start.
    pub fn start_rows(&self, r: &mut Report) {
        r.row(
            "  builder-client schedule",
            secs(self.client_took.as_secs_f64()),
        );
        r.row(
            "  schedule → build started",
            secs(secs_between(self.t0, self.dispatched)),
        );
        r.row(
            "  build started → script started",
            secs(secs_between(self.dispatched, self.script_started)),
        );
    }

    /// The rows on resources: peak memory of `server` and `worker` (read
    /// at the end) against `size_kib` of `what`, CPU, the worker's exit.
    pub fn resource_rows(
        &self,
        r: &mut Report,
        server: Usage,
        worker: Usage,
        size_kib: u64,
        what: &str,
    ) {
        for (name, base, peak) in [
            ("server", self.server_base, server),
            ("worker", self.worker_base, worker),
        ] {
            r.row(
                format!("{name} peak RSS (VmHWM)"),
                format!(
                    "{}  = {} of {what}  (idle before: {})",
                    kib(peak.hwm_kib),
                    percent(peak.hwm_kib as f64, size_kib as f64),
                    kib(base.rss_kib)
                ),
            );
        }
        r.row(
            "CPU",
            format!(
                "server {:.2} s, worker {:.2} s, job {:.2} s",
                server.cpu_secs() - self.server_base.cpu_secs(),
                worker.cpu_secs() - self.worker_base.cpu_secs(),
                worker.children_cpu_secs()
            ),
        );
        r.row("worker exit", self.worker_exit.clone());
    }
}

/// Server log filter: the lines the scenarios time phases with.
const SERVER_LOG: &str = "warn,builder_server=info";
/// Worker log filter.
const WORKER_LOG: &str = "warn,builder_worker=info";

/// Server log line: a worker said hello.
pub const WORKER_CONNECTED: &str = "worker connected";
/// Server log line: a build was handed to a worker.
pub const BUILD_STARTED: &str = "build started";
/// Server log line: a build's record is durable and indexed.
pub const BUILD_FINISHED: &str = "build finished";
/// Server log line: builder-web accepted a record.
pub const RECORD_DELIVERED: &str = "record delivered";
/// Worker log line: the server handed it a job.
pub const JOB_RECEIVED: &str = "job received";
/// Worker log line: the server acknowledged the stored record.
pub const RESULT_STORED: &str = "result stored by the server";
/// Worker log line: the job's script was started.
pub const JOB_STARTED: &str = "job started";
/// Worker log line: the script ended and every artifact was sent.
pub const JOB_FINISHED: &str = "job finished";

/// One server, its workers and their directories.
///
/// Fields drop in order: workers, then the server, then the directories.
pub struct Farm {
    /// Workers started with [`Farm::worker`].
    pub workers: Vec<Proc>,
    /// The server.
    pub server: Proc,
    /// Its `host:port`.
    pub addr: String,
    /// The server's arguments after `--port` and `--dir` (for a restart).
    server_args: Vec<String>,
    bins: Binaries,
    /// The workers' `TMPDIR` when it is not in `root`.
    worker_root: Option<tempfile::TempDir>,
    root: tempfile::TempDir,
}

impl Farm {
    /// Creates a temporary directory under `common.tmpdir` and starts a
    /// server on it with `extra` arguments (and the user's
    /// `--server-arg`s); waits until it listens.
    pub async fn start(common: &Common, extra: &[String], deadline: &Deadline) -> Result<Farm> {
        let tmp = &common.tmpdir;
        let bins = Binaries::locate()?;
        let root = tempfile::Builder::new()
            .prefix("builder-bench-")
            .tempdir_in(tmp)
            .with_context(|| format!("cannot create a directory in {}", tmp.display()))?;
        for sub in ["state", "worker-tmp", "marks", "scripts"] {
            std::fs::create_dir(root.path().join(sub))?;
        }
        let worker_root = match &common.worker_tmpdir {
            None => None,
            Some(dir) => Some(
                tempfile::Builder::new()
                    .prefix("builder-bench-workers-")
                    .tempdir_in(dir)
                    .with_context(|| format!("cannot create a directory in {}", dir.display()))?,
            ),
        };
        let state = root.path().join("state");
        let server_args: Vec<String> = extra.iter().chain(&common.server_args).cloned().collect();
        let (server, addr) = start_server(&bins, &state, &server_args, deadline).await?;
        Ok(Farm {
            workers: Vec::new(),
            server,
            addr,
            server_args,
            bins,
            worker_root,
            root,
        })
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period) and
    /// starts a new one on the same state; returns when it spawned the
    /// process and when it logged that it listens. The new server has a
    /// new port.
    pub async fn restart_server(&mut self, deadline: &Deadline) -> Result<(Instant, Instant)> {
        self.server.stop();
        let spawned = Instant::now();
        let (server, addr) =
            start_server(&self.bins, &self.state_dir(), &self.server_args, deadline).await?;
        let listening = Instant::now();
        self.server = server;
        self.addr = addr;
        Ok((spawned, listening))
    }

    /// Stops every worker started with [`Farm::worker`].
    pub fn stop_workers(&mut self) {
        self.workers.clear();
    }

    /// The server's state directory (`--dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// Where the benchmark's jobs leave time stamps (`date +%s%N > FILE`).
    pub fn marks_dir(&self) -> PathBuf {
        self.root.path().join("marks")
    }

    /// The temporary directory everything lives in.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts a worker for `platform` (`--loop` if `looping`), with `TMPDIR`
    /// in the farm's directory (or under `--worker-tmpdir`). Returns its
    /// index in [`Farm::workers`].
    pub fn worker(&mut self, platform: &str, looping: bool) -> Result<usize> {
        let tmp = match &self.worker_root {
            Some(dir) => dir.path().to_owned(),
            None => self.root.path().join("worker-tmp"),
        };
        let mut cmd = Command::new(self.bins.path("builder-worker"));
        cmd.arg(platform)
            .args(["-r", &self.addr])
            .env("TMPDIR", tmp)
            .env("RUST_LOG", WORKER_LOG);
        if looping {
            cmd.arg("--loop");
        }
        let name = format!("builder-worker #{}", self.workers.len() + 1);
        self.workers.push(Proc::spawn(&name, cmd)?);
        Ok(self.workers.len() - 1)
    }

    /// Starts a one-shot worker and, once it is connected, schedules
    /// `script` as `job`; follows the build until the worker exits with the
    /// record stored.
    pub async fn one_build(
        &mut self,
        job: &str,
        script: &str,
        deadline: &Deadline,
    ) -> Result<OneBuild> {
        let w = self.worker(PLATFORM, false)?;
        self.server
            .wait_log("the worker to connect", deadline, 1, |l| {
                l.contains(WORKER_CONNECTED)
            })
            .await?;
        let server_base = self.server.usage();
        let worker_base = self.workers[w].usage();
        let t0 = SystemTime::now();
        let client_took = self.schedule_with_client(job, PLATFORM, script)?;
        let dispatched = self
            .server
            .wait_log("the build to start", deadline, 1, |l| {
                l.contains(BUILD_STARTED)
            })
            .await?
            .at;
        let worker = &mut self.workers[w];
        let script_started = worker
            .wait_log("the script to start", deadline, 1, |l| {
                l.contains(JOB_STARTED)
            })
            .await?
            .at;
        let worker_done = worker
            .wait_log("the worker to finish the job", deadline, 1, |l| {
                l.contains(JOB_FINISHED)
            })
            .await?
            .at;
        let stored = self
            .server
            .wait_log("the record to be stored", deadline, 1, |l| {
                l.contains(BUILD_FINISHED)
            })
            .await?
            .at;
        let exit = self.workers[w].wait_exit(deadline).await?;
        // A worker failing after the record was stored is a finding to
        // report with the figures, not a reason to throw them away.
        let worker_exit = self.workers[w].describe_exit(exit);
        let records = self.records(job);
        ensure!(
            records.len() == 1,
            "expected one record, found {}",
            records.len()
        );
        Ok(OneBuild {
            worker: w,
            server_base,
            worker_base,
            t0,
            client_took,
            dispatched,
            script_started,
            worker_done,
            stored,
            worker_exit,
            record: records.into_iter().next().expect("one record"),
        })
    }

    /// Schedules a script job with `builder-client schedule ... --period
    /// never` (which queues it at once); returns how long the client took.
    pub fn schedule_with_client(
        &self,
        name: &str,
        platform: &str,
        script: &str,
    ) -> Result<Duration> {
        let file = self.root.path().join("scripts").join(name);
        std::fs::write(&file, script)?;
        let start = Instant::now();
        let out = Command::new(self.bins.path("builder-client"))
            .args(["-r", &self.addr, "schedule", name, platform])
            .arg(&file)
            .args(["--period", "never"])
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run builder-client")?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "builder-client schedule {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    }

    /// A client connection to the server, after a successful hello.
    pub async fn connect(&self) -> Result<Client> {
        connect(&self.addr).await
    }

    /// The path of a binary the farm runs (`builder-client`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.path(name)
    }

    /// Paths of every stored `full` record of `job`.
    pub fn records(&self, job: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.state_dir().join(job)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| Some(e.ok()?.path().join("full")))
            .filter(|p| p.is_file())
            .collect()
    }
}

/// A client connection speaking the protocol directly.
pub struct Client {
    conn: Connection,
}

impl Client {
    /// Sends `req` and returns the answer, past any notices (`warning: no
    /// worker has ever asked for platform ...`).
    async fn request(&mut self, req: &ClientRequest) -> Result<ServerToClient> {
        self.conn.send(req).await?;
        loop {
            match self
                .conn
                .recv::<ServerToClient>()
                .await?
                .context("the server closed the connection")?
            {
                ServerToClient::Notice { .. } => {}
                answer => return Ok(answer),
            }
        }
    }

    /// Schedules a script job that runs once (trigger `never`, queued now).
    pub async fn schedule(&mut self, name: &str, platform: &str, script: &str) -> Result<()> {
        let req = ClientRequest::Schedule {
            job: JobSpec {
                name: name.to_owned(),
                kind: JobKind::Script {
                    platform: platform.to_owned(),
                    script: script.to_owned(),
                },
            },
            trigger: Trigger::Never,
            timeout_secs: None,
        };
        match self.request(&req).await? {
            ServerToClient::Success { .. } => Ok(()),
            ServerToClient::Failure { reason } => bail!("scheduling {name} failed: {reason}"),
            other => bail!("unexpected answer to schedule: {other:?}"),
        }
    }

    /// Puts `name` at the front of its queue now.
    pub async fn execute(&mut self, name: &str) -> Result<()> {
        let req = ClientRequest::Execute {
            name: name.to_owned(),
            platform: None,
        };
        match self.request(&req).await? {
            ServerToClient::Success { .. } => Ok(()),
            ServerToClient::Failure { reason } => bail!("execute {name} failed: {reason}"),
            other => bail!("unexpected answer to execute: {other:?}"),
        }
    }

    /// Asks for `info` and reads the whole answer; returns its size.
    pub async fn info(&mut self) -> Result<InfoSize> {
        self.conn.send(&ClientRequest::Info).await?;
        let mut size = InfoSize::default();
        loop {
            let frame = self
                .conn
                .recv_frame()
                .await?
                .context("the server closed the connection during info")?;
            size.bytes += frame.len() as u64;
            match protocol::message::decode::<ServerToClient>(&frame)? {
                ServerToClient::InfoPart(items) => size.items += items.len() as u64,
                ServerToClient::Notice { .. } => {}
                ServerToClient::InfoEnd { items } => {
                    ensure!(
                        items == size.items,
                        "info announced {items} items but sent {}",
                        size.items
                    );
                    return Ok(size);
                }
                ServerToClient::Failure { reason } => bail!("info failed: {reason}"),
                other => bail!("unexpected answer to info: {other:?}"),
            }
        }
    }

    /// The newest `limit` finished builds.
    pub async fn results(&mut self, limit: u32) -> Result<Vec<ResultSummary>> {
        match self
            .request(&ClientRequest::Results { job: None, limit })
            .await?
        {
            ServerToClient::ResultList(results) => {
                Ok(results.into_iter().map(|e| e.summary).collect())
            }
            ServerToClient::Failure { reason } => bail!("results failed: {reason}"),
            other => bail!("unexpected answer to results: {other:?}"),
        }
    }
}

/// A client connection to `addr`, after a successful hello.
pub async fn connect(addr: &str) -> Result<Client> {
    let hello = Hello::client(None, concat!("builder-bench ", env!("CARGO_PKG_VERSION")));
    let (conn, _server) = handshake::connect(
        addr,
        &hello,
        DEFAULT_MAX_FRAME,
        handshake::Timeouts::default(),
    )
    .await
    .context("the benchmark's client")?;
    Ok(Client { conn })
}

/// A connection to `addr` that said the hello of a worker of `platform`
/// on `host`, and the server's answer (its heartbeat interval).
pub async fn worker_connection(
    addr: &str,
    platform: &str,
    host: &str,
) -> Result<(Connection, ServerHello)> {
    let hello = Hello::worker(
        platform,
        host,
        None,
        concat!("builder-bench ", env!("CARGO_PKG_VERSION")),
    );
    handshake::connect(
        addr,
        &hello,
        DEFAULT_MAX_FRAME,
        handshake::Timeouts::default(),
    )
    .await
    .context("the benchmark's worker connection")
}

/// How big an `info` answer was.
#[derive(Clone, Copy, Debug, Default)]
pub struct InfoSize {
    /// Frame payload bytes.
    pub bytes: u64,
    /// Items (jobs, queues, running builds, platforms, workers).
    pub items: u64,
}

/// Starts `builder-server` on `state` with port 0 and `args`; waits until it
/// logs its address. Returns the process and its `host:port`.
async fn start_server(
    bins: &Binaries,
    state: &Path,
    args: &[String],
    deadline: &Deadline,
) -> Result<(Proc, String)> {
    let mut cmd = Command::new(bins.path("builder-server"));
    cmd.args(["--ip", "127.0.0.1", "--port", "0", "--dir"])
        .arg(state)
        .arg("--config-dir")
        .arg(state.join("etc"))
        .args(args)
        .env("RUST_LOG", SERVER_LOG);
    let mut server = Proc::spawn("builder-server", cmd)?;
    let line = server
        .wait_log("the server to listen", deadline, 1, |l| {
            l.contains("address=")
        })
        .await?;
    let addr = line
        .text
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow!("no address in the server's line {:?}", line.text))?
        .to_owned();
    Ok((server, addr))
}

/// Reads a time stamp a job wrote with `date +%s%N > FILE`.
pub fn read_mark(path: &Path) -> Result<SystemTime> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the job did not write its time stamp {}", path.display()))?;
    let ns: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a `date +%s%N` time: {text:?}", path.display()))?;
    Ok(UNIX_EPOCH + Duration::from_nanos(ns))
}

/// `path` quoted for `/bin/sh`.
pub fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Seconds from `a` to `b` (negative if `b` is earlier).
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Bytes free for an unprivileged user in the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    Ok(st.blocks_available() * st.fragment_size())
}

/// Median latency of writing 4 KiB and fsyncing it, `rounds` times, in
/// `dir`: what every durable commit of the server pays at least once.
pub fn fsync_latency(dir: &Path, rounds: usize) -> Result<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        file.write_all(&[0u8; 4096])?;
        file.sync_all()?;
        times.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort();
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("m");
        std::fs::write(&mark, "1700000000123456789\n").unwrap();
        let t = read_mark(&mark).unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_nanos(1_700_000_000_123_456_789)
        );
        assert_eq!(sh_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
