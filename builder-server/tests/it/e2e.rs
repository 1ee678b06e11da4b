//! The farm end to end: a real server (in this process, or the binary
//! where it is killed or signalled), real worker and client processes over
//! real TCP on 127.0.0.1 (port 0), with a real SQLite state directory.

use crate::common::*;
use protocol::message::{ClientRequest, HelloReply, JobOutcome, ServerToClient};
use protocol::record::ExecResult;
use protocol::signal::Signal;

#[test]
fn a_scheduled_job_runs_and_its_record_holds_console_and_artifacts() {
    let (tmp, server) = setup();
    let script = script(
        tmp.path(),
        "build.sh",
        r#"#!/bin/sh
echo "line one"
echo "to stderr" >&2
i=0; while [ $i -lt 100 ]; do echo "n $i"; i=$((i+1)); done
mkdir -p out/sub
echo nested > out/sub/file.txt
i=0; while [ $i -lt 256 ]; do printf '%b' "\\0$(printf %o $i)"; i=$((i+1)); done > bytes.bin
printf 'no newline at the end'
"#,
    );
    server.client_ok(&[
        "schedule",
        "hello",
        "linux",
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let exec = server.wait_records("hello", 1).remove(0);
    assert!(
        worker.wait_exit().success(),
        "worker log:\n{}",
        worker.log()
    );

    assert_eq!(exec.result, ExecResult::Exited(0));
    assert_eq!(exec.job.name, b"hello");
    assert_eq!(exec.job.platform.as_deref(), Some(&b"linux"[..]));
    assert_eq!(exec.job.script, std::fs::read(&script).unwrap());
    let mut expected = vec!["line one".to_owned(), "to stderr".to_owned()];
    expected.extend((0..100).map(|i| format!("n {i}")));
    expected.push("no newline at the end".into());
    assert_eq!(console(&exec), expected);
    let deltas: Vec<i64> = exec.console.iter().rev().map(|l| l.delta_ns).collect();
    assert!(deltas.windows(2).all(|w| w[0] <= w[1]), "deltas in order");
    assert!(exec.finished >= exec.started);

    let mut artifacts: Vec<(String, Vec<u8>)> = exec
        .output
        .iter()
        .map(|a| (String::from_utf8(a.path.clone()).unwrap(), a.data.clone()))
        .collect();
    artifacts.sort();
    assert_eq!(
        artifacts,
        vec![
            ("bytes.bin".to_owned(), (0..=255u8).collect::<Vec<u8>>()),
            ("out/sub/file.txt".to_owned(), b"nested\n".to_vec()),
        ]
    );
    // The job directory is gone.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("worker-tmp"))
            .unwrap()
            .count(),
        0
    );
    // The result is indexed.
    match server.request(ClientRequest::Results {
        job: None,
        limit: 10,
    }) {
        ServerToClient::ResultList(r) => {
            let r: Vec<_> = r.into_iter().map(|e| e.summary).collect();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].job, "hello");
            assert_eq!(r[0].outcome, JobOutcome::Exited(0));
            assert_eq!(r[0].uuid, exec.uuid_typed());
        }
        other => panic!("{other:?}"),
    }
}

trait UuidOf {
    fn uuid_typed(&self) -> uuid::Uuid;
}
impl UuidOf for protocol::record::Exec {
    fn uuid_typed(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }
}

