//! Everything the client checks before connecting: each case runs the real
//! binary against a listener it must never connect to.

use std::io::ErrorKind;
use std::net::TcpListener;

use crate::common::{client, error_lines};

/// A listener that records whether anyone connected.
struct Trap {
    listener: TcpListener,
    addr: String,
}

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Trap { listener, addr }
    }

    fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(_) => panic!("the client connected although the command was invalid"),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Runs the client with `args` (plus `-r TRAP`), expects failure with
/// `code`, one error line containing every one of `needles`, and no
/// connection.
fn rejected(args: &[&str], code: i32, needles: &[&str]) {
    let trap = Trap::new();
    let out = client()
        .args(args)
        .args(["-r", &trap.addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
    trap.assert_untouched();
}

fn script_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "#!/bin/sh\ntrue\n").unwrap();
    f
}

#[test]
fn bad_cron_expression_is_quoted() {
    let script = script_file();
    let path = script.path().to_str().unwrap();
    rejected(
        &["schedule", "j", "linux", path, "--cron", "61 * * * *"],
        2,
        &["'61 * * * *'"],
    );
    rejected(
        &["orb-build", "j", "pkg", "--cron", "nonsense"],
        2,
        &["'nonsense'"],
    );
    rejected(
        &["reschedule", "j", "2030-01-01T00:00:00Z", "--cron", "* * *"],
        2,
        &["'* * *'"],
    );
}

#[test]
fn bad_period_is_named() {
    let script = script_file();
    let path = script.path().to_str().unwrap();
    rejected(
        &["schedule", "j", "linux", path, "--period", "monthly"],
        2,
        &["'monthly'", "--period"],
    );
}

#[test]
fn period_and_cron_together_are_refused() {
    rejected(
        &[
            "orb-build",
            "j",
            "pkg",
            "--period",
            "daily",
            "--cron",
            "0 3 * * *",
        ],
        2,
        &["--period", "--cron"],
    );
}

#[test]
fn bad_next_time_is_quoted() {
    rejected(
        &["reschedule", "j", "next tuesday"],
        2,
        &["'next tuesday'", "RFC 3339"],
    );
    rejected(&["reschedule", "j", "2030-01-01"], 2, &["'2030-01-01'"]);
}

#[test]
fn bad_uuid_is_quoted() {
    rejected(&["observe", "not-a-uuid"], 2, &["'not-a-uuid'"]);
    rejected(&["cancel", "1234"], 2, &["'1234'"]);
}

#[test]
fn bad_timeout_and_limit() {
    rejected(
        &["orb-build", "j", "pkg", "--timeout", "0"],
        2,
        &["--timeout"],
    );
    rejected(&["results", "--limit", "-3"], 2, &[]);
}

#[test]
fn missing_script_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-script.sh");
    rejected(
        &["schedule", "j", "linux", missing.to_str().unwrap()],
        1,
        &["no-such-script.sh", "cannot read script file"],
    );
}

#[test]
fn non_utf8_script_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.sh");
    std::fs::write(&path, b"echo caf\xe9\n").unwrap();
    rejected(
        &["schedule", "j", "linux", path.to_str().unwrap()],
        1,
        &["latin1.sh", "not valid UTF-8"],
    );
}

#[test]
fn unreadable_token_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-token");
    rejected(
        &["info", "--token-file", missing.to_str().unwrap()],
        1,
        &["no-token"],
    );
}

#[test]
fn malformed_remote_is_a_usage_error() {
    // No trap here: the remote itself is what is wrong.
    for remote in ["localhost", "::1:1234", "host:99999"] {
        let out = client().args(["info", "-r", remote]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{remote}");
        let errors = error_lines(&out.stderr);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains(&format!("'{remote}'")), "{errors:?}");
    }
}

#[test]
fn unreachable_server() {
    // A port that was just free: nothing listens there.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = client().args(["-r", &addr, "info"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("error: cannot connect to {addr}: ")),
        "{errors:?}"
    );
}

#[test]
fn remote_from_the_environment() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = client()
        .env("BUILDER_REMOTE", &addr)
        .arg("info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot connect to {addr}")));
}

#[test]
fn help_lists_every_command() {
    let out = client().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "schedule",
        "orb-build",
        "unschedule",
        "reschedule",
        "execute",
        "info",
        "observe",
        "observe-latest",
        "drop-platform",
        "undrop-platform",
        "cancel",
        "results",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
}
