//! Through the real server: a failure prints as one line, `error: ` then
//! each cause once (issue 9, finding 13: a state database that is not one
//! used to print SQLite's message twice).

use crate::common::bin;
use std::process::{Command, Output};

/// The stderr's last line: `error: ...` whose `: `-separated parts are all
/// different, with `cause` exactly once.
fn one_chain(out: &Output, cause: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    let line = errors[0];
    assert!(line.starts_with("error: "), "{line}");
    assert_eq!(line.matches(cause).count(), 1, "{cause:?} once in {line}");
    let parts: Vec<&str> = line["error: ".len()..].split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} repeated in {line}");
    }
    line.to_owned()
}

fn server(args: &[&str]) -> Output {
    Command::new(bin("builder-server"))
        .args(["--ip", "127.0.0.1", "--port", "0"])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

#[test]
fn a_state_database_that_is_not_one_prints_sqlites_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    // Not SQLite: 8 KiB of a repeated pattern.
    std::fs::write(dir.join("state.db"), b"not a database. ".repeat(512)).unwrap();
    let line = one_chain(
        &server(&["--dir", dir.to_str().unwrap()]),
        "file is not a database",
    );
    assert!(line.starts_with("error: state database "), "{line}");
}

#[test]
fn an_unreadable_token_file_names_the_flag_the_file_and_the_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-token");
    let out = server(&[
        "--dir",
        tmp.path().join("state").to_str().unwrap(),
        "--client-token-file",
        missing.to_str().unwrap(),
    ]);
    let line = one_chain(&out, "No such file or directory");
    assert_eq!(
        line,
        format!(
            "error: --client-token-file: cannot read token file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let blank = tmp.path().join("blank-token");
    std::fs::write(&blank, "\n  \n").unwrap();
    let out = server(&[
        "--dir",
        tmp.path().join("state").to_str().unwrap(),
        "--worker-token-file",
        blank.to_str().unwrap(),
    ]);
    assert_eq!(
        one_chain(&out, "holds no token"),
        format!(
            "error: --worker-token-file: token file {} holds no token (it is empty or blank)",
            blank.display()
        )
    );
}
