//! The harness every worker test shares: a scripted server speaking the
//! real protocol, and the real worker binary behind a guard. Every wait
//! fails after [`DEADLINE`].

#![allow(dead_code)]

use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::{
    Hello, HelloReply, JobAssignment, JobOutcome, OutputLine, ServerHello, ServerToWorker,
    Timestamp, WorkerMessage,
};
use protocol::PROTOCOL_VERSION;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};
use uuid::Uuid;

/// How long any single wait in a test may take before it fails (the
/// server's tests wait as long: a loaded machine is slow, not broken).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The heartbeat the scripted server asks for.
pub const HEARTBEAT_MS: u64 = 250;

pub type Conn = Connection<TcpStream>;

/// Awaits `f`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A temporary directory whose `jobs/` is the worker's `$TMPDIR`.
pub struct Env {
    pub root: tempfile::TempDir,
    pub jobs: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let root = tempfile::tempdir().unwrap();
        let jobs = root.path().join("jobs");
        fs::create_dir(&jobs).unwrap();
        Env { root, jobs }
    }

    /// What is left in `$TMPDIR`.
    pub fn leftovers(&self) -> Vec<String> {
        fs::read_dir(&self.jobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    pub fn assert_jobs_dir_empty(&self) {
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "job directory left behind"
        );
    }
}

/// The worker process; killed when dropped.
pub struct Worker {
    child: Child,
    stderr: PathBuf,
}

impl Worker {
    /// Starts `builder-worker test-platform -r ADDR --kill-grace 1 ARGS...`.
    pub fn start(env: &Env, addr: SocketAddr, args: &[&str]) -> Worker {
        Worker::start_with(env, addr, args, |_| {})
    }

