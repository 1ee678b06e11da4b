//! No hangs (issue 13): the client and the worker give up on a peer that
//! accepts but never answers the hello, and name a closed port, through the
//! real binaries.

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::bin;

/// A listener that accepts every connection and never says a word. The
/// accepted sockets are kept open until the value is dropped.
struct Silent {
    addr: String,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

fn silent_peer() -> Silent {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            keep.lock().unwrap().push(stream);
        }
    });
    Silent { addr, _held: held }
}

/// An address nothing listens on (bound, then closed).
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .env_remove("BUILDER_REMOTE")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn client(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_builder-client"));
    cmd.args(args);
    run(cmd)
}

/// The last line of stderr, which must be the one `error:` line.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or("").to_owned();
    assert!(line.starts_with("error: "), "{stderr}");
    line
}

#[test]
fn the_client_gives_up_on_a_peer_that_never_answers_the_hello() {
    let peer = silent_peer();
    let out = client(&["-r", &peer.addr, "--hello-timeout", "0.3", "info"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains(&peer.addr) && line.contains("probably not a builder-server"),
        "{line}"
    );
}

#[test]
fn the_client_names_a_closed_port() {
    let addr = closed_port();
    let out = client(&["-r", &addr, "info"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("cannot connect to {addr}")) && line.contains("refused"),
        "{line}"
    );
}

#[test]
fn timeout_flags_must_be_positive_seconds() {
    let out = client(&["--connect-timeout", "0", "info"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--connect-timeout"), "{stderr}");
}

#[test]
fn the_worker_gives_up_on_a_peer_that_never_answers_the_hello() {
    let peer = silent_peer();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("builder-worker"));
    // Without --connect-retry 0 a worker retries for ever (issue 20).
    cmd.args(["linux", "-r", &peer.addr, "--hello-timeout", "0.3"])
        .args(["--connect-retry", "0"])
        .env("TMPDIR", tmp.path());
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains(&peer.addr) && line.contains("probably not a builder-server"),
        "{line}"
    );
}

#[test]
fn the_worker_names_a_closed_port() {
    let addr = closed_port();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("builder-worker"));
    cmd.args(["linux", "-r", &addr, "--connect-retry", "0"])
        .env("TMPDIR", tmp.path());
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("cannot connect to {addr}")),
        "{line}"
    );
}

#[test]
fn dash_v_means_debug_in_the_client_as_in_the_server_and_worker() {
    let addr = closed_port();
    let quiet = client(&["-r", &addr, "info"]);
    let verbose = client(&["-r", &addr, "-v", "info"]);
    let (quiet, verbose) = (
        String::from_utf8_lossy(&quiet.stderr),
        String::from_utf8_lossy(&verbose.stderr),
    );
    assert!(!quiet.contains("DEBUG"), "{quiet}");
    assert!(
        verbose.contains("DEBUG") && verbose.contains("connecting"),
        "{verbose}"
    );
    assert!(!verbose.contains('\x1b'), "colours in a pipe: {verbose}");
}
