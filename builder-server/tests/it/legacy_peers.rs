//! A mixed farm: the OCaml builder's worker and client protocols (spoken by
//! test peers built on `protocol::legacy`) next to this project's binaries
//! on one real server; unknown reference versions; tokens and
//! `--legacy-peers`.

use crate::common::{bin, console, runtime, token, wait_for, Server, DEADLINE};
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::legacy::{Artifact, Command, ExecResult, Info, PeerKind, Period, ScriptJob};
use protocol::message::{ClientRequest, JobOutcome, ServerToClient};
use protocol::trigger::Trigger;
use uuid::Uuid;

/// Sends one reference command (also used by `lifecycle`).
pub(crate) async fn send(conn: &mut Connection, command: &Command) {
    conn.send_frame(&command.encode()).await.unwrap();
}

/// The next command; `None` when the server closed the connection.
pub(crate) async fn recv(conn: &mut Connection) -> Option<Command> {
    let frame = tokio::time::timeout(DEADLINE, conn.recv_frame())
        .await
        .expect("an answer in time")
        .ok()??;
    Some(Command::decode(&frame).unwrap())
}

/// Connects and says the reference's hello; returns the server's answer.
pub(crate) async fn hello(
    addr: &str,
    kind: PeerKind,
    version: i64,
) -> (Connection, Option<Command>) {
    let mut conn = Connection::connect(addr, DEFAULT_MAX_FRAME).await.unwrap();
    send(&mut conn, &Command::ClientHello { kind, version }).await;
    let answer = recv(&mut conn).await;
    (conn, answer)
}

/// A reference client connection after its hello.
async fn old_client(addr: &str) -> Connection {
    let (conn, answer) = hello(addr, PeerKind::Client, 13).await;
    assert_eq!(answer, Some(Command::ServerHello));
    conn
}

/// One reference client command and its final answer (after any
/// `info_reply` or output lines, which are returned too).
async fn old_command(addr: &str, command: Command) -> (Vec<Command>, Command) {
    let mut conn = old_client(addr).await;
    send(&mut conn, &command).await;
    let mut before = Vec::new();
    loop {
        match recv(&mut conn).await.expect("an answer") {
            end @ (Command::Success | Command::Failure { .. }) => {
                // One command per connection, as with the reference.
                assert_eq!(recv(&mut conn).await, None);
                return (before, end);
            }
            other => before.push(other),
        }
    }
}

