//! The client's rewritten messages (issue 20), through the real binary:
//! each says what to do, and the layout is the shared one (usage, tips,
//! then one `error:` line last, exit 2).

use std::process::Output;

use crate::common::{client, error_lines};

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A usage error: exit 2, the error last and alone; returns the lines.
fn usage_error(args: &[&str]) -> Vec<String> {
    let out = client().args(args).output().unwrap();
    let err = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err:#?}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert_eq!(error_lines(&out.stderr).len(), 1, "{err:#?}");
    assert!(
        err.last().is_some_and(|l| l.starts_with("error: ")),
        "{err:#?}"
    );
    err
}

#[test]
fn a_zero_timeout_must_be_at_least_one_second() {
    let err = usage_error(&["schedule", "j", "linux", "j.sh", "--timeout", "0"]);
    assert_eq!(
        err.last().unwrap(),
        "error: invalid value '0' for '--timeout <SECS>': the timeout must be at least 1 second (e.g. 3600 for an hour)"
    );
    let err = usage_error(&["update", "j", "--timeout", "soon"]);
    assert!(
        err.last()
            .unwrap()
            .contains("'soon' is not a whole number of seconds"),
        "{err:#?}"
    );
}

#[test]
fn a_time_without_its_offset_says_to_add_it() {
    let err = usage_error(&["reschedule", "j", "2030-01-01T00:00:00"]);
    let last = err.last().unwrap();
    assert!(last.contains("has no UTC offset"), "{last}");
    assert!(last.contains("2030-01-01T00:00:00Z"), "{last}");
    assert!(!last.contains("premature end of input"), "{last}");
    let err = usage_error(&["reschedule", "j", "2030-01-01"]);
    assert!(
        err.last().unwrap().contains("e.g. 2030-01-01T04:00:00Z"),
        "{err:#?}"
    );
}

#[test]
fn the_usage_shows_the_commands_own_arguments_not_the_ones_given() {
    // --remote from the environment used to show up as if it were required.
    let out = client()
        .env("BUILDER_REMOTE", "127.0.0.1:9")
        .args([
            "schedule",
            "j",
            "linux",
            "j.sh",
            "--cron",
            "0 * * * *",
            "--period",
            "hourly",
        ])
        .output()
        .unwrap();
    let err = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        err[0],
        "Usage: builder-client schedule [OPTIONS] <NAME> <PLATFORM> <SCRIPT_FILE>"
    );
    assert!(err.iter().all(|l| !l.contains("--remote")), "{err:#?}");
    assert!(
        err.last().unwrap().contains("cannot be used with"),
        "{err:#?}"
    );
}

#[test]
fn no_command_prints_the_help_then_the_error() {
    let err = usage_error(&[]);
    assert!(
        err.iter().any(|l| l.trim_start().starts_with("schedule ")),
        "{err:#?}"
    );
    assert_eq!(
        err.last().unwrap(),
        "error: no command given: choose one of the commands above"
    );
}

#[test]
fn a_usage_error_with_json_is_one_json_object() {
    let out = client()
        .args(["--json", "observe", "not-a-uuid"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_lines(&out);
    assert_eq!(err.len(), 1, "{err:#?}");
    let v: serde_json::Value = serde_json::from_str(&err[0]).unwrap();
    assert!(v["error"].as_str().unwrap().contains("'not-a-uuid'"), "{v}");
}

#[test]
fn help_and_version_go_to_stdout_with_status_0() {
    for arg in ["--help", "--version"] {
        let out = client().arg(arg).output().unwrap();
        assert!(out.status.success(), "{arg}");
        assert!(!out.stdout.is_empty() && out.stderr.is_empty(), "{arg}");
    }
}

#[test]
fn builder_inspect_says_what_a_non_record_file_is() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "script.sh",
            b"#!/bin/sh\necho hi\n",
            "not a build record (it starts with \"#!/bin/sh\")",
        ),
        ("empty", b"", "empty, not a build record"),
        (
            "binary",
            b"\x7fELF\x02\x01\x01\x00rest",
            "not a build record (it starts with the bytes 7f 45 4c 46 02 01 01 00)",
        ),
    ];
    for (name, bytes, says) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = crate::common::inspect().arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = stderr_lines(&out);
        assert_eq!(err.len(), 1, "{err:#?}");
        assert!(
            err[0].starts_with(&format!("error: {}: {says}; ", path.display())),
            "{err:#?}"
        );
        assert!(!err[0].contains("identifier"), "{err:#?}");
    }
}
