//! Through the real client (whose token reader and handshake are the
//! worker's too, in `protocol`): an error prints as one line, `error: ` then
//! each cause once (Displays never repeat their source; `main` prints the
//! chain with `{:#}` exactly once).

use crate::common::client;
use std::process::Output;

/// The stderr of a failed run: one line, `error: ...`, whose `: `-separated
/// parts are all different, ending with `cause`.
fn one_chain(out: &Output, cause: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    assert_eq!(line.matches("error: ").count(), 1, "{line}");
    assert_eq!(line.matches(cause).count(), 1, "{cause:?} once in {line}");
    let parts: Vec<&str> = line["error: ".len()..].split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} repeated in {line}");
    }
    line.to_owned()
}

/// A port nothing listens on: bound, noted, closed.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_unreadable_token_file_names_the_file_and_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-token");
    let missing = missing.to_str().unwrap();
    let out = client()
        .args(["info", "--token-file", missing])
        .output()
        .unwrap();
    let line = one_chain(&out, "No such file or directory");
    assert!(
        line.starts_with(&format!("error: cannot read token file {missing}: ")),
        "{line}"
    );
}

#[test]
fn an_unreachable_server_prints_each_cause_once() {
    let remote = format!("127.0.0.1:{}", closed_port());
    let out = client().args(["info", "-r", &remote]).output().unwrap();
    let line = one_chain(&out, "Connection refused");
    assert!(
        line.starts_with(&format!("error: cannot connect to {remote}: ")),
        "{line}"
    );
}