fn old_info(addr: &str) -> Info {
    let (before, end) = runtime().block_on(old_command(addr, Command::Info));
    assert_eq!(end, Command::Success);
    match &before[..] {
        [Command::InfoReply(info)] => info.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_job_of_a_new_client_runs_on_a_reference_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let script = "#!/bin/sh\necho hi\n";
    let file = crate::common::script(tmp.path(), "newjob.sh", script);
    server.client_ok(&["schedule", "newjob", "linux", file.to_str().unwrap()]);
    let rt = runtime();
    let uuid = rt.block_on(async {
        let (mut conn, answer) = hello(&server.addr, PeerKind::Worker, 5).await;
        assert_eq!(answer, Some(Command::ServerHello));
        send(
            &mut conn,
            &Command::JobRequested {
                platform: b"linux".to_vec(),
            },
        )
        .await;
        let Some(Command::JobSchedule { uuid, job }) = recv(&mut conn).await else {
            panic!("no job");
        };
        assert_eq!(
            job,
            ScriptJob::new("newjob", script, Some(b"linux".to_vec()))
        );
        // The new client sees the reference worker and its build.
        // (From a thread of its own: `info` runs a runtime of its own.)
        let info = std::thread::scope(|s| s.spawn(|| server.info()).join().unwrap());
        assert!(info.running.iter().any(|r| r.uuid == uuid), "{info:?}");
        assert!(
            info.workers.iter().any(|w| w.running == Some(uuid)),
            "{info:?}"
        );
        send(
            &mut conn,
            &Command::Output {
                uuid,
                output: b"line one".to_vec(),
            },
        )
        .await;
        send(
            &mut conn,
            &Command::OutputTimestamped {
                uuid,
                timestamp: 5_000,
                output: b"line two".to_vec(),
            },
        )
        .await;
        let data = vec![Artifact {
            path: b"bin/out.hvt".to_vec(),
            data: b"unikernel".to_vec(),
        }];
        send(
            &mut conn,
            &Command::JobFinished {
                uuid,
                result: ExecResult::Exited(3),
                data,
            },
        )
        .await;
        // Stored, then the connection ends: one job per connection.
        assert_eq!(recv(&mut conn).await, None);
        uuid
    });
    let records = server.wait_records("newjob", 1);
    assert_eq!(records[0].uuid, *uuid.as_bytes());
    assert_eq!(console(&records[0]), ["line one", "line two"]);
    assert_eq!(records[0].console[0].delta_ns, 5_000);
    assert_eq!(records[0].output.len(), 1);
    assert_eq!(records[0].output[0].path, b"bin/out.hvt");
    assert_eq!(records[0].output[0].data, b"unikernel");
    match server.request(ClientRequest::Results {
        job: Some("newjob".into()),
        limit: 5,
    }) {
        ServerToClient::ResultList(r) => {
            let r: Vec<_> = r.into_iter().map(|e| e.summary).collect();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].uuid, uuid);
            assert_eq!(r[0].outcome, JobOutcome::Exited(3));
        }
        other => panic!("{other:?}"),
    }

    // A reference worker whose connection closes mid-build is lost: the
    // build goes back to the front of the queue.
    server.client_ok(&["execute", "newjob"]);
    rt.block_on(async {
        let (mut conn, _) = hello(&server.addr, PeerKind::Worker, 5).await;
        send(
            &mut conn,
            &Command::JobRequested {
                platform: b"linux".to_vec(),
            },
        )
        .await;
        assert!(matches!(
            recv(&mut conn).await,
            Some(Command::JobSchedule { .. })
        ));
    });
    wait_for("the lost build to be requeued", || {
        let info = server.info();
        (info.running.is_empty()
            && info
                .queues
                .iter()
                .any(|q| q.jobs.iter().any(|j| j == "newjob")))
        .then_some(())
    });
}

#[test]
fn a_job_of_a_reference_client_runs_on_a_new_worker_and_is_observed() {
    let tmp = tempfile::tempdir().unwrap();
    let worker_tmp = tmp.path().join("worker-tmp");
    std::fs::create_dir(&worker_tmp).unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let rt = runtime();
    let script = "#!/bin/sh\necho one\nsleep 1\necho two\nexit 4\n";
    let job = ScriptJob::new("oldjob", script, Some(b"linux".to_vec()));
    let (_, end) = rt.block_on(old_command(
        &server.addr,
        Command::Schedule {
            period: Period::Never,
            job,
        },
    ));
    assert_eq!(end, Command::Success);
    let _worker = server.worker("linux", &worker_tmp, &[]);
    let uuid: Uuid = wait_for("the build to start", || {
        server
            .info()
            .running
            .iter()
            .find(|r| r.job == "oldjob")
            .map(|r| r.uuid)
    });
    let (lines, end) = rt.block_on(old_command(&server.addr, Command::Observe { uuid }));
    assert_eq!(end, Command::Success);
    let lines: Vec<String> = lines
        .iter()
        .map(|c| match c {
            Command::OutputTimestamped {
                uuid: u, output, ..
            } if *u == uuid => String::from_utf8_lossy(output).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(lines, ["one", "two", "exited 4"]);
    let records = server.wait_records("oldjob", 1);
    assert_eq!(records[0].result, ExecResult::Exited(4));
    // An unknown build: the reference's failure.
    let (_, end) = rt.block_on(old_command(
        &server.addr,
        Command::Observe { uuid: Uuid::nil() },
    ));
    assert!(matches!(end, Command::Failure { .. }), "{end:?}");
}

#[test]
fn a_reference_client_sees_the_new_protocols_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let script = "#!/bin/sh\ntrue\n";
    let file = crate::common::script(tmp.path(), "job.sh", script);
    let file = file.to_str().unwrap();
    server.client_ok(&["schedule", "nightly", "linux", file, "--cron", "0 3 * * *"]);
    server.client_ok(&["schedule", "weekly", "freebsd", file, "--period", "weekly"]);
    server.client_ok(&["drop-platform", "gone"]);
    let info = old_info(&server.addr);
    let item = |name: &str| {
        info.schedule
            .iter()
            .find(|i| i.job.name() == name.as_bytes())
            .unwrap_or_else(|| panic!("{name} missing: {info:?}"))
    };
    // A cron job shows with the nearest period (the codec's documented
    // choice), and its exact next run.
    assert_eq!(item("nightly").period, Period::Daily);
    let show = server.show("nightly");
    assert_eq!(
        protocol::message::Timestamp::from_datetime(item("nightly").next.at),
        show.next_run.unwrap()
    );
    assert!(matches!(show.trigger, Trigger::Cron(_)));
    assert_eq!(item("weekly").period, Period::Weekly);
    assert_eq!(
        item("weekly").job,
        protocol::legacy::Job::Script(ScriptJob::new("weekly", script, Some(b"freebsd".to_vec())))
    );
    // Both were queued at once, each on its platform, with its script.
    let platforms: Vec<&[u8]> = info.queues.iter().map(|q| &q.platform[..]).collect();
    assert_eq!(platforms, [&b"freebsd"[..], b"linux"]);
    assert_eq!(info.dropped_platforms, [b"gone".to_vec()]);
}

#[test]
fn an_unknown_reference_version_is_closed_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let rt = runtime();
    for (kind, version) in [
        (PeerKind::Client, 12),
        (PeerKind::Worker, 4),
        (PeerKind::Worker, 13),
    ] {
        let (mut conn, answer) = rt.block_on(hello(&server.addr, kind, version));
        // The reference's behaviour: closed without an answer.
        assert_eq!(answer, None, "{kind:?} {version}");
        let peer = conn.get_mut().local_addr().unwrap().to_string();
        wait_for("the log line", || {
            let log = server.log();
            log.lines()
                .any(|l| {
                    l.contains("unsupported protocol version")
                        && l.contains(&format!("version={version}"))
                        && l.contains(&peer)
                })
                .then_some(())
        });
    }
}

