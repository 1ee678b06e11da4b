//! Test harness: real `builder-server`, `builder-worker` and `builder-client`
//! processes on 127.0.0.1 with port 0, in temporary directories, killed on
//! drop. Waits poll against a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::handshake;
use protocol::info::InfoSummary;
use protocol::message::{ClientRequest, Hello, ScheduleEntry, ServerToClient};
use protocol::record::Exec;

/// How long any wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

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

/// A child process killed (SIGKILL) when dropped.
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
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for("process exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running server.
pub struct Server {
    pub proc: Guard,
    pub addr: String,
    pub dir: PathBuf,
}

impl Server {
    /// Starts a server on `dir` with a 200 ms heartbeat.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(bin("builder-server"));
        cmd.args([
            "--ip",
            "127.0.0.1",
            "--port",
            "0",
            "--heartbeat-ms",
            "200",
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
            proc,
            addr,
            dir: dir.to_owned(),
        }
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

    /// One request over the real protocol.
    pub fn request(&self, req: ClientRequest) -> ServerToClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
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

/// Whether a process exists.
pub fn alive(pid: i32) -> bool {
    // Zombies count as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Runs one of the state database's async calls from a plain test.
#[allow(dead_code)]
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the test")
        .block_on(f)
}
