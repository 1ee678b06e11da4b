//! The harness every server test shares: a server in this process (through
//! `builder_server::run`, stopped when dropped) or, where a test signals or
//! kills it, the real binary; real `builder-worker` and `builder-client`
//! processes; all on 127.0.0.1 with port 0, in temporary directories. Every
//! wait polls against [`DEADLINE`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use builder_server::Config;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::handshake;
use protocol::info::InfoSummary;
use protocol::message::{ClientRequest, Hello, ScheduleEntry, ServerToClient};
use protocol::record::Exec;

/// How long any wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The environment variable that skips, loudly, the tests that need root
/// when they do not run as root (`BUILDER_TEST_SKIP_ROOT=1`).
pub const SKIP_ROOT: &str = "BUILDER_TEST_SKIP_ROOT";

/// The heartbeat every test server asks of its workers.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// Path of a binary of this workspace. `cargo test --workspace` builds them
/// all before running any test.
pub fn bin(name: &str) -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_builder-server"));
    let path = server.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// The repository's `fixtures/` (the reference's golden vectors); missing
/// fixtures are a failure, never a skip.
pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("README.md").is_file(),
        "fixtures missing: expected them at {}",
        dir.display()
    );
    dir
}

/// Polls `f` until it returns `Some`, failing the test after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A runtime for a test's own async code: peers, raw connections, the
/// state database's calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the test")
}

/// Runs one future (one of the state database's async calls, say) from a
/// plain test.
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A temporary directory holding `worker-tmp/` (the workers' `$TMPDIR`),
/// and a server in this process on its `state/`.
pub fn setup() -> (tempfile::TempDir, Server) {
    setup_with(|_| {})
}

/// [`setup`] with the server's settings changed by `configure`.
pub fn setup_with(configure: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let server = Server::start_with(&tmp.path().join("state"), configure);
    (tmp, server)
}

/// Whether a test that needs root may go on: yes as root. Otherwise the
/// test fails, unless [`SKIP_ROOT`] is `1`: then this says on stderr that
/// the test is skipped (shown even when the test passes) and returns false.
pub fn needs_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os(SKIP_ROOT).is_some_and(|v| v == "1") {
        // Past the test harness's capture, so that it shows on a pass too.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED ({SKIP_ROOT}=1): {what} needs root"
        );
        return false;
    }
    panic!("{what} needs root: run the tests as root, or set {SKIP_ROOT}=1 to skip it");
}

/// Whether a process exists and is not a zombie: `kill(pid, 0)`, and, for
/// a process that exists, its state in `/proc` where there is one (a zombie
/// counts as gone). Without `/proc` a process that exists counts as alive:
/// never gone by default.
pub fn alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        // Exists, but is not ours to signal.
        Err(Errno::EPERM) => true,
        Err(e) => panic!("kill({pid}, 0): {e}"),
        Ok(()) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z')),
            // Reaped between the two looks, or no /proc here.
            Err(_) => kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH),
        },
    }
}

