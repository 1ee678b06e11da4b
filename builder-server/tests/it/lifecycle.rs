//! The build lifecycle through the real server (issue 16): every UUID the
//! server hands out ends in a result, a recorded cancellation or a visible
//! merge; and every bound applies to both worker protocols.

use std::path::Path;

use crate::common::{runtime, wait_for, Server};
use crate::legacy_peers::{hello, recv, send};
use protocol::codec::Connection;
use protocol::legacy::{Artifact, Command, ExecResult, PeerKind};
use protocol::message::{ClientRequest, JobOutcome, ResultSummary, ServerToClient, WorkerMessage};
use protocol::record::Exec;
use uuid::Uuid;

/// The server's index entry of `uuid`, once it has one.
fn result_of(server: &Server, uuid: Uuid) -> ResultSummary {
    wait_for(&format!("a result for {uuid}"), || {
        match server.request(ClientRequest::Results {
            job: None,
            limit: 1000,
        }) {
            ServerToClient::ResultList(list) => {
                list.into_iter().map(|e| e.summary).find(|r| r.uuid == uuid)
            }
            other => panic!("{other:?}"),
        }
    })
}

/// The UUIDs of the builds running now.
fn running(server: &Server) -> Vec<Uuid> {
    server.info().running.iter().map(|r| r.uuid).collect()
}

/// A job that counts its runs in `count` and sleeps (until killed) in the
/// first `sleepers` of them.
fn counting_job(server: &Server, tmp: &Path, name: &str, sleepers: u32) {
    let count = tmp.join(format!("{name}.count"));
    let body = format!(
        "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0)\necho $((n + 1)) > '{c}'\necho \"run $n\"\nif [ \"$n\" -lt {sleepers} ]; then sleep 120; fi\n",
        c = count.display()
    );
    let file = crate::common::script(tmp, &format!("{name}.sh"), &body);
    server.client_ok(&[
        "schedule",
        name,
        "linux",
        file.to_str().unwrap(),
        "--period",
        "never",
    ]);
}

/// `execute NAME`'s UUID, from `queued on linux as UUID`.
fn execute(server: &Server, name: &str) -> Uuid {
    let out = server.client_ok(&["execute", name]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let uuid = text
        .split(" as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no UUID in {text:?}"));
    uuid.trim_end_matches(';').parse().unwrap()
}

#[test]
fn an_execute_during_a_build_whose_worker_dies_is_merged_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    counting_job(&server, tmp.path(), "j", 1);
    let mut first = server.worker("linux", tmp.path(), &[]);
    let a = wait_for("build A to run", || running(&server).first().copied());
    let b = execute(&server, "j");
    assert_ne!(a, b);
    first.kill();
    // A goes back to the queue under its UUID; B, queued beside it, is
    // merged into it, visibly.
    let merged = result_of(&server, b);
    assert_eq!(
        merged.outcome,
        JobOutcome::Aborted(format!("merged into {a}"))
    );
    let _second = server.worker("linux", tmp.path(), &[]);
    let stored = result_of(&server, a);
    assert_eq!(stored.outcome, JobOutcome::Exited(0));
    // Observing B follows A to its end.
    let out = server.client(&["observe", &b.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("merged into {a}")), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("run 1"));
}

#[test]
fn two_builds_of_a_job_running_when_the_server_is_killed_both_end() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut server = Server::binary(&state, &[]);
    counting_job(&server, tmp.path(), "j", 2);
    let _w1 = server.worker("linux", tmp.path(), &[]);
    let a = wait_for("build A to run", || running(&server).first().copied());
    let b = execute(&server, "j");
    let _w2 = server.worker("linux", tmp.path(), &[]);
    wait_for("both builds to run", || {
        (running(&server).len() == 2).then_some(())
    });
    server.kill();
    let server = Server::binary(&state, &[]);
    wait_for("recovery of both builds", || {
        server.log().contains("count=2").then_some(())
    });
    let _w3 = server.worker("linux", tmp.path(), &["--loop"]);
    let (ra, rb) = (result_of(&server, a), result_of(&server, b));
    // One ran to its end; the other was merged into it.
    let (ran, merged) = if ra.outcome == JobOutcome::Exited(0) {
        (ra, rb)
    } else {
        (rb, ra)
    };
    assert_eq!(ran.outcome, JobOutcome::Exited(0), "{ran:?}");
    assert_eq!(
        merged.outcome,
        JobOutcome::Aborted(format!("merged into {}", ran.uuid)),
        "{merged:?}"
    );
    assert_eq!(server.records("j").len(), 1);
}