#[test]
fn exit_codes_signals_and_timeouts_are_recorded() {
    let (tmp, server) = setup();
    let pidfile = tmp.path().join("grandchild.pid");
    let jobs = [
        ("exit3", "#!/bin/sh\necho bye\nexit 3\n".to_owned(), None),
        (
            "killed",
            "#!/bin/sh\necho before\nkill -KILL $$\n".to_owned(),
            None,
        ),
        (
            "slow",
            format!(
                "#!/bin/sh\nsleep 1000 &\necho $! > {}\necho waiting\nwait\n",
                pidfile.display()
            ),
            Some("1"),
        ),
    ];
    for (name, body, timeout) in &jobs {
        let path = script(tmp.path(), name, body);
        let mut args = vec![
            "schedule",
            name,
            "linux",
            path.to_str().unwrap(),
            "--period",
            "never",
        ];
        if let Some(t) = timeout {
            args.extend(["--timeout", t]);
        }
        server.client_ok(&args);
    }
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &["--loop"]);

    let exit3 = server.wait_records("exit3", 1).remove(0);
    assert_eq!(exit3.result, ExecResult::Exited(3));
    assert_eq!(console(&exit3), ["bye"]);

    let killed = server.wait_records("killed", 1).remove(0);
    assert_eq!(
        killed.result,
        ExecResult::Signalled(Signal::Kill.portable())
    );
    assert_eq!(killed.result, ExecResult::Signalled(-7));

    let slow = server.wait_records("slow", 1).remove(0);
    assert_eq!(slow.result, ExecResult::Msg(b"timeout".to_vec()));
    assert_eq!(console(&slow), ["waiting"]);
    assert!(slow.output.is_empty(), "a timed-out job sends no artifacts");
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the grandchild to be gone", || {
        (!alive(grandchild)).then_some(())
    });
}

/// A script that blocks the first time it runs (leaving its pid in
/// `pidfile`) and succeeds the second time.
fn twice_script(tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mark = tmp.join("first-attempt");
    let pidfile = tmp.join("job.pid");
    let body = format!(
        "#!/bin/sh\necho attempt\nif [ -e {mark} ]; then echo second; exit 0; fi\ntouch {mark}\necho $$ > {pid}\nexec sleep 600\n",
        mark = mark.display(),
        pid = pidfile.display()
    );
    (script(tmp, "twice.sh", &body), pidfile)
}

fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn a_job_whose_worker_dies_is_requeued_under_its_uuid_and_keeps_its_observer() {
    let (tmp, server) = setup();
    let (script, pidfile) = twice_script(tmp.path());
    server.client_ok(&[
        "schedule",
        "twice",
        "linux",
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
    let mut first = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let pid: i32 = wait_for("the job to start", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let uuid = server.info().running[0].uuid;
    let mut observer = server.spawn_client(&["observe", &uuid.to_string()]);
    server.wait_log("observer attached");
    first.kill();
    // The worker's watchdog takes the job's group along; this is only in
    // case it did not, so that the test shows the requeue either way.
    kill_group(pid);
    wait_for("the job to be requeued", || {
        let info = server.info();
        (info.running.is_empty() && info.queues.iter().any(|q| q.jobs == ["twice"])).then_some(())
    });
    let _second = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let exec = server.wait_records("twice", 1).remove(0);
    assert_eq!(exec.result, ExecResult::Exited(0));
    assert_eq!(console(&exec), ["attempt", "second"]);
    assert_eq!(exec.uuid_typed(), uuid, "one UUID for the whole build");

    wait_for("the observer to exit", || observer.try_wait().unwrap());
    let out = observer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("requeued (attempt 2)"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("second"),
        "the observer follows the second attempt"
    );
    let results = server.client_ok(&["--json", "results", "--job", "twice"]);
    let results = String::from_utf8_lossy(&results.stdout);
    assert!(results.contains("\"attempts\":2"), "{results}");
}

#[test]
fn a_server_killed_mid_job_requeues_it_on_restart_and_keeps_the_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let (script, pidfile) = twice_script(tmp.path());
    let mut server = Server::binary(&state, &[]);
    server.client_ok(&[
        "schedule",
        "twice",
        "linux",
        script.to_str().unwrap(),
        "--period",
        "daily",
    ]);
    let other = crate::common::script(tmp.path(), "other.sh", "true\n");
    server.client_ok(&[
        "schedule",
        "other",
        "freebsd",
        other.to_str().unwrap(),
        "--period",
        "weekly",
    ]);
    let before = server.info();
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let pid: i32 = wait_for("the job to start", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });

    server.kill();
    // The worker notices and kills its job.
    let status = worker.wait_exit();
    assert!(
        !status.success(),
        "a worker that lost its server mid-job fails"
    );
    wait_for("the job's process group to be gone", || {
        (!alive(pid)).then_some(())
    });

    let server = Server::start(&state);
    let after = server.info();
    assert_eq!(after.schedule, before.schedule, "schedule intact");
    assert!(after.running.is_empty());
    let linux = after
        .queues
        .iter()
        .find(|q| q.platform == "linux")
        .expect("linux queue");
    assert_eq!(linux.jobs, ["twice"], "the interrupted job is queued again");
    let freebsd = after
        .queues
        .iter()
        .find(|q| q.platform == "freebsd")
        .expect("freebsd queue");
    assert_eq!(freebsd.jobs, ["other"], "queued work survives");

    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let exec = server.wait_records("twice", 1).remove(0);
    assert_eq!(exec.result, ExecResult::Exited(0));
    assert_eq!(console(&exec), ["attempt", "second"]);
}

#[test]
fn an_observer_gets_every_line_in_order_and_the_exit_status() {
    let (tmp, server) = setup();
    let go = tmp.path().join("go");
    let body = format!(
        "#!/bin/sh\ni=0; while [ $i -lt 500 ]; do echo \"line $i\"; i=$((i+1)); done\nwhile [ ! -e {go} ]; do sleep 0.02; done\nwhile [ $i -lt 1000 ]; do echo \"line $i\"; i=$((i+1)); done\nexit 3\n",
        go = go.display()
    );
    let path = script(tmp.path(), "observed.sh", &body);
    server.client_ok(&[
        "schedule",
        "observed",
        "linux",
        path.to_str().unwrap(),
        "--period",
        "never",
    ]);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let uuid = wait_for("the build to run", || {
        server.info().running.first().map(|r| r.uuid)
    });

    let observer = server.spawn_client(&["observe", &uuid.to_string()]);
    std::fs::write(&go, "").unwrap();
    let out = observer.wait_with_output().unwrap();
    let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A finished build is replayed from its record.
    let out = server.client(&["observe", &uuid.to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_stalled_observer_does_not_slow_the_job() {
    let (tmp, server) = setup();
    let go = tmp.path().join("go");
    // 200k lines of ~100 bytes: ~20 MB, far more than socket buffers hold.
    let body = format!(
        "#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.02; done\nyes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 200000\n",
        go = go.display()
    );
    let path = script(tmp.path(), "loud.sh", &body);
    server.client_ok(&[
        "schedule",
        "loud",
        "linux",
        path.to_str().unwrap(),
        "--period",
        "never",
    ]);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let uuid = wait_for("the build to run", || {
        server.info().running.first().map(|r| r.uuid)
    });

    let rt = runtime();
    // Subscribe, read the start, then never read again.
    let _stalled = rt.block_on(async {
        let mut conn = client_conn(&server.addr).await;
        conn.send(&ClientRequest::Observe { uuid }).await.unwrap();
        match conn.recv::<ServerToClient>().await.unwrap() {
            Some(ServerToClient::ObserveStart(h)) => assert_eq!(h.uuid, uuid),
            other => panic!("{other:?}"),
        }
        conn
    });
    std::fs::write(&go, "").unwrap();
    let exec = server.wait_records("loud", 1).remove(0);
    assert_eq!(exec.result, ExecResult::Exited(0));
    assert_eq!(exec.console.len(), 200_000);
    // The server still answers others while that observer is stuck.
    assert!(server.info().running.is_empty());
}

#[test]
fn a_peer_that_does_not_say_hello_is_refused_and_others_are_served() {
    let (_tmp, server) = setup();
    let rt = runtime();
    rt.block_on(async {
        // Garbage first frame.
        let mut conn = protocol::codec::Connection::connect(&server.addr, 1 << 20)
            .await
            .unwrap();
        conn.send(&"not a hello".to_owned()).await.unwrap();
        match conn.recv::<HelloReply>().await.unwrap() {
            Some(HelloReply::Refused { reason }) => assert!(reason.contains("hello"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(conn.recv_frame().await.unwrap().is_none(), "then closed");

        // An oversized frame header: refused without the body being sent.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        raw.write_all(&(1u64 << 40).to_be_bytes()).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(DEADLINE, raw.read_to_end(&mut reply))
            .await
            .expect("server closes the connection")
            .unwrap();
        let reply: HelloReply = protocol::message::decode(&reply[8..]).unwrap();
        assert!(matches!(reply, HelloReply::Refused { reason } if reason.contains("exceeds")));
    });
    assert!(server.info().schedule.is_empty());
}

#[test]
fn tokens_keep_clients_and_workers_apart() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let client_token = tmp.path().join("client.token");
    let worker_token = tmp.path().join("worker.token");
    std::fs::write(&client_token, "c-secret\n").unwrap();
    std::fs::write(&worker_token, "  w-secret \n").unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| {
        c.client_token = Some(token(&client_token));
        c.worker_token = Some(token(&worker_token));
    });
    let client = |token: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(bin("builder-client"));
        cmd.args(["-r", &server.addr])
            .args(args)
            .env_remove("BUILDER_TOKEN");
        if let Some(t) = token {
            cmd.env("BUILDER_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = client(None, &["info"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a token is required"));
    // A worker token cannot change the schedule.
    let path = script(tmp.path(), "job.sh", "echo ok\n");
    let out = client(
        Some("w-secret"),
        &["schedule", "job", "linux", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad token"));
    let out = client(
        Some("c-secret"),
        &["schedule", "job", "linux", path.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client token does not make a worker.
    let mut impostor = server.worker(
        "linux",
        &tmp.path().join("worker-tmp"),
        &["--token-file", client_token.to_str().unwrap()],
    );
    assert!(!impostor.wait_exit().success());
    assert!(impostor.log().contains("bad token"), "{}", impostor.log());
    let mut worker = server.worker(
        "linux",
        &tmp.path().join("worker-tmp"),
        &["--token-file", worker_token.to_str().unwrap()],
    );
    assert!(worker.wait_exit().success(), "{}", worker.log());
    assert_eq!(server.wait_records("job", 1).len(), 1);
}

#[test]
fn listening_beyond_loopback_without_tokens_needs_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("builder-server"))
        .args(["--ip", "0.0.0.0", "--port", "0", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn sigterm_stops_the_server_cleanly_and_a_second_server_cannot_share_its_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::binary(&tmp.path().join("state"), &[]);
    let out = std::process::Command::new(bin("builder-server"))
        .args(["--port", "0", "--dir"])
        .arg(&server.dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another builder-server"));

    let path = script(tmp.path(), "job.sh", "true\n");
    server.client_ok(&["schedule", "kept", "linux", path.to_str().unwrap()]);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let server = Server::start(&server.dir.clone());
    assert_eq!(server.info().schedule.len(), 1);
}

#[test]
fn a_console_over_the_limit_keeps_its_start_and_end() {
    let (tmp, server) = setup_with(|c| c.max_console = 20000);
    let path = script(
        tmp.path(),
        "loud.sh",
        "#!/bin/sh\ni=0; while [ $i -lt 5000 ]; do echo \"line $i\"; i=$((i+1)); done\necho the error at the end\nexit 2\n",
    );
    server.client_ok(&[
        "schedule",
        "loud",
        "linux",
        path.to_str().unwrap(),
        "--period",
        "never",
    ]);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let exec = server.wait_records("loud", 1).remove(0);
    assert_eq!(exec.result, ExecResult::Exited(2));
    let lines = console(&exec);
    assert!(lines.len() < 1000, "bounded: {} lines kept", lines.len());
    assert_eq!(lines[0], "line 0");
    assert_eq!(lines.last().unwrap(), "the error at the end");
    let marker = lines
        .iter()
        .find(|l| l.starts_with("[builder: "))
        .expect("a marker line");
    assert!(marker.contains("console lines"), "{marker}");
    // Kept + dropped = everything the job printed.
    let dropped: usize = marker["[builder: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lines.len() - 1 + dropped, 5001);
}

#[test]
fn connections_over_the_limit_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| c.max_connections = 1);
    let rt = runtime();
    rt.block_on(async {
        let held = client_conn(&server.addr).await;
        // The limit counts connections whose hello was accepted: the
        // second is turned away once it says hello.
        let mut second = protocol::codec::Connection::connect(&server.addr, 1 << 20)
            .await
            .unwrap();
        second
            .send(&protocol::message::Hello {
                version: protocol::message::PROTOCOL_VERSION,
                role: protocol::message::Role::Client,
                token: None,
                software: "test".into(),
            })
            .await
            .unwrap();
        match second.recv::<HelloReply>().await.unwrap() {
            Some(HelloReply::Refused { reason }) => assert!(reason.contains("busy"), "{reason}"),
            other => panic!("{other:?}"),
        }
        drop(held);
    });
    // Once the first connection is gone, others are served again.
    wait_for("a free connection", || {
        let out = server.client(&["info"]);
        out.status.success().then_some(())
    });
}

#[test]
fn a_record_stored_but_not_indexed_before_a_crash_is_indexed_not_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let db_path = builder_server::layout::db_path(&state);
    std::fs::create_dir_all(db_path.parent().unwrap()).unwrap();
    // The state a crash between "record fsynced" and "result committed"
    // leaves: the build still marked running, its full record on disk.
    let db = builder_server::db::Db::open(&db_path).unwrap();
    block(db.enqueue("linux", "crashy", "echo hi\n", 60, false)).unwrap();
    let running = block(db.claim("linux", "w", protocol::message::Timestamp::now()))
        .unwrap()
        .unwrap();
    drop(db);
    let exec = protocol::record::Exec {
        job: protocol::record::ScriptJob::new("crashy", "echo hi\n", Some(b"linux".to_vec())),
        uuid: *running.uuid.as_bytes(),
        console: vec![protocol::record::ConsoleLine {
            delta_ns: 5,
            data: b"hi".to_vec(),
        }],
        started: chrono::Utc::now(),
        finished: chrono::Utc::now(),
        time_forms: Default::default(),
        result: ExecResult::Exited(0),
        output: Vec::new(),
    };
    let dir = state.join("crashy").join(running.uuid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("full"), exec.encode()).unwrap();

    let server = Server::start(&state);
    let info = server.info();
    assert!(info.running.is_empty());
    assert!(
        info.queues.iter().all(|q| q.jobs.is_empty()),
        "not run again"
    );
    match server.request(ClientRequest::Results {
        job: None,
        limit: 10,
    }) {
        ServerToClient::ResultList(r) => {
            let r: Vec<_> = r.into_iter().map(|e| e.summary).collect();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].uuid, running.uuid);
            assert_eq!(r[0].outcome, JobOutcome::Exited(0));
        }
        other => panic!("{other:?}"),
    }
}

/// Bytes of the files in `dir` (none if it is not there).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.map(|e| e.unwrap().metadata().unwrap().len()).sum()
    })
}

#[test]
fn a_running_builds_console_lives_in_its_spool_and_a_late_observer_gets_it_all() {
    let (tmp, server) = setup();
    let go = tmp.path().join("go");
    // 100 000 lines of 100 bytes (10 MB) before the pause: ten times what
    // the server keeps in memory of a console.
    let body = format!(
        "#!/bin/sh\nyes 012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678 | head -n 100000\nwhile [ ! -e {go} ]; do sleep 0.02; done\necho after\n",
        go = go.display()
    );
    let path = script(tmp.path(), "loud.sh", &body);
    server.client_ok(&[
        "schedule",
        "loud",
        "linux",
        path.to_str().unwrap(),
        "--period",
        "never",
    ]);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let uuid = wait_for("the build to run", || {
        server.info().running.first().map(|r| r.uuid)
    });
    let build_dir = server.dir.join("loud").join(uuid.to_string());
    let spool = build_dir.join("console.1.partial");
    // Each line takes 105 bytes in the spool (as in the record).
    wait_for("the console in its spool", || {
        (dir_bytes(&spool) >= 100_000 * 105).then_some(())
    });

    // A late observer: the first lines left the server's memory long ago.
    let observer = server.spawn_client(&["observe", &uuid.to_string()]);
    std::fs::write(&go, "").unwrap();
    let out = observer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown: Vec<&str> = stdout.lines().collect();
    let yes = shown.iter().filter(|l| l.starts_with("0123456789")).count();
    assert_eq!(yes, 100_000, "every early line, from the spool");
    assert!(shown.contains(&"after"), "and the live one");
    assert!(!stdout.contains("dropped"), "nothing skipped");

    let exec = server.wait_records("loud", 1).remove(0);
    assert_eq!(exec.console.len(), 100_001);
    // The record is written: its spools are gone.
    let left: Vec<String> = std::fs::read_dir(&build_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["full"]);
}