#[test]
fn reference_peers_need_no_tokens_or_a_legacy_peers_network() {
    let tmp = tempfile::tempdir().unwrap();
    let client_token = tmp.path().join("client.token");
    let worker_token = tmp.path().join("worker.token");
    std::fs::write(&client_token, "c-secret\n").unwrap();
    std::fs::write(&worker_token, "w-secret\n").unwrap();
    let rt = runtime();
    for (legacy_peers, admitted) in [
        (None, false),
        (Some("10.0.0.0/8,fd00::/8"), false),
        (Some("10.0.0.0/8,127.0.0.0/8"), true),
    ] {
        let state = tmp
            .path()
            .join(format!("state-{admitted}-{}", legacy_peers.is_some()));
        let server = Server::start_with(&state, |c| {
            c.client_token = Some(token(&client_token));
            c.worker_token = Some(token(&worker_token));
            if let Some(nets) = legacy_peers {
                c.legacy_peers = builder_server::legacy::peers::parse_list(nets).unwrap();
            }
        });
        for kind in [PeerKind::Client, PeerKind::Worker] {
            let version = if kind == PeerKind::Client { 13 } else { 5 };
            let (_, answer) = rt.block_on(hello(&server.addr, kind, version));
            if admitted {
                assert_eq!(
                    answer,
                    Some(Command::ServerHello),
                    "{legacy_peers:?} {kind:?}"
                );
            } else {
                match answer {
                    Some(Command::Failure { message }) => {
                        let message = String::from_utf8_lossy(&message);
                        assert!(message.contains("--legacy-peers"), "{message}");
                    }
                    other => panic!("{legacy_peers:?} {kind:?}: {other:?}"),
                }
                server.wait_log("refused reference peer");
            }
        }
    }
    // A bad network is refused at start-up with the reason.
    let out = std::process::Command::new(bin("builder-server"))
        .args(["--port", "0", "--dir"])
        .arg(tmp.path().join("state-bad"))
        .args(["--legacy-peers", "127.0.0.1/8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --legacy-peers: invalid network \"127.0.0.1/8\""),
        "{stderr}"
    );
}
