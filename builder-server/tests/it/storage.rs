//! Storage failures, through the real client and worker: job names that
//! were the server's own file names, a result folder that cannot be
//! written, a full disk, and the move of an old-layout state directory.
//! Where a test kills the server or reads its exit status, the server is
//! the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use protocol::message::{ClientRequest, JobOutcome, ResultSummary, ServerToClient};
use protocol::record::ExecResult;

/// Every result the server lists for `job`.
fn results(server: &Server, job: &str) -> Vec<ResultSummary> {
    match server.request(ClientRequest::Results {
        job: Some(job.into()),
        limit: 100,
    }) {
        ServerToClient::ResultList(r) => r.into_iter().map(|e| e.summary).collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Waits until `job` has `n` results and returns them.
fn wait_results(server: &Server, job: &str, n: usize) -> Vec<ResultSummary> {
    wait_for(&format!("{n} results of {job}"), || {
        let r = results(server, job);
        (r.len() >= n).then_some(r)
    })
}

fn schedule(server: &Server, tmp: &Path, name: &str, body: &str) {
    let file = script(tmp, &format!("{name}.sh"), body);
    server.client_ok(&[
        "schedule",
        name,
        "linux",
        file.to_str().unwrap(),
        "--period",
        "never",
    ]);
}

fn aborted_reason(r: &ResultSummary) -> &str {
    match &r.outcome {
        JobOutcome::Aborted(reason) => reason,
        other => panic!("{} is not aborted: {other:?}", r.job),
    }
}

#[test]
fn jobs_named_like_the_servers_files_are_run_stored_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let names = ["lock", "state.db", "state.db-wal", "state.db-shm"];
    let mut server = Server::binary(&state, &[]);
    for name in names {
        schedule(&server, tmp.path(), name, &format!("echo I am {name}\n"));
    }
    let mut worker = server.worker("linux", tmp.path(), &["--loop"]);
    for name in names {
        let records = server.wait_records(name, 1);
        assert_eq!(records[0].result, ExecResult::Exited(0), "{name}");
        assert_eq!(console(&records[0]), [format!("I am {name}")]);
    }
    worker.kill();
    server.kill();

    let server = Server::start(&state);
    for name in names {
        let r = results(&server, name);
        assert_eq!(r.len(), 1, "{name}");
        assert_eq!(r[0].outcome, JobOutcome::Exited(0), "{name}");
    }
}

/// A process whose stdout and stderr are collected as they come.
struct Output {
    child: std::process::Child,
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Output {
    fn spawn(mut cmd: Command) -> Output {
        use std::io::Read;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut stream in streams {
            let sink = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Output { child, text }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits for the exit and for everything it printed.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = wait_for("the process to exit", || self.child.try_wait().unwrap());
        // The readers see end-of-file once the process is gone.
        let text = wait_for("its output", || {
            (std::sync::Arc::strong_count(&self.text) == 1).then(|| self.text())
        });
        (status, text)
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a directory immutable (`chattr +i`) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    /// Call [`needs_root`] first: only root can.
    fn new(dir: &Path) -> Immutable {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("chattr").arg("+i").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "chattr +i {} failed (this test needs root and chattr): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_result_folder_ends_that_build_only() {
    let tmp = tempfile::tempdir().unwrap();
    if !needs_root("chattr +i (a folder even root cannot write)") {
        return;
    }
    let state = tmp.path().join("state");
    let mut server = Server::binary(&state, &[]);
    let release = tmp.path().join("release");
    schedule(
        &server,
        tmp.path(),
        "stuck",
        &format!(
            "echo waiting\nwhile [ ! -e {} ]; do sleep 0.05; done\necho done\n",
            release.display()
        ),
    );
    let _immutable = Immutable::new(&state.join("stuck"));
    let mut worker = server.worker("linux", tmp.path(), &[]);
    let uuid = wait_for("the build to run", || {
        server.info().running.first().map(|r| r.uuid)
    });
    // An observer following the build live: it has the first line.
    let mut observer = Command::new(bin("builder-client"));
    observer.args(["-r", &server.addr, "observe", &uuid.to_string()]);
    let observer = Output::spawn(observer);
    wait_for("the observer to see the build", || {
        observer.text().contains("waiting").then_some(())
    });
    std::fs::write(&release, b"").unwrap();
    let (status, shown) = observer.finish();
    assert!(shown.contains("cannot store the build"), "{shown}");
    assert!(!status.success());

    let r = wait_results(&server, "stuck", 1);
    assert_eq!(r.len(), 1);
    let reason = aborted_reason(&r[0]);
    assert!(reason.contains("cannot store the build"), "{reason}");
    assert!(
        reason.contains("ermission denied") || reason.contains("not permitted"),
        "{reason}"
    );
    assert!(
        server.info().queues.iter().all(|q| q.jobs.is_empty()),
        "not requeued"
    );
    assert!(server.records("stuck").is_empty());
    worker.wait_exit();

    // Another job is served as usual.
    schedule(&server, tmp.path(), "fine", "echo fine\n");
    let mut worker = server.worker("linux", tmp.path(), &[]);
    assert_eq!(
        server.wait_records("fine", 1)[0].result,
        ExecResult::Exited(0)
    );
    worker.wait_exit();

    // A restart works, the build is still recorded.
    server.kill();
    let server = Server::start(&state);
    let r = results(&server, "stuck");
    assert_eq!(r.len(), 1);
    assert!(aborted_reason(&r[0]).contains("cannot store the build"));
    // Observing it later still tells why.
    let out = server.client(&["observe", &uuid.to_string()]);
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("cannot store the build"), "{shown}");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when not root and [`SKIP_ROOT`] says to skip (see
    /// [`needs_root`]); not root otherwise fails the test.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !needs_root("mounting a tmpfs (a full disk is simulated on one)") {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process killed a moment ago may still hold a file.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial block, byte-sized pieces.
    while let Ok(1..) = file.write(&block[..1]) {}
}

#[test]
fn a_full_disk_aborts_the_build_once_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let Some(_tmpfs) = Tmpfs::mount(&state, "24m") else {
        return;
    };
    let server = Server::start(&state);
    schedule(
        &server,
        tmp.path(),
        "big",
        "echo writing\nhead -c 100000000 /dev/zero > big.bin\necho written\n",
    );
    let mut worker = server.worker("linux", tmp.path(), &[]);
    let r = wait_results(&server, "big", 1);
    let reason = aborted_reason(&r[0]);
    assert!(reason.starts_with("disk full: "), "{reason}");
    // Told to the worker, which gives up on the build: not its fault.
    assert!(!worker.wait_exit().success());
    assert!(
        worker.log().contains("disk full"),
        "worker log:\n{}",
        worker.log()
    );
    // Once: not requeued, not run again by the next worker.
    let mut worker = server.worker("linux", tmp.path(), &[]);
    let info = server.info();
    assert!(info.queues.iter().all(|q| q.jobs.is_empty()), "{info:?}");
    assert_eq!(results(&server, "big").len(), 1);
    assert!(!server.log().contains("worker lost"), "{}", server.log());
    // The spool went; the aborted record (with the console) was written in
    // the room it left.
    let records = server.wait_records("big", 1);
    assert!(matches!(&records[0].result, ExecResult::Msg(m) if m.starts_with(b"disk full: ")));
    assert_eq!(console(&records[0]), ["writing", "written"]);
    assert!(!state
        .join("big")
        .join(r[0].uuid.to_string())
        .join("artifacts.partial")
        .exists());

    // Now the disk is full for the state database too.
    let filler = state.join("filler");
    fill(&filler);
    let script_file = script(
        tmp.path(),
        "later.sh",
        &format!("# {}\necho later\n", "x".repeat(64 * 1024)),
    );
    let args = [
        "schedule",
        "later",
        "linux",
        script_file.to_str().unwrap(),
        "--period",
        "never",
    ];
    let out = server.client(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("disk full"), "{stderr}");
    assert!(!stderr.contains("closed the connection"), "{stderr}");
    // Reads are served, the server is up.
    server.client_ok(&["info"]);
    server.client_ok(&["results"]);
    assert_eq!(results(&server, "big").len(), 1);

    // Space returns: it works again by itself.
    std::fs::remove_file(&filler).unwrap();
    server.client_ok(&args);
    assert_eq!(
        server.wait_records("later", 1)[0].result,
        ExecResult::Exited(0)
    );
    worker.wait_exit();
}

#[test]
fn an_old_layout_state_directory_is_moved_once() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // What the previous version left: DIR/state.db with a WAL still holding
    // the last change (copied while open, as after a kill -9), and DIR/lock.
    let live = tmp.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let db = builder_server::db::Db::open(&live.join("state.db")).unwrap();
    block(db.enqueue("linux", "kept", "echo kept\n", 60, false)).unwrap();
    let mut copied = 0;
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        if live.join(name).exists() {
            std::fs::copy(live.join(name), state.join(name)).unwrap();
            copied += 1;
        }
    }
    drop(db);
    assert_eq!(copied, 3, "the old state has a WAL to move");
    std::fs::write(state.join("lock"), b"").unwrap();

    // An old server still holding DIR/lock keeps the directory.
    let old_lock = std::fs::File::open(state.join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(old_lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let out = Command::new(bin("builder-server"))
        .args(["--ip", "127.0.0.1", "--port", "0", "--dir"])
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("in use by another builder-server"),
        "{stderr}"
    );
    assert!(state.join("state.db").is_file(), "nothing moved");
    drop(held);

    let server = Server::start(&state);
    let info = server.info();
    assert_eq!(info.queues[0].jobs, ["kept"], "the WAL's change came along");
    assert!(!state.join("state.db").exists());
    assert!(!state.join("state.db-wal").exists());
    assert!(!state.join("lock").exists());
    assert!(builder_server::layout::db_path(&state).is_file());
    assert!(builder_server::layout::lock_path(&state).is_file());
    // A job may now be called lock.
    schedule(&server, tmp.path(), "lock", "echo lock\n");
    let mut worker = server.worker("linux", tmp.path(), &["--loop"]);
    server.wait_records("lock", 1);
    server.wait_records("kept", 1);
    worker.kill();
}

#[test]
fn a_lost_build_leaves_no_empty_folder_behind() {
    use protocol::message::{Hello, HelloReply, Role, ServerToWorker, WorkerMessage};
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let server = Server::start(&state);
    schedule(&server, tmp.path(), "dropped", "echo hi > out\n");
    let rt = runtime();
    // A worker that sends half an artifact and vanishes.
    let uuid = rt.block_on(async {
        let mut conn = protocol::codec::Connection::connect(&server.addr, 1 << 20)
            .await
            .unwrap();
        conn.send(&Hello {
            version: protocol::message::PROTOCOL_VERSION,
            role: Role::Worker {
                platform: "linux".into(),
                host: "vanishing".into(),
            },
            token: None,
            software: "test".into(),
        })
        .await
        .unwrap();
        assert!(matches!(
            conn.recv::<HelloReply>().await.unwrap(),
            Some(HelloReply::Welcome(_))
        ));
        conn.send(&WorkerMessage::RequestJob).await.unwrap();
        let job = loop {
            match conn.recv::<ServerToWorker>().await.unwrap() {
                Some(ServerToWorker::Job(job)) => break job,
                Some(ServerToWorker::Heartbeat) => continue,
                other => panic!("{other:?}"),
            }
        };
        conn.send(&WorkerMessage::Console {
            uuid: job.uuid,
            lines: vec![protocol::message::OutputLine {
                delta_ns: 1,
                data: b"half way".to_vec(),
            }],
        })
        .await
        .unwrap();
        conn.send(&WorkerMessage::ArtifactStart {
            uuid: job.uuid,
            path: b"out".to_vec(),
            len: 10,
        })
        .await
        .unwrap();
        conn.send(&WorkerMessage::ArtifactChunk {
            uuid: job.uuid,
            data: b"hi\n".to_vec(),
        })
        .await
        .unwrap();
        // Spooled before the connection goes: console and artifact.
        let build = state.join("dropped").join(job.uuid.to_string());
        wait_for("the spools", || {
            (build.join("console.1.partial").join("0").exists()
                && build.join("artifacts.partial").join("0").exists())
            .then_some(())
        });
        job.uuid
    });
    // Requeued at the front, and its folder is gone.
    wait_for("the build to be requeued", || {
        let info = server.info();
        (info.running.is_empty() && info.queues.iter().any(|q| q.jobs == ["dropped"])).then_some(())
    });
    assert!(!state.join("dropped").join(uuid.to_string()).exists());
}

#[test]
fn start_up_does_not_depend_on_writing_a_record() {
    if !needs_root("chattr +i (a folder even root cannot write)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let db_path = builder_server::layout::db_path(&state);
    std::fs::create_dir_all(db_path.parent().unwrap()).unwrap();
    // A build that lost its worker twice and was running when the server
    // stopped: the next start records it as aborted.
    let db = builder_server::db::Db::open(&db_path).unwrap();
    block(db.enqueue("linux", "poison", "true\n", 60, false)).unwrap();
    let now = protocol::message::Timestamp::now;
    for _ in 0..2 {
        let r = block(db.claim("linux", "w", now())).unwrap().unwrap();
        block(db.worker_lost(r.uuid)).unwrap();
    }
    let running = block(db.claim("linux", "w", now())).unwrap().unwrap();
    drop(db);
    // ...and its record cannot be written.
    let _immutable = Immutable::new(&state.join("poison"));

    let mut server = Server::binary(&state, &[]);
    let r = results(&server, "poison");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].uuid, running.uuid);
    let reason = aborted_reason(&r[0]);
    assert!(
        reason.contains("cannot store the build (aborted: worker lost 3 times)"),
        "{reason}"
    );
    assert!(server.info().running.is_empty());
    // And again: nothing is left to trip over.
    server.kill();
    let server = Server::start(&state);
    assert_eq!(results(&server, "poison").len(), 1);
}

#[test]
fn a_state_database_it_cannot_write_stops_the_server_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut server = Server::binary(&state, &[]);
    schedule(&server, tmp.path(), "before", "true\n");
    // Another process holds the write lock: not a full disk, so the server
    // cannot keep its promise that what it acknowledges is durable.
    let other = rusqlite::Connection::open(builder_server::layout::db_path(&state)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let file = script(tmp.path(), "after.sh", "true\n");
    let out = server.client(&[
        "schedule",
        "after",
        "linux",
        file.to_str().unwrap(),
        "--period",
        "never",
    ]);
    assert!(!out.status.success(), "the change was refused");
    let status = server.wait_exit();
    assert!(!status.success(), "the server exits non-zero: {status:?}");
    let log = server.log();
    assert!(log.contains("cannot persist state"), "{log}");
    assert!(log.contains("error: "), "{log}");
    other.execute_batch("ROLLBACK").unwrap();
}