#[test]
fn queued_builds_are_cancelled_on_record_and_leave_no_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let script = crate::common::script(tmp.path(), "idle.sh", "true\n");
    server.client_ok(&[
        "schedule",
        "waits",
        "nowhere",
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
    // `execute` of a queued job names the build already queued.
    let queued = execute(&server, "waits");
    let out = server.client_ok(&["cancel", &queued.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cancelled"),
        "{out:?}"
    );
    assert_eq!(
        result_of(&server, queued).outcome,
        JobOutcome::Aborted("cancelled".into())
    );
    assert!(server.info().queues.iter().all(|q| q.jobs.is_empty()));
    // Its observer gets that end.
    let out = server.client(&["observe", &queued.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A cancelled build cannot be cancelled again.
    let out = server.client(&["cancel", &queued.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running or queued build"));

    // A build whose worker died is requeued; unscheduling its job then
    // records it cancelled and leaves no `DIR/<job>/` behind.
    counting_job(&server, tmp.path(), "lost", 1);
    let mut worker = server.worker("linux", tmp.path(), &[]);
    let uuid = wait_for("the build to run", || running(&server).first().copied());
    worker.kill();
    wait_for("the build to be requeued", || {
        server
            .info()
            .queues
            .iter()
            .any(|q| q.jobs.iter().any(|j| j == "lost"))
            .then_some(())
    });
    server.client_ok(&["unschedule", "lost"]);
    assert_eq!(
        result_of(&server, uuid).outcome,
        JobOutcome::Aborted("cancelled: job lost was unscheduled".into())
    );
    assert!(
        !server.dir.join("lost").exists(),
        "an empty job folder was left behind"
    );
}

#[test]
fn a_path_sent_twice_aborts_the_build_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let script = crate::common::script(tmp.path(), "twice.sh", "true\n");
    server.client_ok(&["schedule", "twice", "linux", script.to_str().unwrap()]);
    runtime().block_on(async {
        let mut conn = crate::peer::worker(&server.addr, "linux").await;
        let job = crate::peer::take_job(&mut conn).await;
        for _ in 0..2 {
            for msg in [
                WorkerMessage::ArtifactStart {
                    uuid: job.uuid,
                    path: b"bin/app".to_vec(),
                    len: 1,
                },
                WorkerMessage::ArtifactChunk {
                    uuid: job.uuid,
                    data: b"x".to_vec(),
                },
            ] {
                if conn.send(&msg).await.is_err() {
                    break;
                }
            }
        }
        let dropped = crate::peer::read_until_closed(&mut conn).await;
        assert!(
            matches!(&dropped, crate::peer::Dropped::Failure(r) if r.contains("sent twice")),
            "{dropped:?}"
        );
    });
    let exec = &server.wait_records("twice", 1)[0];
    assert_eq!(
        exec.result,
        ExecResult::Msg(b"artifact \"bin/app\" sent twice".to_vec())
    );
    assert!(exec.output.is_empty());
}

// ---------------------------------------------------------------------------
// The reference's (OCaml builder's) worker and client protocols.

/// A reference peer after its hello.
async fn reference(addr: &str, kind: PeerKind) -> Connection {
    let version = match kind {
        PeerKind::Client => 13,
        PeerKind::Worker => 5,
    };
    let (conn, answer) = hello(addr, kind, version).await;
    assert_eq!(answer, Some(Command::ServerHello));
    conn
}

/// A reference worker takes the next linux job, sends `console` lines and
/// `job_finished` with `result` and `artifacts`, and reads until the server
/// closes the connection. Returns the build's record.
fn reference_build(
    server: &Server,
    job: &str,
    console: Vec<Vec<u8>>,
    result: ExecResult,
    artifacts: Vec<Artifact>,
) -> Exec {
    runtime().block_on(async {
        let mut conn = reference(&server.addr, PeerKind::Worker).await;
        send(
            &mut conn,
            &Command::JobRequested {
                platform: b"linux".to_vec(),
            },
        )
        .await;
        let Some(Command::JobSchedule { uuid, .. }) = recv(&mut conn).await else {
            panic!("no job");
        };
        for output in console {
            send(&mut conn, &Command::Output { uuid, output }).await;
        }
        send(
            &mut conn,
            &Command::JobFinished {
                uuid,
                result,
                data: artifacts,
            },
        )
        .await;
        assert_eq!(recv(&mut conn).await, None);
    });
    server.wait_records(job, 1).remove(0)
}

fn artifact(path: &str, len: usize) -> Artifact {
    Artifact {
        path: path.as_bytes().to_vec(),
        data: vec![b'x'; len],
    }
}

fn message(exec: &Exec) -> String {
    match &exec.result {
        ExecResult::Msg(m) => String::from_utf8_lossy(m).into_owned(),
        other => panic!("expected an aborted build, got {other:?}"),
    }
}

#[test]
fn a_reference_worker_is_held_to_every_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.limits.max_artifacts = 3;
        c.limits.max_artifact_bytes = 1000;
    });
    let script = crate::common::script(tmp.path(), "job.sh", "true\n");
    let schedule = |name: &str| {
        server.client_ok(&[
            "schedule",
            name,
            "linux",
            script.to_str().unwrap(),
            "--period",
            "never",
        ])
    };

    // A 1 MiB console line is cut, and says so; a 1 MiB abort message too.
    schedule("long");
    let exec = reference_build(
        &server,
        "long",
        vec![vec![b'l'; 1 << 20]],
        ExecResult::Msg(vec![b'm'; 1 << 20]),
        Vec::new(),
    );
    let lines = crate::common::console(&exec);
    assert_eq!(lines.len(), 2, "the line and a note");
    assert_eq!(lines[0].len(), protocol::message::MAX_CONSOLE_LINE);
    assert!(lines[1].contains("cut to 65536"), "{}", lines[1]);
    let text = message(&exec);
    assert!(text.len() < 5000, "{} bytes", text.len());
    assert!(text.ends_with("over the server's limit of 4096]"), "{text}");

    // More artifacts than --max-artifacts.
    schedule("many");
    let many = (0..4).map(|i| artifact(&format!("a{i}"), 1)).collect();
    let exec = reference_build(&server, "many", Vec::new(), ExecResult::Exited(0), many);
    assert_eq!(message(&exec), "more than 3 artifacts (--max-artifacts)");
    assert!(exec.output.is_empty());

    // More bytes than --max-artifact-bytes.
    schedule("big");
    let big = vec![artifact("big", 1001)];
    let exec = reference_build(&server, "big", Vec::new(), ExecResult::Exited(0), big);
    assert!(
        message(&exec).contains("(--max-artifact-bytes)"),
        "{exec:?}"
    );

    // One path twice.
    schedule("twice");
    let twice = vec![artifact("bin/app", 1), artifact("bin/app", 1)];
    let exec = reference_build(&server, "twice", Vec::new(), ExecResult::Exited(0), twice);
    assert_eq!(message(&exec), "artifact \"bin/app\" sent twice");

    // Within every bound: stored as reported.
    schedule("fine");
    let fine = vec![artifact("bin/app", 10)];
    let exec = reference_build(&server, "fine", Vec::new(), ExecResult::Exited(0), fine);
    assert_eq!(exec.result, ExecResult::Exited(0));
    assert_eq!(exec.output.len(), 1);
}

#[test]
fn a_reference_worker_past_its_timeout_and_grace_is_aborted_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.limits.timeout_grace = std::time::Duration::from_secs(1);
    });
    let file = crate::common::script(tmp.path(), "slow.sh", "sleep 100\n");
    server.client_ok(&[
        "schedule",
        "slow",
        "linux",
        file.to_str().unwrap(),
        "--timeout",
        "1",
    ]);
    let started = std::time::Instant::now();
    let uuid = runtime().block_on(async {
        let mut conn = reference(&server.addr, PeerKind::Worker).await;
        send(
            &mut conn,
            &Command::JobRequested {
                platform: b"linux".to_vec(),
            },
        )
        .await;
        let Some(Command::JobSchedule { uuid, .. }) = recv(&mut conn).await else {
            panic!("no job");
        };
        // No output: the server ends the build past its timeout and grace.
        assert_eq!(recv(&mut conn).await, None);
        uuid
    });
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    // The same text as for a new worker.
    assert_eq!(
        result_of(&server, uuid).outcome,
        JobOutcome::Aborted("timeout".into())
    );
}

