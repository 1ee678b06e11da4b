//! Hostile peers against the real server: everything a peer controls is
//! bounded, before its hello and after (issue 9). The peers are written
//! against the protocol crate ([`crate::peer`]), over real TCP.

use crate::peer;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use crate::peer::Dropped;
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::{
    ClientRequest, HelloReply, JobOutcome, OutputLine, ServerToClient, ServerToWorker, Timestamp,
    WorkerMessage,
};
use protocol::record::{Exec, ExecResult};

/// Schedules `name` for the `linux` platform, run once, with a 1 s timeout.
fn schedule(server: &Server, tmp: &Path, name: &str) {
    let script = script(tmp, &format!("{name}.sh"), "echo hi\n");
    server.client_ok(&[
        "schedule",
        name,
        "linux",
        script.to_str().unwrap(),
        "--period",
        "never",
        "--timeout",
        "1",
    ]);
}

fn abort_message(exec: &Exec) -> String {
    match &exec.result {
        ExecResult::Msg(m) => String::from_utf8_lossy(m).into_owned(),
        other => panic!("expected an aborted build, got {other:?}"),
    }
}

#[test]
fn a_worker_sending_only_heartbeats_is_dropped_and_the_build_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.limits.timeout_grace = Duration::from_secs(1);
    });
    schedule(&server, tmp.path(), "stuck");
    let dropped = runtime().block_on(async {
        let mut conn = peer::worker(&server.addr, "linux").await;
        let job = peer::take_job(&mut conn).await;
        assert_eq!(job.timeout_secs, 1);
        conn.send(&WorkerMessage::Started {
            uuid: job.uuid,
            at: Timestamp::now(),
        })
        .await
        .unwrap();
        // Never a result: only heartbeats, which keep the worker "alive".
        peer::heartbeats_until_dropped(&mut conn, Duration::from_millis(50)).await
    });
    match dropped {
        Dropped::Failure(reason) => assert!(reason.contains("--timeout-grace"), "{reason}"),
        Dropped::Silently => panic!("dropped without a reason"),
    }
    let records = server.wait_records("stuck", 1);
    assert_eq!(abort_message(&records[0]), "timeout");
    assert!(server.info().running.is_empty());
}

#[test]
fn too_many_artifacts_abort_the_build_and_remove_its_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    schedule(&server, tmp.path(), "many");
    let (uuid, sent) = runtime().block_on(async {
        let mut conn = peer::worker(&server.addr, "linux").await;
        let job = peer::take_job(&mut conn).await;
        // 100 000 one-byte artifacts, as fast as the socket takes them,
        // until the server hangs up (default --max-artifacts: 10 000).
        let mut sent = 0;
        'flood: for i in 0..100_000u32 {
            let start = WorkerMessage::ArtifactStart {
                uuid: job.uuid,
                path: format!("a{i}").into_bytes(),
                len: 1,
            };
            let chunk = WorkerMessage::ArtifactChunk {
                uuid: job.uuid,
                data: vec![b'x'],
            };
            for msg in [start, chunk] {
                if conn.feed(&msg).await.is_err() {
                    break 'flood;
                }
            }
            if i % 500 == 0 && conn.flush().await.is_err() {
                break;
            }
            sent = i + 1;
        }
        if sent == 100_000 {
            let _ = conn
                .send(&WorkerMessage::Finished {
                    uuid: job.uuid,
                    finished: Timestamp::now(),
                    outcome: JobOutcome::Exited(0),
                })
                .await;
        }
        (job.uuid, sent)
    });
    let records = server.wait_records("many", 1);
    let message = abort_message(&records[0]);
    assert!(
        message.contains("more than 10000 artifacts (--max-artifacts)"),
        "{message} (sent {sent})"
    );
    assert!(records[0].output.is_empty());
    let build = server.dir.join("many").join(uuid.to_string());
    assert!(
        !build.join("artifacts.partial").exists(),
        "spool left behind"
    );
}

