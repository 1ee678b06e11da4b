//! Storage failures, through the real binaries: job names that were the
//! server's own file names, a result folder that cannot be written, a full
//! disk, and the move of an old-layout state directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use protocol::message::{ClientRequest, JobOutcome, ResultSummary, ServerToClient};
use protocol::record::ExecResult;

/// Every result the server lists for `job`.
fn results(server: &Server, job: &str) -> Vec<ResultSummary> {
    match server.request(ClientRequest::Results {
        job: Some(job.into()),
        limit: 100,
    }) {
        ServerToClient::Results(r) => r,
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
    let mut server = Server::start(&state, &[]);
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
    server.proc.kill();

    let server = Server::start(&state, &[]);
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
    let state = tmp.path().join("state");
    let mut server = Server::start(&state, &[]);
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
    server.proc.kill();
    let server = Server::start(&state, &[]);
    let r = results(&server, "stuck");
    assert_eq!(r.len(), 1);
    assert!(aborted_reason(&r[0]).contains("cannot store the build"));
    // Observing it later still tells why.
    let out = server.client(&["observe", &uuid.to_string()]);
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("cannot store the build"), "{shown}");
}
