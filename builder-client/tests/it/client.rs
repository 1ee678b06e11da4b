//! The real client binary against a scripted server speaking the real
//! protocol: what each command sends, and how each answer is shown.

use std::io::Write;

use crate::common::{client, error_lines, Behaviour, Scripted};
use protocol::info::InfoSummary;
use protocol::message::{
    BuildHeader, ClientRequest, Info, JobKind, JobOutcome, JobSpec, JobSummary, OutputLine,
    QueueInfo, ResultEntry, ResultSummary, Role, RunningBuild, ScheduleEntry, ServerToClient,
    Timestamp, UploadState, WorkerInfo,
};
use protocol::signal::Signal;
use protocol::trigger::Trigger;
use protocol::PROTOCOL_VERSION;
use uuid::Uuid;

const UUID: &str = "e20097f8-ee36-4bd1-8a5b-1aa3213c52c0";

fn uuid() -> Uuid {
    Uuid::parse_str(UUID).unwrap()
}

fn ok(detail: Option<&str>) -> Vec<ServerToClient> {
    vec![ServerToClient::Success {
        detail: detail.map(str::to_owned),
    }]
}

fn ts(rfc3339: &str) -> Timestamp {
    Timestamp::from_datetime(
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&chrono::Utc),
    )
}

/// Runs the client against a server answering `answers`; returns the
/// request it sent and the process output.
fn exchange(args: &[&str], answers: Vec<ServerToClient>) -> (ClientRequest, std::process::Output) {
    let server = Scripted::answer(answers);
    let out = client()
        .args(args)
        .args(["-r", &server.addr])
        .output()
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen.hello.role, Role::Client);
    assert_eq!(seen.hello.version, PROTOCOL_VERSION);
    assert!(seen.hello.software.starts_with("builder-client "));
    (seen.request.expect("no request sent"), out)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn schedule_sends_the_script_cron_and_timeout_with_remote_after_the_command() {
    let mut script = tempfile::NamedTempFile::new().unwrap();
    let body = "#!/bin/sh\necho \"héllo\"\nexit 0\n";
    script.write_all(body.as_bytes()).unwrap();
    let path = script.path().to_str().unwrap();
    let (req, out) = exchange(
        &[
            "schedule",
            "job1",
            "linux",
            path,
            "--cron",
            " 0 3 * * * ",
            "--timeout",
            "600",
        ],
        ok(Some("queued on linux")),
    );
    assert_eq!(
        req,
        ClientRequest::Schedule {
            job: JobSpec {
                name: "job1".into(),
                kind: JobKind::Script {
                    platform: "linux".into(),
                    script: body.into(),
                },
            },
            trigger: Trigger::Cron("0 3 * * *".into()),
            timeout_secs: Some(600),
        }
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "queued on linux\n");
}

#[test]
fn schedule_defaults_to_daily_and_orb_build_takes_a_period() {
    let script = tempfile::NamedTempFile::new().unwrap();
    let path = script.path().to_str().unwrap();
    let (req, out) = exchange(&["schedule", "j", "freebsd", path], ok(None));
    assert_eq!(
        req,
        ClientRequest::Schedule {
            job: JobSpec {
                name: "j".into(),
                kind: JobKind::Script {
                    platform: "freebsd".into(),
                    script: String::new(),
                },
            },
            trigger: Trigger::Daily,
            timeout_secs: None,
        }
    );
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");

    let (req, _) = exchange(
        &["orb-build", "solo5", "solo5-hvt", "--period", "weekly"],
        ok(None),
    );
    assert_eq!(
        req,
        ClientRequest::Schedule {
            job: JobSpec {
                name: "solo5".into(),
                kind: JobKind::Orb {
                    opam_package: "solo5-hvt".into(),
                },
            },
            trigger: Trigger::Weekly,
            timeout_secs: None,
        }
    );
}