#[test]
fn an_artifact_past_max_artifact_bytes_aborts_the_build_and_removes_its_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.limits.max_artifact_bytes = 1_000_000;
    });
    schedule(&server, tmp.path(), "huge");
    let uuid = runtime().block_on(async {
        let mut conn = peer::worker(&server.addr, "linux").await;
        let job = peer::take_job(&mut conn).await;
        // Announces 2^62 bytes and streams until the server hangs up.
        conn.send(&WorkerMessage::ArtifactStart {
            uuid: job.uuid,
            path: b"huge.bin".to_vec(),
            len: 1 << 62,
        })
        .await
        .unwrap();
        let chunk = WorkerMessage::ArtifactChunk {
            uuid: job.uuid,
            data: vec![0; protocol::codec::CHUNK_SIZE],
        };
        let mut sent = 0u64;
        while conn.send(&chunk).await.is_ok() {
            sent += protocol::codec::CHUNK_SIZE as u64;
            assert!(sent < 1 << 30, "the server took 1 GiB of a 1 MB limit");
        }
        job.uuid
    });
    let records = server.wait_records("huge", 1);
    let message = abort_message(&records[0]);
    assert!(
        message.contains("exceed 1000000 bytes (--max-artifact-bytes)"),
        "{message}"
    );
    assert!(records[0].output.is_empty());
    let build = server.dir.join("huge").join(uuid.to_string());
    assert!(
        !build.join("artifacts.partial").exists(),
        "spool left behind"
    );
}

