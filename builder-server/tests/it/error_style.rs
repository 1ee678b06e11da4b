//! All four programs report errors alike (issue 20), through the real
//! binaries: a usage error prints the usage, any tips, and last one line
//! `error: ...` with exit status 2; any other error is exactly one line
//! `error: ...` with exit status 1. Also what the client prints on success
//! for the everyday commands: confirmations, plurals, one duration.

use std::process::{Command, Output, Stdio};

use crate::common::*;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(bin(program))
        .args(args)
        .env_remove("BUILDER_TOKEN")
        .env_remove("BUILDER_REMOTE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the program")
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Exit 2; the usage of `usage` first, the error last and only once.
fn assert_usage_error(out: &Output, usage: &str) -> Vec<String> {
    let err = lines(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err:#?}");
    assert!(out.stdout.is_empty(), "{err:#?}");
    assert!(
        err.last().is_some_and(|l| l.starts_with("error: ")),
        "{err:#?}"
    );
    assert_eq!(
        err.iter().filter(|l| l.starts_with("error")).count(),
        1,
        "{err:#?}"
    );
    assert!(
        err[0].starts_with(&format!("Usage: {usage}")),
        "{usage}: {err:#?}"
    );
    err
}

/// Exit 1 and exactly one line on stderr, `error: ...`; returns it.
fn assert_runtime_error(out: &Output) -> String {
    let err = lines(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err:#?}");
    assert_eq!(err.len(), 1, "{err:#?}");
    assert!(err[0].starts_with("error: "), "{err:#?}");
    err[0].clone()
}

#[test]
fn usage_errors_look_alike_in_all_four_programs() {
    let out = run("builder-server", &["--dri"]);
    let err = assert_usage_error(&out, "builder-server [OPTIONS]");
    // clap's tip, one line, just before the error.
    let tip = &err[err.len() - 2];
    assert!(
        tip.starts_with("tip: ") && tip.contains("--drain-timeout"),
        "{err:#?}"
    );
    assert_eq!(
        err.last().unwrap(),
        "error: unexpected argument '--dri' found"
    );

    let out = run("builder-worker", &[]);
    let err = assert_usage_error(&out, "builder-worker [OPTIONS] <PLATFORM>");
    assert_eq!(
        err.last().unwrap(),
        "error: the following required arguments were not provided: <PLATFORM>"
    );

    let out = run("builder-inspect", &[]);
    assert_usage_error(&out, "builder-inspect [OPTIONS] <FILE>");

    let out = run("builder-client", &["scheduel"]);
    let err = assert_usage_error(&out, "builder-client [OPTIONS] <COMMAND>");
    assert!(err[err.len() - 2].starts_with("tip: "), "{err:#?}");

    // An invalid value: the usage is the subcommand's.
    let out = run("builder-worker", &["linux", "--kill-grace", "soon"]);
    assert_usage_error(&out, "builder-worker [OPTIONS] <PLATFORM>");
    let out = run("builder-client", &["-r", "h:1", "observe", "nope"]);
    assert_usage_error(&out, "builder-client observe [OPTIONS] <UUID>");
}

#[test]
fn runtime_errors_are_one_line_in_all_four_programs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "#!/bin/sh\necho not a record\n").unwrap();
    let missing = tmp.path().join("missing-token");

    // The state directory is a file.
    let out = run(
        "builder-server",
        &[
            "--ip",
            "127.0.0.1",
            "--port",
            "0",
            "--dir",
            file.to_str().unwrap(),
        ],
    );
    assert_runtime_error(&out);

    let out = run(
        "builder-worker",
        &["linux", "--token-file", missing.to_str().unwrap()],
    );
    let err = assert_runtime_error(&out);
    assert!(err.contains("missing-token"), "{err}");

    let out = run(
        "builder-client",
        &["--token-file", missing.to_str().unwrap(), "info"],
    );
    let err = assert_runtime_error(&out);
    assert!(err.contains("missing-token"), "{err}");

    let out = run("builder-inspect", &[file.to_str().unwrap()]);
    let err = assert_runtime_error(&out);
    assert_eq!(
        err,
        format!(
            "error: {}: not a build record (it starts with \"#!/bin/sh\"); builder-inspect reads the `full` files of the server's --dir (DIR/JOB/UUID/full)",
            file.display()
        )
    );
}

