//! Observers waiting for a build that no connected worker can run are told
//! so, once, on stderr, and keep waiting (issue 20): real server, worker and
//! client processes.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::*;

const NOTICE: &str = "notice: no worker for platform linux is connected; waiting";

/// A client running in the background whose stderr is read as it comes.
struct Watched {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_done: std::thread::JoinHandle<()>,
    stdout: std::thread::JoinHandle<String>,
}

impl Watched {
    fn start(server: &Server, args: &[&str]) -> Watched {
        let mut child = Command::new(bin("builder-client"))
            .args(["-r", &server.addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run builder-client");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        let stderr_done = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Watched {
            child,
            stderr,
            stderr_done,
            stdout,
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr has a line equal to `line`.
    fn wait_line(&self, line: &str) {
        wait_for(&format!("{line:?} on the client's stderr"), || {
            self.stderr().iter().any(|l| l == line).then_some(())
        });
    }

    /// Whether the client still runs.
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; returns the status code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, Vec<String>) {
        let status = wait_for("the client to exit", || self.child.try_wait().unwrap());
        // Both pipes close with the client.
        let stdout = self.stdout.join().unwrap();
        self.stderr_done.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (status.code(), stdout, stderr)
    }
}

fn setup() -> (tempfile::TempDir, Server, String) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let script = script(tmp.path(), "job.sh", "#!/bin/sh\necho one line\nexit 3\n");
    server.client_ok(&[
        "schedule",
        "waits",
        "linux",
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
    (tmp, server, "waits".to_owned())
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

#[test]
fn execute_observe_says_once_that_no_worker_is_connected_then_follows_the_build() {
    let (tmp, server, job) = setup();
    let mut client = Watched::start(&server, &["execute", &job, "--observe"]);
    client.wait_line(NOTICE);
    assert!(client.running(), "it keeps waiting: {:?}", client.stderr());
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let (code, stdout, stderr) = client.finish();
    assert_eq!(code, Some(3), "the build's own status: {stderr:?}");
    assert_eq!(stdout, "one line\n");
    assert_eq!(count(&stderr, NOTICE), 1, "{stderr:?}");
}

#[test]
fn observe_of_a_queued_build_says_it_once() {
    let (tmp, server, job) = setup();
    // `execute` without --observe prints the UUID it queued.
    let out = server.client_ok(&["execute", &job]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let uuid = text.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(uuid.len(), 36, "{text}");
    let client = Watched::start(&server, &["observe", &uuid]);
    client.wait_line(NOTICE);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let (code, stdout, stderr) = client.finish();
    assert_eq!(code, Some(3), "{stderr:?}");
    assert_eq!(stdout, "one line\n");
    assert_eq!(count(&stderr, NOTICE), 1, "{stderr:?}");
}

#[test]
fn observe_latest_wait_says_it_once_for_the_jobs_platform() {
    let (tmp, server, job) = setup();
    let client = Watched::start(&server, &["observe-latest", "--wait", "--job", &job]);
    client.wait_line(NOTICE);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let (code, stdout, stderr) = client.finish();
    assert_eq!(code, Some(3), "{stderr:?}");
    assert_eq!(stdout, "one line\n");
    assert_eq!(count(&stderr, NOTICE), 1, "{stderr:?}");
}

#[test]
fn no_notice_when_a_worker_of_the_platform_is_connected() {
    let (tmp, server, job) = setup();
    // A looping worker takes the scheduled run and stays connected.
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &["--loop"]);
    server.wait_records(&job, 1);
    wait_for("the worker to be idle again", || {
        server
            .info()
            .workers
            .iter()
            .all(|w| w.running.is_none())
            .then_some(())
    });
    let client = Watched::start(&server, &["execute", &job, "--observe"]);
    let (code, _, stderr) = client.finish();
    assert_eq!(code, Some(3), "{stderr:?}");
    assert!(
        stderr.iter().all(|l| !l.starts_with("notice:")),
        "{stderr:?}"
    );
}