#[test]
fn a_reference_worker_naming_a_bad_platform_is_told_why() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    runtime().block_on(async {
        let mut conn = reference(&server.addr, PeerKind::Worker).await;
        send(
            &mut conn,
            &Command::JobRequested {
                platform: b"no such/platform".to_vec(),
            },
        )
        .await;
        match recv(&mut conn).await {
            Some(Command::Failure { message }) => {
                let message = String::from_utf8_lossy(&message);
                assert!(message.contains("invalid platform name"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    });
}

#[test]
fn a_reference_clients_info_fits_the_frame_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| c.max_frame = 65536);
    // Four 30 KiB scripts: 120 KiB, twice the frame limit.
    for i in 0..4 {
        let body = format!("#!/bin/sh\n{}\n", "#".repeat(30 * 1024));
        let file = crate::common::script(tmp.path(), &format!("s{i}.sh"), &body);
        server.client_ok(&[
            "schedule",
            &format!("s{i}"),
            "nowhere",
            file.to_str().unwrap(),
            "--period",
            "never",
        ]);
    }
    let (before, end) = runtime().block_on(async {
        let mut conn = reference(&server.addr, PeerKind::Client).await;
        send(&mut conn, &Command::Info).await;
        let reply = recv(&mut conn).await;
        let end = recv(&mut conn).await;
        (reply, end)
    });
    assert_eq!(end, Some(Command::Success));
    let Some(Command::InfoReply(info)) = before else {
        panic!("expected an info reply, got {before:?}");
    };
    assert_eq!(info.schedule.len(), 4);
    let encoded = Command::InfoReply(info.clone()).encode();
    assert!(encoded.len() <= 65536, "{} bytes", encoded.len());
    let left_out = info
        .schedule
        .iter()
        .filter(|item| match &item.job {
            protocol::legacy::Job::Script(job) => {
                String::from_utf8_lossy(&job.script).contains("is left out of `info`")
            }
            protocol::legacy::Job::Orb(_) => false,
        })
        .count();
    assert!(left_out >= 2, "{left_out} scripts left out");
}
