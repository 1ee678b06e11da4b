//! The server's command line through the real binary: values out of range
//! are refused while parsing, with a message that says what to give; the
//! settings' own checks say which flag is at fault; `--help` names values
//! as the README does.

use assert_cmd::Command;
use predicates::prelude::*;

fn server() -> Command {
    let mut cmd = Command::cargo_bin("builder-server").unwrap();
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn values_out_of_range_are_refused_with_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    for (flag, value, message) in [
        ("--job-timeout", "0", "must be at least 1 second (got 0)"),
        ("--hello-timeout", "0", "must be at least 1 second (got 0)"),
        ("--frame-timeout", "0", "must be at least 1 second (got 0)"),
        (
            "--heartbeat-ms",
            "0",
            "must be at least 1 millisecond (got 0)",
        ),
        ("--max-connections", "0", "must be at least 1 (got 0)"),
        ("--max-unauthenticated", "0", "must be at least 1 (got 0)"),
        (
            "--max-unauthenticated-per-ip",
            "0",
            "must be at least 1 (got 0)",
        ),
        (
            "--max-frame",
            "100",
            "must be at least 1024 bytes (got 100)",
        ),
        (
            "--job-timeout",
            "soon",
            "expected a whole number of seconds (got \"soon\")",
        ),
        (
            "--max-artifacts",
            "lots",
            "expected a whole number (got \"lots\")",
        ),
    ] {
        server()
            .args(["--dir", state, flag, value])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(flag))
            .stderr(predicate::str::contains(message))
            .stderr(predicate::str::contains("is not in").not());
    }
    // The upload's flags too (they need --upload).
    for (flag, message) in [
        ("--upload-concurrency", "must be at least 1 (got 0)"),
        ("--upload-backoff-cap", "must be at least 1 second (got 0)"),
    ] {
        server()
            .args([
                "--dir",
                state,
                "--upload",
                "http://127.0.0.1:1/upload",
                flag,
                "0",
            ])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
    // Nothing was started: no state directory was made.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn import_state_checks_the_job_timeout_while_parsing_too() {
    let dir = tempfile::tempdir().unwrap();
    server()
        .arg("--dir")
        .arg(dir.path().join("state"))
        .arg("--import-state")
        .arg(dir.path().join("no-such-state"))
        .args(["--job-timeout", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "must be at least 1 second (got 0)",
        ));
}

#[test]
fn settings_that_cannot_be_served_name_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    server()
        .arg("--dir")
        .arg(dir.path().join("state"))
        .args(["--ip", "0.0.0.0", "--port", "0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: refusing to listen on 0.0.0.0 without --client-token-file and --worker-token-file; pass --insecure",
        ));
    server()
        .arg("--dir")
        .arg(dir.path().join("state"))
        .args(["--port", "0", "--metrics", "0.0.0.0:0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--metrics on 0.0.0.0:0"));
    server()
        .arg("--dir")
        .arg(dir.path().join("state"))
        .arg("--client-token-file")
        .arg(dir.path().join("missing-token"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error: --client-token-file"));
    server()
        .arg("--dir")
        .arg(dir.path().join("state"))
        .args(["--legacy-peers", "10.0.0.0/33"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error: --legacy-peers"));
}

/// `--flag VALUE` pairs of the README's `builder-server` usage lines.
fn readme_flags() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md beside the workspace");
    let usage: String = readme
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("builder-server [--ip"))
        .take_while(|l| !l.trim_start().starts_with("builder-worker"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!usage.is_empty(), "no builder-server usage in README.md");
    let words: Vec<&str> = usage
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .filter(|w| !w.is_empty())
        .collect();
    let mut flags = Vec::new();
    for (i, word) in words.iter().enumerate() {
        // `-r|--remote`: the long name.
        let Some(flag) = word.rsplit('|').next().filter(|f| f.starts_with("--")) else {
            continue;
        };
        let value = words
            .get(i + 1)
            .filter(|v| !v.starts_with('-') && **v != "builder-server");
        flags.push((flag.to_owned(), value.map(|v| v.to_string())));
    }
    flags
}

#[test]
fn help_names_values_as_the_readme_does() {
    let out = server().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = readme_flags();
    assert!(flags.len() > 25, "{flags:?}");
    for (flag, value) in &flags {
        let shown = match value {
            Some(v) => help.contains(&format!("{flag} <{v}>")),
            None => help
                .lines()
                .any(|l| l.trim_start().split([' ', ',']).any(|w| w == flag)),
        };
        assert!(
            shown,
            "README has {flag} {value:?}, --help does not:\n{help}"
        );
    }
    // And every flag --help shows is in the README.
    for line in help.lines() {
        let Some(flag) = line
            .split_whitespace()
            .find(|w| w.starts_with("--"))
            .map(|w| w.trim_end_matches(','))
        else {
            continue;
        };
        if ["--help", "--version", "--verbose..."].contains(&flag) {
            continue;
        }
        assert!(
            flags.iter().any(|(f, _)| f == flag),
            "--help shows {flag}, the README's usage does not"
        );
    }
}
