//! A worker outlives its server: started before the server, across a server
//! restart, and bounded by `--connect-retry`. Through the real binaries
//! (builder-server and builder-client are found next to builder-worker, as
//! `cargo test --workspace` builds them all).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use assert_cmd::Command as AssertCommand;
use tokio::time::Instant;

/// A workspace binary next to builder-worker.
fn bin(name: &str) -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_builder-worker"));
    let path = worker.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that nothing listens on: bound with port 0, noted,
/// and released. (Another process could take it in between; the test then
/// fails instead of passing untested.)
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A real builder-server on `addr`, killed when dropped.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts it and waits for its start-up line.
    async fn start(env: &Env, addr: SocketAddr) -> Server {
        let state = env.root.path().join("state");
        let log = env
            .root
            .path()
            .join(format!("server-{}.log", uuid::Uuid::new_v4()));
        let child = Command::new(bin("builder-server"))
            .args(["--ip", "127.0.0.1", "--port", &addr.port().to_string()])
            .arg("--dir")
            .arg(&state)
            .arg("--config-dir")
            .arg(env.root.path())
            .args(["--heartbeat-ms", "250"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start builder-server");
        let server = Server { child, log };
        wait_until("the server's start-up line", || {
            server.log().contains("builder-server listening")
        })
        .await;
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait for it to exit.
    async fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let child = &mut self.child;
        wait_until("the server to exit", || child.try_wait().unwrap().is_some()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `builder-client -r ADDR ARGS...`, which must succeed.
fn client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(bin("builder-client"))
        .arg("-r")
        .arg(addr.to_string())
        .args(args)
        .env_remove("BUILDER_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "builder-client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Schedules job `name` on test-platform (queued at once).
fn schedule(env: &Env, addr: SocketAddr, name: &str, script: &str) {
    let file = env.root.path().join(format!("{name}.sh"));
    std::fs::write(&file, script).unwrap();
    client(
        addr,
        &[
            "schedule",
            name,
            "test-platform",
            file.to_str().unwrap(),
            "--period",
            "never",
        ],
    );
}

/// The stored records of job `name`.
fn records(env: &Env, name: &str) -> Vec<PathBuf> {
    let dir = env.root.path().join("state").join(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path().join("full"))
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[tokio::test]
async fn a_worker_started_before_its_server_runs_the_job_once_it_appears() {
    let env = Env::new();
    let addr = free_addr();
    let mut worker = Worker::start(&env, addr, &[]);
    // It has found nothing there, said so once, and keeps trying.
    wait_until("the worker's first failed attempt", || {
        worker
            .stderr()
            .contains("retrying every 5 s at most, until it answers")
    })
    .await;
    wait_until("a few more attempts", || {
        worker.stderr().matches("attempt=").count() >= 2
    })
    .await;
    assert!(worker.running(), "{}", worker.stderr());

    let server = Server::start(&env, addr).await;
    schedule(&env, addr, "late", "echo ran after the server came\n");
    assert!(worker.exit().await.success(), "{}", worker.stderr());
    assert_eq!(records(&env, "late").len(), 1, "{}", server.log());
    let stderr = worker.stderr();
    assert!(stderr.contains("the server is back after"), "{stderr}");
    // The first failure is a warning; the attempts after it are debug lines.
    assert_eq!(stderr.matches(" WARN ").count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_one_shot_worker_waiting_for_a_job_survives_a_server_restart() {
    let env = Env::new();
    let addr = free_addr();
    let server = Server::start(&env, addr).await;
    let mut worker = Worker::start(&env, addr, &[]);
    wait_until("the worker to connect", || {
        worker.stderr().contains("connected")
    })
    .await;

    server.stop().await;
    wait_until("the worker to notice", || {
        worker.stderr().contains("retrying every 5 s at most")
    })
    .await;
    assert!(worker.running(), "{}", worker.stderr());

    let restarted = Instant::now();
    let server = Server::start(&env, addr).await;
    schedule(&env, addr, "after", "echo after the restart\n");
    assert!(worker.exit().await.success(), "{}", worker.stderr());
    assert_eq!(records(&env, "after").len(), 1, "{}", server.log());
    // Back within the backoff's cap (plus a job's run), not 30 s later.
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "{:?}",
        restarted.elapsed()
    );
}

#[test]
fn connect_retry_bounds_the_wait_and_names_the_last_cause() {
    let addr = free_addr();
    let start = std::time::Instant::now();
    let out = AssertCommand::new(bin("builder-worker"))
        .args([
            "test-platform",
            "-r",
            &addr.to_string(),
            "--connect-retry",
            "1",
        ])
        .env_remove("RUST_LOG")
        .env_remove("BUILDER_TOKEN")
        .timeout(DEADLINE)
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(start.elapsed() >= Duration::from_secs(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: cannot reach {addr} for 1 s (--connect-retry): \
             cannot connect to {addr}: Connection refused (os error 111)"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_final_refusal_is_not_retried_and_exits_with_its_own_status() {
    let env = Env::new();
    let addr = free_addr();
    let token = env.root.path().join("worker.token");
    std::fs::write(&token, "right\n").unwrap();
    let state = env.root.path().join("state");
    let log = env.root.path().join("server.log");
    let child = Command::new(bin("builder-server"))
        .args(["--ip", "127.0.0.1", "--port", &addr.port().to_string()])
        .arg("--dir")
        .arg(&state)
        .arg("--config-dir")
        .arg(env.root.path())
        .arg("--worker-token-file")
        .arg(&token)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Server { child, log };
    wait_until("the server's start-up line", || {
        server.log().contains("builder-server listening")
    })
    .await;
    let mut worker = Worker::start_with(&env, addr, &[], |cmd| {
        cmd.env("BUILDER_TOKEN", "wrong");
    });
    let status = worker.exit().await;
    assert_eq!(
        status.code(),
        Some(builder_worker::EXIT_REFUSED as i32),
        "{}",
        worker.stderr()
    );
    let stderr = worker.stderr();
    assert!(
        stderr.ends_with("error: server refused the connection: bad token\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");
}