#[test]
fn a_refused_missing_token_says_how_to_give_one() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token = token.to_str().unwrap();
    let server = Server::binary(
        &tmp.path().join("state"),
        &["--client-token-file", token, "--worker-token-file", token],
    );
    let out = run("builder-client", &["-r", &server.addr, "info"]);
    let err = assert_runtime_error(&out);
    assert!(
        err.contains("--token-file") && err.contains("BUILDER_TOKEN"),
        "{err}"
    );

    let out = run("builder-worker", &["linux", "-r", &server.addr]);
    let err = lines(&out.stderr);
    // A refusal retrying cannot fix is final: exit status 3.
    assert_eq!(out.status.code(), Some(3), "{err:#?}");
    let last = err.last().unwrap();
    assert!(
        last.starts_with("error: ")
            && last.contains("--token-file")
            && last.contains("BUILDER_TOKEN"),
        "{err:#?}"
    );

    // With a token, the client gets in.
    let out = run(
        "builder-client",
        &["-r", &server.addr, "--token-file", token, "info"],
    );
    assert!(out.status.success(), "{:?}", lines(&out.stderr));
}

#[test]
fn changes_confirm_counts_are_plural_and_durations_agree() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let job = script(tmp.path(), "job.sh", "#!/bin/sh\necho hi\nsleep 0.1\n");
    let job = job.to_str().unwrap();
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();

    server.client_ok(&["schedule", "one", "linux", job, "--period", "never"]);
    let info = stdout(&server.client_ok(&["info"]));
    assert!(info.starts_with("schedule (1 job):\n"), "{info}");
    server.client_ok(&["schedule", "two", "linux", job, "--period", "never"]);
    let info = stdout(&server.client_ok(&["info"]));
    assert!(info.starts_with("schedule (2 jobs):\n"), "{info}");

    let out = server.client_ok(&["unschedule", "two"]);
    assert_eq!(stdout(&out), "unscheduled two\n");
    let out = server.client(&["unschedule", "two"]);
    assert_runtime_error(&out);

    // The build of `one`, observed live from its first line, then listed.
    let observer = Command::new(bin("builder-client"))
        .args(["-r", &server.addr, "execute", "one", "--observe"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The worker starts once execute has moved the queued run to the front
    // (started earlier, it could take that run, and execute would queue
    // and wait for another).
    server.wait_log("job queued at the front");
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let mut observer = observer;
    wait_for("the observer to exit", || observer.try_wait().unwrap());
    let observed = observer.wait_with_output().unwrap();
    let err = lines(&observed.stderr);
    assert!(observed.status.success(), "{err:#?}");
    let trailer = err.last().unwrap();
    let observed_duration = trailer
        .rsplit("after ")
        .next()
        .and_then(|d| d.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no duration in {trailer:?}"))
        .to_owned();

    let results = stdout(&server.client_ok(&["results", "--job", "one"]));
    let row = results.lines().nth(1).expect("one result row");
    let listed: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(listed[4], observed_duration, "{results}\n{err:#?}");

    let record = server.records("one").pop().unwrap();
    let inspected = Command::new(bin("builder-inspect"))
        .arg(&record)
        .output()
        .unwrap();
    let inspected = String::from_utf8_lossy(&inspected.stdout).into_owned();
    assert!(
        inspected.contains(&format!("duration: {observed_duration}\n")),
        "{inspected}"
    );

    // Replayed from the record, the same again.
    let uuid = listed[0];
    let replayed = server.client_ok(&["observe", uuid]);
    let replayed = lines(&replayed.stderr);
    assert!(
        replayed
            .last()
            .unwrap()
            .ends_with(&format!("after {observed_duration})")),
        "{replayed:#?}"
    );
}