#[test]
fn reschedule_sends_the_exact_instant() {
    let (req, out) = exchange(
        &["reschedule", "job1", "2031-02-03T04:05:06.789+02:00"],
        ok(None),
    );
    assert!(out.status.success());
    assert_eq!(
        req,
        ClientRequest::Reschedule {
            name: "job1".into(),
            next: Timestamp(1_927_850_706_789_000_000),
            trigger: None,
        }
    );
    assert_eq!(
        Timestamp(1_927_850_706_789_000_000),
        ts("2031-02-03T02:05:06.789Z")
    );

    let (req, _) = exchange(
        &[
            "reschedule",
            "job1",
            "2031-02-03T02:05:06Z",
            "--period",
            "hourly",
        ],
        ok(None),
    );
    assert_eq!(
        req,
        ClientRequest::Reschedule {
            name: "job1".into(),
            next: ts("2031-02-03T02:05:06Z"),
            trigger: Some(Trigger::Hourly),
        }
    );
}

#[test]
fn simple_commands_send_their_request() {
    let cases: Vec<(Vec<&str>, ClientRequest)> = vec![
        (
            vec!["execute", "job1", "--platform", "linux"],
            ClientRequest::Execute {
                name: "job1".into(),
                platform: Some("linux".into()),
            },
        ),
        (
            vec!["execute", "job1"],
            ClientRequest::Execute {
                name: "job1".into(),
                platform: None,
            },
        ),
        (
            vec!["unschedule", "job1"],
            ClientRequest::Unschedule {
                name: "job1".into(),
            },
        ),
        (
            vec!["drop-platform", "ubuntu-20.04"],
            ClientRequest::DropPlatform {
                platform: "ubuntu-20.04".into(),
            },
        ),
        (
            vec!["undrop-platform", "ubuntu-20.04"],
            ClientRequest::UndropPlatform {
                platform: "ubuntu-20.04".into(),
            },
        ),
        (vec!["cancel", UUID], ClientRequest::Cancel { uuid: uuid() }),
    ];
    for (args, expected) in cases {
        let (req, out) = exchange(&args, ok(Some("done")));
        assert_eq!(req, expected, "{args:?}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "done\n");
    }
}

#[test]
fn global_options_before_the_command_work_too() {
    let server = Scripted::answer(ok(None));
    let out = client()
        .args(["-r", &server.addr, "--json", "unschedule", "x"])
        .output()
        .unwrap();
    let seen = server.seen();
    assert_eq!(
        seen.request,
        Some(ClientRequest::Unschedule { name: "x".into() })
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn failure_is_an_error_with_the_reason() {
    let (_, out) = exchange(
        &["unschedule", "nope"],
        vec![ServerToClient::Failure {
            reason: "no job named 'nope'".into(),
        }],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(error_lines(&out.stderr), vec!["error: no job named 'nope'"]);
}

#[test]
fn refused_hello() {
    let server = Scripted::start(Behaviour::Refuse("bad token".into()));
    let out = client()
        .args(["info", "-r", &server.addr])
        .env("BUILDER_TOKEN", "wrong")
        .output()
        .unwrap();
    let seen = server.seen();
    assert!(seen.request.is_none());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_lines(&out.stderr),
        vec!["error: server refused the connection: bad token"]
    );
}

#[test]
fn connection_closed_before_the_answer() {
    let (_, out) = exchange(&["info"], vec![]);
    assert_eq!(out.status.code(), Some(1));
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("closed the connection before"),
        "{errors:?}"
    );
}

#[test]
fn unexpected_answer_is_an_error() {
    let (_, out) = exchange(&["info"], ok(None));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unexpected answer from the server: Success"));
}

#[test]
fn token_from_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  file-token \nignored\n").unwrap();

    let server = Scripted::answer(ok(None));
    client()
        .args(["unschedule", "j", "-r", &server.addr, "--token-file"])
        .arg(&token_file)
        .env("BUILDER_TOKEN", "env-token")
        .assert()
        .success();
    assert_eq!(server.seen().hello.token.as_deref(), Some("file-token"));

    let server = Scripted::answer(ok(None));
    client()
        .args(["unschedule", "j", "-r", &server.addr])
        .env("BUILDER_TOKEN", " env-token\n")
        .assert()
        .success();
    assert_eq!(server.seen().hello.token.as_deref(), Some("env-token"));

    let server = Scripted::answer(ok(None));
    client()
        .args(["unschedule", "j", "-r", &server.addr])
        .assert()
        .success();
    assert_eq!(server.seen().hello.token, None);
}

/// The sample as the server sends it: in parts (small ones, so there are
/// several), then the end marker.
fn info_answer() -> Vec<ServerToClient> {
    let info = sample_info();
    let summary = InfoSummary {
        schedule: info.schedule.iter().map(JobSummary::from).collect(),
        queues: info.queues,
        running: info.running,
        dropped_platforms: info.dropped_platforms,
        workers: info.workers,
    };
    let answer = summary.into_answer(100);
    assert!(answer.len() > 3, "{answer:?}");
    answer
}

fn sample_info() -> Info {
    Info {
        schedule: vec![
            ScheduleEntry {
                job: JobSpec {
                    name: "job1".into(),
                    kind: JobKind::Script {
                        platform: "linux".into(),
                        script: "echo hi\n".into(),
                    },
                },
                trigger: Trigger::Cron("0 3 * * *".into()),
                next_run: Some(ts("2030-01-02T03:00:00Z")),
                timeout_secs: Some(600),
            },
            ScheduleEntry {
                job: JobSpec {
                    name: "solo5".into(),
                    kind: JobKind::Orb {
                        opam_package: "solo5-hvt".into(),
                    },
                },
                trigger: Trigger::Never,
                next_run: None,
                timeout_secs: None,
            },
        ],
        queues: vec![
            QueueInfo {
                platform: "linux".into(),
                jobs: vec!["job1".into(), "solo5".into()],
            },
            QueueInfo {
                platform: "freebsd".into(),
                jobs: vec![],
            },
        ],
        running: vec![RunningBuild {
            uuid: uuid(),
            job: "solo5".into(),
            platform: "freebsd".into(),
            started: ts("2030-01-01T12:00:00.5Z"),
            worker: "bsd1 (10.0.0.2:40000)".into(),
        }],
        dropped_platforms: vec!["ubuntu-18.04".into()],
        workers: vec![
            WorkerInfo {
                platform: "freebsd".into(),
                host: "bsd1".into(),
                peer: "10.0.0.2:40000".into(),
                running: Some(uuid()),
            },
            WorkerInfo {
                platform: "linux".into(),
                host: "lin1".into(),
                peer: "10.0.0.3:40001".into(),
                running: None,
            },
        ],
    }
}

#[test]
fn info_json() {
    let (req, out) = exchange(&["info", "--json"], info_answer());
    assert_eq!(req, ClientRequest::Info);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["schedule"];
    assert_eq!(s[0]["name"], "job1");
    assert_eq!(s[0]["kind"], "script");
    assert_eq!(s[0]["platform"], "linux");
    assert_eq!(s[0]["trigger"], "cron");
    assert_eq!(s[0]["cron"], "0 3 * * *");
    assert_eq!(s[0]["next_run"], "2030-01-02T03:00:00Z");
    assert_eq!(s[0]["timeout_secs"], 600);
    assert_eq!(s[0]["script_bytes"], 8);
    assert!(s[0].get("script").is_none(), "info leaves scripts out: {s}");
    assert_eq!(s[1]["kind"], "orb-build");
    assert_eq!(s[1]["opam_package"], "solo5-hvt");
    assert_eq!(s[1]["trigger"], "never");
    assert!(s[1]["next_run"].is_null());
    assert_eq!(v["queues"][0]["platform"], "linux");
    assert_eq!(v["queues"][0]["jobs"], serde_json::json!(["job1", "solo5"]));
    assert_eq!(v["running"][0]["uuid"], UUID);
    assert_eq!(v["running"][0]["started"], "2030-01-01T12:00:00.500Z");
    assert_eq!(v["dropped_platforms"], serde_json::json!(["ubuntu-18.04"]));
    assert_eq!(v["workers"][0]["running"], UUID);
    assert!(v["workers"][1]["running"].is_null());
}

#[test]
fn info_text() {
    let (_, out) = exchange(&["info"], info_answer());
    assert!(out.status.success());
    let text = stdout(&out);
    for needle in [
        "job1",
        "script on linux",
        "cron \"0 3 * * *\"",
        "2030-01-02T03:00:00Z",
        "600s",
        "orb-build solo5-hvt",
        "linux: job1, solo5",
        "freebsd: (empty)",
        UUID,
        "bsd1 (10.0.0.2:40000)",
        "dropped platforms: ubuntu-18.04",
        "lin1 (10.0.0.3:40001, idle)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn info_with_a_part_missing_is_an_error() {
    let mut answer = info_answer();
    answer.remove(1);
    let (_, out) = exchange(&["info"], answer);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: the info answer is incomplete: ")
            && err.contains("items received, the server announced"),
        "{err}"
    );
}

#[test]
fn show_prints_the_job_with_its_whole_script() {
    let entry = sample_info().schedule.remove(0);
    let (req, out) = exchange(&["show", "job1"], vec![ServerToClient::Job(entry.clone())]);
    assert_eq!(
        req,
        ClientRequest::Show {
            name: "job1".into()
        }
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("name:     job1\njob:      script on linux\n"),
        "{text}"
    );
    assert!(text.ends_with("script (8 bytes):\necho hi\n"), "{text}");

    let (_, out) = exchange(
        &["show", "job1", "--json"],
        vec![ServerToClient::Job(entry)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "job1");
    assert_eq!(v["script"], "echo hi\n");
    assert_eq!(v["script_bytes"], 8);
    assert_eq!(v["cron"], "0 3 * * *");

    let (_, out) = exchange(
        &["show", "nope"],
        vec![ServerToClient::Failure {
            reason: "no job named nope".into(),
        }],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: no job named nope\n");
}

fn sample_results() -> Vec<ResultEntry> {
    vec![
        ResultEntry {
            summary: ResultSummary {
                uuid: uuid(),
                job: "job5".into(),
                platform: "linux".into(),
                started: ts("2026-11-23T17:56:34.599Z"),
                finished: ts("2026-11-23T17:56:35.659400001Z"),
                outcome: JobOutcome::Signalled(Signal::from_portable(-7)),
                upload: UploadState::Pending {
                    attempts: 3,
                    last_error: Some("HTTP 502".into()),
                },
            },
            attempts: 2,
        },
        ResultEntry {
            summary: ResultSummary {
                uuid: Uuid::nil(),
                job: "job1".into(),
                platform: "freebsd".into(),
                started: ts("2026-11-23T17:00:00Z"),
                finished: ts("2026-11-23T18:02:03Z"),
                outcome: JobOutcome::Aborted("timeout".into()),
                upload: UploadState::Delivered {
                    at: ts("2026-11-23T18:02:04Z"),
                },
            },
            attempts: 1,
        },
    ]
}

#[test]
fn results_table_and_json() {
    let (req, out) = exchange(
        &["results", "--job", "job5", "--limit", "5"],
        vec![ServerToClient::ResultList(sample_results())],
    );
    assert_eq!(
        req,
        ClientRequest::Results {
            job: Some("job5".into()),
            limit: 5
        }
    );
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("UUID"));
    assert!(lines[0].contains("ATTEMPTS"), "{}", lines[0]);
    for needle in [
        UUID,
        "job5",
        "1.060s",
        "killed by SIGKILL",
        "pending (3 attempts, last error: HTTP 502)",
    ] {
        assert!(
            lines[1].contains(needle),
            "{needle:?} not in {:?}",
            lines[1]
        );
    }
    for needle in ["1h 02m 03s", "aborted: timeout", "delivered"] {
        assert!(
            lines[2].contains(needle),
            "{needle:?} not in {:?}",
            lines[2]
        );
    }

    let (req, out) = exchange(
        &["results", "--json"],
        vec![ServerToClient::ResultList(sample_results())],
    );
    assert_eq!(
        req,
        ClientRequest::Results {
            job: None,
            limit: 20
        }
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["uuid"], UUID);
    assert_eq!(
        v[0]["outcome"],
        serde_json::json!({"kind": "signalled", "signal": "SIGKILL"})
    );
    assert_eq!(v[0]["result"], "killed by SIGKILL");
    assert_eq!(v[0]["upload"]["kind"], "pending");
    assert_eq!(v[0]["upload"]["attempts"], 3);
    assert_eq!(v[0]["started"], "2026-11-23T17:56:34.599Z");
    assert_eq!(
        v[1]["upload"],
        serde_json::json!({"kind": "delivered", "at": "2026-11-23T18:02:04Z"})
    );
    assert_eq!(v[1]["duration_secs"], 3723.0);
    // Rounded to milliseconds, and the attempts that made the build.
    assert_eq!(v[0]["duration_secs"], 1.06);
    assert_eq!(v[0]["attempts"], 2);
    assert_eq!(v[1]["attempts"], 1);
}

fn line(delta_ns: i64, data: &[u8]) -> OutputLine {
    OutputLine {
        delta_ns,
        data: data.to_vec(),
    }
}

fn observe_stream(outcome: JobOutcome) -> Vec<ServerToClient> {
    vec![
        ServerToClient::ObserveStart(BuildHeader {
            uuid: uuid(),
            job: "job1".into(),
            platform: "linux".into(),
            started: ts("2030-01-01T00:00:00Z"),
        }),
        ServerToClient::Console(vec![line(1, b"first"), line(2, b"second \xff raw")]),
        ServerToClient::Dropped { lines: 7 },
        ServerToClient::Console(vec![line(3_000_000_000, b""), line(4_000_000_000, b"last")]),
        ServerToClient::ObserveEnd {
            finished: ts("2030-01-01T00:00:05Z"),
            outcome,
        },
    ]
}

#[test]
fn observe_prints_lines_reports_drops_and_exits_with_the_jobs_code() {
    let (req, out) = exchange(&["observe", UUID], observe_stream(JobOutcome::Exited(3)));
    assert_eq!(req, ClientRequest::Observe { uuid: uuid() });
    assert_eq!(out.stdout, b"first\nsecond \xff raw\n\nlast\n");
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains(UUID) && err.contains("job1") && err.contains("linux"),
        "{err}"
    );
    assert!(
        err.contains("[7 lines not shown: observer too slow]"),
        "{err}"
    );
    assert!(err.contains("exited 3"), "{err}");
    assert!(error_lines(&out.stderr).is_empty());
}

#[test]
fn observe_signalled_and_aborted_are_failures() {
    let (_, out) = exchange(
        &["observe", UUID],
        observe_stream(JobOutcome::Signalled(Signal::from_portable(-7))),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("killed by SIGKILL"));

    let (_, out) = exchange(
        &["observe", UUID],
        observe_stream(JobOutcome::Aborted("timeout".into())),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("aborted: timeout"));

    let (_, out) = exchange(&["observe", UUID], observe_stream(JobOutcome::Exited(0)));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn observe_latest_sends_its_filters_and_speaks_ndjson() {
    let (req, out) = exchange(
        &[
            "observe-latest",
            "--platform",
            "linux",
            "--job",
            "job1",
            "--json",
        ],
        observe_stream(JobOutcome::Exited(0)),
    );
    assert_eq!(
        req,
        ClientRequest::ObserveLatest {
            platform: Some("linux".into()),
            job: Some("job1".into()),
        }
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["start", "line", "line", "dropped", "line", "line", "end"]
    );
    assert_eq!(events[0]["uuid"], UUID);
    assert_eq!(events[0]["job"], "job1");
    // Milliseconds always: a replayed record has no finer times.
    assert_eq!(events[0]["started"], "2030-01-01T00:00:00.000Z");
    assert_eq!(events[2]["text"], "second \u{fffd} raw");
    assert_eq!(events[2]["delta_ns"], 2);
    assert_eq!(events[3]["lines"], 7);
    assert_eq!(
        events[6]["outcome"],
        serde_json::json!({"kind": "exited", "code": 0})
    );
    assert_eq!(events[6]["exit_status"], 0);
}

#[test]
fn observe_of_an_unknown_build_fails() {
    let (_, out) = exchange(
        &["observe", UUID],
        vec![ServerToClient::Failure {
            reason: format!("no build {UUID}"),
        }],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_lines(&out.stderr),
        vec![format!("error: no build {UUID}")]
    );
}

#[test]
fn observe_cut_off_before_the_end_fails() {
    let mut stream = observe_stream(JobOutcome::Exited(0));
    stream.pop();
    let (_, out) = exchange(&["observe", UUID], stream);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"first\nsecond \xff raw\n\nlast\n");
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("closed the connection before the build ended"),
        "{errors:?}"
    );
}