/// A child process killed (SIGKILL) when dropped; its stderr is collected.
pub struct Guard {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Guard {
    fn spawn(mut cmd: Command) -> Guard {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Guard { child, log }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for("process exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a [`Server`] runs.
enum Running {
    /// On its own runtime in a thread of this process.
    InProcess(InProcess),
    /// The real `builder-server` binary.
    Binary(Guard),
}

/// A server running in this process.
struct InProcess {
    /// Dropping it completes the server's shutdown future.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The thread that runs it; its result is `run`'s.
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Everything it logged, as the binary would on stderr.
    log: Arc<Mutex<String>>,
}

impl InProcess {
    /// Stops the server and waits until it has let go of its state
    /// directory; returns what `run` returned.
    fn stop(&mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the server's thread panicked"))),
            None => Ok(()),
        }
    }
}

/// Collects the log lines of the server running on this runtime's threads.
#[derive(Clone)]
struct LogSink(Arc<Mutex<String>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running server: in this process ([`Server::start`]) or the real binary
/// ([`Server::binary`]). Stopped when dropped.
pub struct Server {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its state directory.
    pub dir: PathBuf,
    running: Running,
}

impl Server {
    /// The settings of a test server on `dir`: the defaults, with templates
    /// in `DIR/etc` and a [`HEARTBEAT`] of 200 ms.
    pub fn config(dir: &Path) -> Config {
        let mut config = Config::new(dir.to_owned());
        config.config_dir = dir.join("etc");
        config.heartbeat = HEARTBEAT;
        config
    }

    /// Starts a server in this process on `dir` with [`Server::config`].
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, |_| {})
    }

    /// Starts a server in this process on `dir`, with [`Server::config`]
    /// changed by `configure`. Returns once it listens, as the binary's
    /// start-up line says: after its recovery.
    pub fn start_with(dir: &Path, configure: impl FnOnce(&mut Config)) -> Server {
        let mut config = Server::config(dir);
        configure(&mut config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = LogSink(log.clone());
        // The binary's log format, at info (as with RUST_LOG=info), on
        // every thread of this server's runtime and on none other: tests
        // run side by side in this process, each server logs apart.
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(move || sink.clone())
                .finish(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("server {addr}"))
            .spawn(move || {
                let _default = tracing::dispatcher::set_default(&dispatch);
                let on_start = dispatch.clone();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(move || {
                        // For the life of the thread.
                        std::mem::forget(tracing::dispatcher::set_default(&on_start));
                    })
                    .build()?;
                let result = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    builder_server::run(config, listener, async {
                        let _ = stopped.await;
                    })
                    .await
                });
                runtime.shutdown_timeout(Duration::from_secs(10));
                result
            })
            .expect("a thread for the server");
        let mut server = Server {
            addr,
            dir: dir.to_owned(),
            running: Running::InProcess(InProcess {
                stop: Some(stop),
                thread: Some(thread),
                log,
            }),
        };
        wait_for("the server to listen", || {
            let Running::InProcess(p) = &mut server.running else {
                unreachable!()
            };
            if p.log.lock().unwrap().contains("builder-server listening") {
                return Some(());
            }
            if p.thread.as_ref().is_some_and(|t| t.is_finished()) {
                match p.stop() {
                    Ok(()) => panic!("the server stopped before it listened"),
                    Err(e) => panic!("the server did not start: {e:#}"),
                }
            }
            None
        });
        server
    }

    /// Starts the real `builder-server` binary on `dir` with a 200 ms
    /// heartbeat and `extra` flags: for the tests that signal or kill it,
    /// or read what it prints or how it exits.
    pub fn binary(dir: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(bin("builder-server"));
        cmd.args([
            "--ip",
            "127.0.0.1",
            "--port",
            "0",
            "--heartbeat-ms",
            &HEARTBEAT.as_millis().to_string(),
            "--dir",
        ])
        .arg(dir)
        .arg("--config-dir")
        .arg(dir.join("etc"))
        .args(extra)
        .env("RUST_LOG", "info");
        let proc = Guard::spawn(cmd);
        let addr = wait_for("server to listen", || {
            proc.log.lock().unwrap().iter().find_map(|l| {
                let rest = l.split("address=").nth(1)?;
                Some(rest.split_whitespace().next()?.to_owned())
            })
        });
        Server {
            addr,
            dir: dir.to_owned(),
            running: Running::Binary(proc),
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        match &self.running {
            Running::InProcess(p) => p.log.lock().unwrap().clone(),
            Running::Binary(proc) => proc.log(),
        }
    }

    /// Stops a server in this process as SIGTERM would (no drain unless
    /// configured) and returns what `run` returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        match &mut self.running {
            Running::InProcess(p) => p.stop(),
            Running::Binary(_) => panic!("stop() is for a server in this process"),
        }
    }

    /// The binary's process.
    fn process(&mut self) -> &mut Guard {
        match &mut self.running {
            Running::Binary(proc) => proc,
            Running::InProcess(_) => panic!(
                "this server runs in the test's process: start it with Server::binary to signal or kill it"
            ),
        }
    }

    /// The binary's process id.
    pub fn pid(&mut self) -> i32 {
        self.process().child.id() as i32
    }

    /// Sends the binary `signal`.
    pub fn signal(&mut self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// SIGKILLs the binary and reaps it.
    pub fn kill(&mut self) {
        self.process().kill();
    }

    /// Waits for the binary to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.process().wait_exit()
    }