#[test]
fn times_lines_and_messages_from_a_worker_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let before = chrono::Utc::now();
    schedule(&server, tmp.path(), "liar");
    let huge_message = "m".repeat(1 << 20);
    runtime().block_on(async {
        let mut conn = peer::worker(&server.addr, "linux").await;
        let job = peer::take_job(&mut conn).await;
        let uuid = job.uuid;
        // Started in 1677, a 1 MiB console line, finished in 2262 with a
        // 1 MiB abort message.
        conn.send(&WorkerMessage::Started {
            uuid,
            at: Timestamp(i64::MIN),
        })
        .await
        .unwrap();
        conn.send(&WorkerMessage::Console {
            uuid,
            lines: vec![OutputLine {
                delta_ns: 1,
                data: vec![b'l'; 1 << 20],
            }],
        })
        .await
        .unwrap();
        conn.send(&WorkerMessage::Finished {
            uuid,
            finished: Timestamp(i64::MAX),
            outcome: JobOutcome::Aborted(huge_message.clone()),
        })
        .await
        .unwrap();
        loop {
            match conn.recv::<ServerToWorker>().await.unwrap() {
                Some(ServerToWorker::Stored { .. }) => break,
                Some(ServerToWorker::Heartbeat) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    let after = chrono::Utc::now();
    let exec = &server.wait_records("liar", 1)[0];
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    assert!(
        ms(before) <= ms(exec.started)
            && exec.started <= exec.finished
            && ms(exec.finished) <= ms(after),
        "{} .. {} not within {before} .. {after}",
        exec.started,
        exec.finished
    );
    let lines = console(exec);
    assert_eq!(lines.len(), 2, "the line and a note");
    assert_eq!(lines[0].len(), protocol::message::MAX_CONSOLE_LINE);
    assert!(
        lines[1].contains(&format!("cut to 65536 of its {} bytes", 1 << 20)),
        "{}",
        lines[1]
    );
    let message = abort_message(exec);
    assert!(message.len() < 5000, "{} bytes", message.len());
    assert!(message.starts_with("mmmm"));
    assert!(
        message.ends_with(&format!(
            "[cut: {} bytes, over the server's limit of 4096]",
            1 << 20
        )),
        "{}",
        &message[message.len() - 80..]
    );
    // The results index agrees with the record.
    match server.request(ClientRequest::Results {
        job: Some("liar".into()),
        limit: 1,
    }) {
        ServerToClient::ResultList(r) => {
            let r: Vec<_> = r.into_iter().map(|e| e.summary).collect();
            let r = &r[0];
            let ms = |t: Timestamp| t.0.div_euclid(1_000_000);
            assert_eq!(ms(r.started), ms(Timestamp::from_datetime(exec.started)));
            assert_eq!(ms(r.finished), ms(Timestamp::from_datetime(exec.finished)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_worker_sending_an_undecodable_frame_is_told_why() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let dropped = runtime().block_on(async {
        let mut conn = peer::worker(&server.addr, "linux").await;
        // A frame whose payload is no WorkerMessage.
        conn.send(&protocol::message::ServerToClient::Failure {
            reason: "\u{ffff}".repeat(10),
        })
        .await
        .unwrap();
        peer::read_until_closed(&mut conn).await
    });
    match dropped {
        Dropped::Failure(reason) => assert!(reason.starts_with("bad frame: "), "{reason}"),
        Dropped::Silently => panic!("closed without a reason"),
    }
}

#[test]
fn before_the_hello_only_a_small_frame_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let refused = runtime().block_on(async {
        let mut conn = Connection::connect(&server.addr, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        // A "hello" of 100 KB: far below --max-frame, far above a hello.
        conn.send(&vec![0u8; 100_000]).await.unwrap();
        tokio::time::timeout(DEADLINE, conn.recv::<HelloReply>())
            .await
            .expect("an answer in time")
            .unwrap()
    });
    match refused {
        Some(HelloReply::Refused { reason }) => {
            assert!(
                reason.contains("exceeds the limit of 65536 bytes"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_connections_announcing_16_mib_do_not_cost_16_mib() {
    const CONNECTIONS: usize = 200;
    const SENT: usize = 2 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let limit = CONNECTIONS.to_string();
    // The binary: the server's own memory is measured.
    let mut server = Server::binary(
        &tmp.path().join("state"),
        &[
            "--max-unauthenticated",
            &limit,
            "--max-unauthenticated-per-ip",
            &limit,
            "--hello-timeout",
            "60",
        ],
    );
    let pid = server.pid() as u32;
    let idle = peer::rss(pid);
    let mut held = Vec::new();
    let body = vec![0u8; SENT];
    for _ in 0..CONNECTIONS {
        let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A header announcing 16 MiB, then 2 MiB of it (or as much as the
        // server takes before it hangs up).
        let _ = stream
            .write_all(&(DEFAULT_MAX_FRAME as u64).to_be_bytes())
            .and_then(|()| stream.write_all(&body));
        held.push(stream);
    }
    let rss = peer::rss(pid);
    eprintln!(
        "server RSS: {} MiB idle, {} MiB with {CONNECTIONS} connections announcing 16 MiB",
        idle >> 20,
        rss >> 20
    );
    // Taking what was sent would be 400 MiB; reserving what was announced,
    // 3.2 GiB. A generous bound that neither reaches:
    assert!(
        rss < (CONNECTIONS as u64) << 20,
        "server RSS {} MiB",
        rss >> 20
    );
    // And the server still serves.
    server.client_ok(&["info"]);
    drop(held);
}

#[test]
fn idle_connections_that_never_say_hello_do_not_lock_clients_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.max_connections = 5;
        c.hello_timeout = Duration::from_secs(60);
    });
    let rt = runtime();
    let (held, refused) = rt.block_on(async {
        // 300 idle connections from another address: far past
        // --max-connections, and past the per-address cap (default 64).
        let mut held = Vec::new();
        for _ in 0..300 {
            held.push(
                peer::raw_from(Ipv4Addr::new(127, 0, 0, 2), &server.addr)
                    .await
                    .unwrap(),
            );
        }
        // The newest ones evicted the oldest, which are told why.
        let first = held.remove(0);
        let mut first = Connection::new(first, DEFAULT_MAX_FRAME, "first".into());
        let refused = tokio::time::timeout(DEADLINE, first.recv::<HelloReply>())
            .await
            .expect("the refusal in time")
            .unwrap();
        (held, refused)
    });
    match refused {
        Some(HelloReply::Refused { reason }) => assert!(
            reason.contains("too many connections from 127.0.0.2"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // The real client, from 127.0.0.1, is served while they wait.
    let out = server.client_ok(&["info"]);
    assert!(!out.stdout.is_empty());
    // Even more authenticated clients than the silent ones' budget.
    rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(client_conn(&server.addr).await);
        }
        for c in &mut clients {
            c.send(&ClientRequest::Info).await.unwrap();
            assert!(matches!(
                c.recv::<ServerToClient>().await.unwrap(),
                Some(ServerToClient::InfoPart(_) | ServerToClient::InfoEnd { .. })
            ));
        }
    });
    drop(held);
}

#[test]
fn a_client_that_sends_half_a_frame_is_closed_but_an_idle_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.frame_timeout = Duration::from_secs(1);
    });
    runtime().block_on(async {
        let mut idle = client_conn(&server.addr).await;
        let mut half = client_conn(&server.addr).await;
        {
            use tokio::io::AsyncWriteExt;
            let stream = half.get_mut();
            stream.write_all(&100u64.to_be_bytes()).await.unwrap();
            stream.write_all(b"ten bytes.").await.unwrap();
        }
        let mut failure = None;
        loop {
            match tokio::time::timeout(DEADLINE, half.recv::<ServerToClient>())
                .await
                .expect("the half-frame client is closed within the read timeout")
            {
                Ok(Some(ServerToClient::Failure { reason })) => failure = Some(reason),
                Ok(Some(other)) => panic!("{other:?}"),
                Ok(None) | Err(_) => break,
            }
        }
        let failure = failure.expect("a reason before the close");
        assert!(failure.contains("no complete frame within"), "{failure}");
        // The idle client waited as long, between frames: still served.
        idle.send(&ClientRequest::Info).await.unwrap();
        assert!(matches!(
            idle.recv::<ServerToClient>().await.unwrap(),
            Some(ServerToClient::InfoPart(_) | ServerToClient::InfoEnd { .. })
        ));
    });
}