    pub fn start_with(
        env: &Env,
        addr: SocketAddr,
        args: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Worker {
        let stderr = env
            .root
            .path()
            .join(format!("worker-{}.stderr", Uuid::new_v4()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_builder-worker"));
        cmd.arg("test-platform")
            .arg("-r")
            .arg(addr.to_string())
            .args(["--kill-grace", "1"])
            .args(args)
            .env("TMPDIR", &env.jobs)
            .env("RUST_LOG", "builder_worker=debug")
            .env_remove("BUILDER_TOKEN")
            .env_remove("BUILDER_REMOTE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .kill_on_drop(true);
        tweak(&mut cmd);
        let child = cmd.spawn().expect("start builder-worker");
        Worker { child, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    /// Waits for the worker to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        let status = within("the worker to exit", self.child.wait())
            .await
            .unwrap();
        status
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- worker stderr ---\n{}", self.stderr());
        }
        // `kill_on_drop` ends the process.
    }
}

/// Binds a scripted server on 127.0.0.1:0.
pub async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Accepts the worker and reads its hello.
pub async fn accept(listener: &TcpListener) -> (Conn, Hello) {
    let (stream, _) = within("the worker to connect", listener.accept())
        .await
        .unwrap();
    let mut conn = Connection::from_tcp(stream, DEFAULT_MAX_FRAME).unwrap();
    let hello: Hello = within("the hello", conn.recv()).await.unwrap().unwrap();
    (conn, hello)
}

/// Accepts the worker, welcomes it and waits for its job request.
pub async fn accept_ready(listener: &TcpListener) -> (Conn, Hello) {
    let (mut conn, hello) = accept(listener).await;
    welcome(&mut conn).await;
    expect_request(&mut conn).await;
    (conn, hello)
}

pub async fn welcome(conn: &mut Conn) {
    conn.send(&HelloReply::Welcome(ServerHello {
        version: PROTOCOL_VERSION,
        software: "scripted-server".into(),
        heartbeat_ms: HEARTBEAT_MS,
    }))
    .await
    .unwrap();
}

/// The next message that is not a heartbeat; `None` when the worker closed.
/// Sends the server's heartbeats while it waits, as a server does.
pub async fn next(conn: &mut Conn) -> Option<WorkerMessage> {
    let deadline = Instant::now() + DEADLINE;
    let beat = Duration::from_millis(HEARTBEAT_MS);
    let mut beats = tokio::time::interval_at(Instant::now() + beat, beat);
    loop {
        tokio::select! {
            msg = conn.recv::<WorkerMessage>() => match msg {
                Ok(Some(WorkerMessage::Heartbeat)) => continue,
                Ok(Some(msg)) => return Some(msg),
                Ok(None) => return None,
                Err(e) => panic!("bad frame from the worker: {e}"),
            },
            _ = beats.tick() => {
                assert!(Instant::now() < deadline, "timed out waiting for a worker message");
                conn.send(&ServerToWorker::Heartbeat).await.unwrap();
            }
        }
    }
}

pub async fn expect_request(conn: &mut Conn) {
    match next(conn).await {
        Some(WorkerMessage::RequestJob) => {}
        other => panic!("expected RequestJob, got {other:?}"),
    }
}

pub fn job(script: &str, timeout_secs: u64) -> JobAssignment {
    JobAssignment {
        uuid: Uuid::new_v4(),
        name: "test-job".into(),
        platform: "test-platform".into(),
        script: script.into(),
        timeout_secs,
    }
}

/// Everything a worker reported about one job.
#[derive(Debug, Default)]
pub struct Report {
    pub uuid: Uuid,
    pub started: Option<Timestamp>,
    pub console: Vec<OutputLine>,
    /// Number of Console messages.
    pub batches: usize,
    /// (path, announced length, bytes received)
    pub artifacts: Vec<(Vec<u8>, u64, Vec<u8>)>,
    pub chunk_sizes: Vec<usize>,
    pub finished: Option<(Timestamp, JobOutcome)>,
}

impl Report {
    pub fn new(uuid: Uuid) -> Report {
        Report {
            uuid,
            ..Report::default()
        }
    }

    /// Console lines, lossily decoded.
    pub fn lines(&self) -> Vec<String> {
        self.console
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect()
    }

    /// The value of the first console line `KEY VALUE`.
    pub fn value(&self, key: &str) -> Option<String> {
        self.lines().iter().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
        })
    }

    pub fn outcome(&self) -> &JobOutcome {
        &self.finished.as_ref().expect("finished").1
    }

    pub fn artifact_paths(&self) -> Vec<String> {
        self.artifacts
            .iter()
            .map(|a| String::from_utf8_lossy(&a.0).into_owned())
            .collect()
    }

    pub fn artifact(&self, path: &str) -> &[u8] {
        &self
            .artifacts
            .iter()
            .find(|a| a.0 == path.as_bytes())
            .unwrap_or_else(|| panic!("no artifact {path}"))
            .2
    }

    /// Checks a message against the protocol and records it.
    fn apply(&mut self, msg: WorkerMessage) {
        assert!(self.finished.is_none(), "message after Finished: {msg:?}");
        match msg {
            WorkerMessage::Started { uuid, at } => {
                assert_eq!(uuid, self.uuid);
                assert!(self.started.is_none(), "Started twice");
                assert!(self.console.is_empty(), "Started after console");
                self.started = Some(at);
            }
            WorkerMessage::Console { uuid, lines } => {
                assert_eq!(uuid, self.uuid);
                assert!(self.started.is_some(), "console before Started");
                assert!(self.artifacts.is_empty(), "console after artifacts");
                assert!(!lines.is_empty(), "empty console batch");
                self.batches += 1;
                self.console.extend(lines);
            }
            WorkerMessage::ArtifactStart { uuid, path, len } => {
                assert_eq!(uuid, self.uuid);
                self.check_last_artifact_complete();
                self.artifacts.push((path, len, Vec::new()));
            }
            WorkerMessage::ArtifactChunk { uuid, data } => {
                assert_eq!(uuid, self.uuid);
                assert!(data.len() <= protocol::codec::CHUNK_SIZE);
                assert!(!data.is_empty(), "empty chunk");
                self.chunk_sizes.push(data.len());
                let last = self
                    .artifacts
                    .last_mut()
                    .expect("chunk before ArtifactStart");
                last.2.extend(data);
                assert!(
                    last.2.len() as u64 <= last.1,
                    "artifact longer than announced"
                );
            }
            WorkerMessage::Finished {
                uuid,
                finished,
                outcome,
            } => {
                assert_eq!(uuid, self.uuid);
                if matches!(outcome, JobOutcome::Exited(_)) {
                    self.check_last_artifact_complete();
                }
                self.finished = Some((finished, outcome));
            }
            other => panic!("unexpected message during a job: {other:?}"),
        }
    }

    fn check_last_artifact_complete(&self) {
        if let Some((path, len, data)) = self.artifacts.last() {
            assert_eq!(
                data.len() as u64,
                *len,
                "artifact {} incomplete",
                String::from_utf8_lossy(path)
            );
        }
    }
}

/// Reads the job's messages until `until` holds or the job finished.
pub async fn drive(conn: &mut Conn, report: &mut Report, until: impl Fn(&Report) -> bool) {
    while report.finished.is_none() && !until(report) {
        match next(conn).await {
            Some(msg) => report.apply(msg),
            None => panic!("the worker closed the connection during the job"),
        }
    }
}

/// Sends `job`, reads everything until Finished, replies Stored.
pub async fn serve_job(conn: &mut Conn, job: JobAssignment) -> Report {
    let uuid = job.uuid;
    conn.send(&ServerToWorker::Job(job)).await.unwrap();
    let mut report = Report::new(uuid);
    drive(conn, &mut report, |_| false).await;
    conn.send(&ServerToWorker::Stored { uuid }).await.unwrap();
    report
}

/// Runs one script on a fresh one-shot worker; checks the worker exits 0
/// and leaves no job directory.
pub async fn run_script(script: &str) -> Report {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    let report = serve_job(&mut conn, job(script, 60)).await;
    let status = worker.exit().await;
    assert!(status.success(), "worker: {status}\n{}", worker.stderr());
    env.assert_jobs_dir_empty();
    report
}

/// Whether a process exists and is not a zombie: `kill(pid, 0)`, and, for
/// a process that exists, its state in `/proc` where there is one (a zombie
/// nobody reaped yet counts as gone). Without `/proc` a process that exists
/// counts as alive: never gone by default.
pub fn alive(pid: i32) -> bool {
    let exists = |pid| match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        // Exists, but is not ours to signal.
        Err(Errno::EPERM) | Ok(()) => true,
        Err(e) => panic!("kill({pid}, 0): {e}"),
    };
    if !exists(pid) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        // Reaped between the two looks, or no /proc here.
        Err(_) => exists(pid),
    }
}

/// Polls until every pid is gone; fails after the deadline.
pub async fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes still alive: {left:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `cond` holds; fails after the deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}