    /// The binary's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process().child.try_wait().unwrap()
    }

    /// Starts a worker for `platform` with `TMPDIR` set to `tmp`.
    pub fn worker(&self, platform: &str, tmp: &Path, extra: &[&str]) -> Guard {
        let mut cmd = Command::new(bin("builder-worker"));
        cmd.arg(platform)
            .args(["--remote", &self.addr, "--kill-grace", "1"])
            .args(extra)
            .env("TMPDIR", tmp)
            .env("RUST_LOG", "info");
        Guard::spawn(cmd)
    }

    /// Runs `builder-client -r ADDR ARGS...` to completion.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(bin("builder-client"))
            .args(["-r", &self.addr])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run builder-client")
    }

    /// Runs the client and asserts it succeeded.
    pub fn client_ok(&self, args: &[&str]) -> Output {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "builder-client {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out
    }

    /// Starts `builder-client -r ADDR ARGS...` without waiting for it, its
    /// output piped.
    pub fn spawn_client(&self, args: &[&str]) -> Child {
        Command::new(bin("builder-client"))
            .args(["-r", &self.addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start builder-client")
    }

    /// One request over the real protocol.
    pub fn request(&self, req: ClientRequest) -> ServerToClient {
        runtime().block_on(async {
            let mut conn = client_conn(&self.addr).await;
            conn.send(&req).await.unwrap();
            conn.recv().await.unwrap().expect("an answer")
        })
    }

    /// The server's `info`, put together from its parts.
    pub fn info(&self) -> InfoSummary {
        self.info_parts(DEFAULT_MAX_FRAME).0
    }

    /// The server's `info`, read with a frame limit of `max_frame`; also
    /// returns how many parts it came in.
    pub fn info_parts(&self, max_frame: usize) -> (InfoSummary, usize) {
        runtime().block_on(async {
            let hello = Hello::client(None, "test");
            let (mut conn, _) = handshake::connect(
                &self.addr,
                &hello,
                max_frame,
                handshake::Timeouts::default(),
            )
            .await
            .unwrap();
            conn.send(&ClientRequest::Info).await.unwrap();
            let mut info = InfoSummary::default();
            let (mut parts, mut received) = (0, 0);
            loop {
                match conn.recv().await.unwrap().expect("an answer") {
                    ServerToClient::InfoPart(items) => {
                        parts += 1;
                        received += items.len() as u64;
                        items.into_iter().for_each(|i| info.push(i));
                    }
                    ServerToClient::InfoEnd { items } => {
                        InfoSummary::check_count(received, items).unwrap();
                        return (info, parts);
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        })
    }

    /// One job with its script (`show`).
    pub fn show(&self, name: &str) -> ScheduleEntry {
        match self.request(ClientRequest::Show { name: name.into() }) {
            ServerToClient::Job(entry) => entry,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Every stored record of `job`.
    pub fn records(&self, job: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(job)) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().path().join("full"))
            .filter(|p| p.exists())
            .collect()
    }

    /// Waits for `n` records of `job` and decodes them.
    pub fn wait_records(&self, job: &str, n: usize) -> Vec<Exec> {
        let paths = wait_for(&format!("{n} records of {job}"), || {
            let r = self.records(job);
            (r.len() >= n).then_some(r)
        });
        paths
            .iter()
            .map(|p| Exec::decode(&std::fs::read(p).unwrap()).expect("record decodes"))
            .collect()
    }

    /// Waits for `what` in the server's log.
    pub fn wait_log(&self, what: &str) {
        wait_for(&format!("log line {what:?}"), || {
            self.log().contains(what).then_some(())
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Running::InProcess(p) = &mut self.running {
            if std::thread::panicking() {
                eprintln!("--- server log ---\n{}", p.log.lock().unwrap());
            }
            if let Err(e) = p.stop() {
                eprintln!("the server stopped with an error: {e:#}");
            }
        }
        // A binary is killed by its guard.
    }
}

/// A client connection after a successful hello.
pub async fn client_conn(addr: &str) -> Connection {
    let hello = Hello::client(None, "test");
    handshake::connect(
        addr,
        &hello,
        DEFAULT_MAX_FRAME,
        handshake::Timeouts::default(),
    )
    .await
    .unwrap()
    .0
}

/// Writes an executable script file and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// Console of a record, oldest first, as strings.
pub fn console(exec: &Exec) -> Vec<String> {
    exec.console
        .iter()
        .rev()
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect()
}

/// A token as the server reads it from a `--*-token-file`.
pub fn token(path: &Path) -> String {
    protocol::token::read_token_file(path).expect("a token file")
}
