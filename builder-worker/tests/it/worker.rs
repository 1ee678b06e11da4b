//! The real `builder-worker` binary against a scripted server on 127.0.0.1:0.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use assert_cmd::Command as AssertCommand;
use nix::sys::signal::{kill, Signal as HostSignal};
use nix::unistd::Pid;
use protocol::message::{HelloReply, JobOutcome, Role, ServerToWorker, WorkerMessage};
use protocol::signal::Signal;
use protocol::PROTOCOL_VERSION;
use tokio::net::TcpListener;
use tokio::time::Instant;

use builder_worker::console::MAX_LINE;

fn pid_of(report: &Report, key: &str) -> i32 {
    report
        .value(key)
        .unwrap_or_else(|| panic!("no `{key}` line in {:?}", report.lines()))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn console_is_merged_split_and_carried_unchanged() {
    let script = r#"#!/bin/sh
for i in 1 2 3 4 5; do echo "out $i"; echo "err $i" >&2; done
printf 'partial '; printf 'write'; printf ' joined\n'
printf 'cr\rinside\n'
printf '\377\376 not utf-8\n'
echo
head -c 204800 /dev/zero | tr '\0' 'x'; echo
echo before-sleep
sleep 0.2
echo after-sleep
printf 'last line without newline'
"#;
    let report = run_script(script).await;
    assert_eq!(report.outcome(), &JobOutcome::Exited(0));
    assert!(report.started.is_some());

    let data: Vec<&[u8]> = report.console.iter().map(|l| &l.data[..]).collect();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for i in 1..=5 {
        expected.push(format!("out {i}").into_bytes());
        expected.push(format!("err {i}").into_bytes());
    }
    expected.push(b"partial write joined".to_vec());
    expected.push(b"cr\rinside".to_vec());
    expected.push(b"\xff\xfe not utf-8".to_vec());
    expected.push(Vec::new());
    let long = vec![b'x'; 200 * 1024];
    for piece in long.chunks(MAX_LINE) {
        expected.push(piece.to_vec());
    }
    expected.push(b"before-sleep".to_vec());
    expected.push(b"after-sleep".to_vec());
    expected.push(b"last line without newline".to_vec());
    assert_eq!(data.len(), expected.len(), "{:?}", report.lines());
    for (i, (got, want)) in data.iter().zip(&expected).enumerate() {
        assert!(got == want, "line {i}: {:?}", String::from_utf8_lossy(got));
    }
    // The 200 KiB line came as 64 KiB pieces that concatenate to it.
    let pieces = &data[14..18];
    assert_eq!(pieces.concat(), long);
    assert!(pieces.iter().all(|p| p.len() <= MAX_LINE));

    let deltas: Vec<i64> = report.console.iter().map(|l| l.delta_ns).collect();
    assert!(deltas.windows(2).all(|w| w[0] <= w[1]), "{deltas:?}");
    assert!(deltas[0] >= 0);
    // A line's delta is taken when the worker reads it, which may be a
    // little after it was written: the 200 ms sleep shows as at least
    // 150 ms (a delta that was not time since start would show ~0).
    let gap = deltas[19] - deltas[18];
    assert!(
        gap >= 150_000_000,
        "deltas are not time since start: {gap} ns"
    );
}

#[tokio::test]
async fn many_lines_are_batched() {
    let report = run_script("#!/bin/sh\nseq 1 20000\n").await;
    assert_eq!(report.outcome(), &JobOutcome::Exited(0));
    let want: Vec<String> = (1..=20000).map(|i| i.to_string()).collect();
    assert_eq!(report.lines(), want);
    assert!(
        report.batches < 200,
        "{} console messages for 20000 lines",
        report.batches
    );
}

#[tokio::test]
async fn exit_code_and_script_without_shebang_runs_under_bin_sh() {
    let report =
        run_script("echo \"shell $(readlink /proc/$$/exe)\"\necho \"arg0 $0\"\nexit 3\n").await;
    assert_eq!(report.outcome(), &JobOutcome::Exited(3));
    let sh = fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(report.value("shell").unwrap(), sh.to_str().unwrap());
    assert!(report.value("arg0").unwrap().ends_with("/script.sh"));
}

#[tokio::test]
async fn shebang_picks_the_interpreter() {
    // bash is on every Debian and FreeBSD build host; without it this test
    // fails rather than passing untested.
    assert!(
        Path::new("/bin/bash").exists(),
        "this test needs /bin/bash to show that a #! line picks the interpreter"
    );
    // Arrays are a syntax error in dash: this only works under bash.
    let script = "#!/bin/bash\narr=(a b c)\necho \"count ${#arr[@]}\"\necho \"shell $(readlink /proc/$$/exe)\"\n";
    let report = run_script(script).await;
    assert_eq!(
        report.outcome(),
        &JobOutcome::Exited(0),
        "{:?}",
        report.lines()
    );
    assert_eq!(report.value("count").as_deref(), Some("3"));
    let bash = fs::canonicalize("/bin/bash").unwrap();
    assert_eq!(report.value("shell").unwrap(), bash.to_str().unwrap());
}

#[tokio::test]
async fn killed_by_a_signal_is_signalled_without_artifacts() {
    let report =
        run_script("#!/bin/sh\necho before\necho data > file\nkill -KILL $$\necho after\n").await;
    assert_eq!(report.outcome(), &JobOutcome::Signalled(Signal::Kill));
    assert_eq!(report.lines(), ["before"]);
    assert!(report.artifacts.is_empty());
}

#[tokio::test]
async fn environment_directory_and_hello() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start_with(&env, addr, &[], |cmd| {
        cmd.env("BUILDER_TOKEN", " env-token \n")
            .env("BUILDER_TEST_VAR", "inherited");
    });
    let (mut conn, hello) = accept_ready(&listener).await;
    assert_eq!(hello.version, PROTOCOL_VERSION);
    assert_eq!(hello.token.as_deref(), Some("env-token"));
    assert!(
        hello.software.starts_with("builder-worker "),
        "{}",
        hello.software
    );
    // The default --name: host name and pid.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        hello.role,
        Role::Worker {
            platform: "test-platform".into(),
            host: format!("{host}/{}", worker.pid())
        }
    );
    let script = r#"#!/bin/sh
echo "cwd $(pwd)"
echo "dir-mode $(stat -c %a .)"
echo "script-mode $(stat -c %a script.sh)"
echo "token ${BUILDER_TOKEN:-withheld}"
echo "var $BUILDER_TEST_VAR"
if read line; then echo "stdin $line"; else echo "stdin empty"; fi
"#;
    let report = serve_job(&mut conn, job(script, 60)).await;
    assert_eq!(
        report.outcome(),
        &JobOutcome::Exited(0),
        "{:?}",
        report.lines()
    );
    let cwd = report.value("cwd").unwrap();
    let jobs = fs::canonicalize(&env.jobs).unwrap();
    assert_eq!(Path::new(&cwd).parent().unwrap(), jobs);
    assert_eq!(report.value("dir-mode").as_deref(), Some("700"));
    assert_eq!(report.value("script-mode").as_deref(), Some("500"));
    assert_eq!(report.value("token").as_deref(), Some("withheld"));
    assert_eq!(report.value("var").as_deref(), Some("inherited"));
    assert_eq!(report.value("stdin").as_deref(), Some("empty"));
    assert!(worker.exit().await.success());
    assert!(!Path::new(&cwd).exists());
    env.assert_jobs_dir_empty();
}

#[tokio::test]
async fn artifacts_arrive_byte_identical() {
    let env = Env::new();
    let outside = env.root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "not an artifact").unwrap();
    fs::write(env.root.path().join("secret-file"), "not an artifact").unwrap();
    let script = format!(
        r#"#!/bin/sh
set -e
mkdir -p out/sub empty-dir
echo hello > out/sub/file.txt
i=0; while [ $i -lt 256 ]; do printf "\\$(printf %o $i)"; i=$((i+1)); done > bin
seq 1 1000000 | head -c 5242880 > big
: > empty
ln -s out/sub/file.txt link-to-file
ln -s {outside} link-to-dir
ln -s {secret} link-outside-file
mkfifo fifo
printf x > "$(printf 'name-\377')"
exit 5
"#,
        outside = outside.display(),
        secret = env.root.path().join("secret-file").display(),
    );
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    let report = serve_job(&mut conn, job(&script, 60)).await;
    // Artifacts are sent whatever the exit code.
    assert_eq!(
        report.outcome(),
        &JobOutcome::Exited(5),
        "{:?}",
        report.lines()
    );
    assert_eq!(
        report
            .artifacts
            .iter()
            .map(|a| a.0.clone())
            .collect::<Vec<_>>(),
        [
            b"big".to_vec(),
            b"bin".to_vec(),
            b"empty".to_vec(),
            b"name-\xff".to_vec(),
            b"out/sub/file.txt".to_vec(),
        ],
        "{:?}",
        report.artifact_paths()
    );
    assert_eq!(report.artifact("out/sub/file.txt"), b"hello\n");
    let all_bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(report.artifact("bin"), &all_bytes[..]);
    let mut seq = String::new();
    for i in 1..=1_000_000 {
        seq.push_str(&i.to_string());
        seq.push('\n');
        if seq.len() >= 5 * 1024 * 1024 {
            break;
        }
    }
    let big = &seq.as_bytes()[..5 * 1024 * 1024];
    assert!(report.artifact("big") == big, "big artifact differs");
    let big_entry = report.artifacts.iter().find(|a| a.0 == b"big").unwrap();
    assert_eq!(big_entry.1, 5 * 1024 * 1024);
    assert_eq!(report.artifact("empty"), b"");
    assert_eq!(
        report.artifacts.iter().find(|a| a.0 == b"empty").unwrap().1,
        0
    );
    let odd = report
        .artifacts
        .iter()
        .find(|a| a.0 == b"name-\xff")
        .unwrap();
    assert_eq!(odd.2, b"x");
    // Big files travel in several chunks, none over the limit.
    assert!(report.chunk_sizes.len() >= 20);
    assert!(worker.exit().await.success());
    env.assert_jobs_dir_empty();
}

#[tokio::test]
async fn timeout_kills_the_whole_group_after_the_grace() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    // Ignoring SIGTERM (inherited by the child) leaves only SIGKILL.
    let script = "#!/bin/sh\ntrap '' TERM\necho \"pid $$\"\nsleep 1000 &\necho \"child $!\"\necho data > left-behind\nwait\n";
    let begun = Instant::now();
    let report = serve_job(&mut conn, job(script, 1)).await;
    let took = begun.elapsed();
    assert_eq!(report.outcome(), &JobOutcome::Aborted("timeout".into()));
    assert!(report.artifacts.is_empty(), "{:?}", report.artifact_paths());
    // 1 s timeout + 1 s grace.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "child")]).await;
    assert!(worker.exit().await.success());
    env.assert_jobs_dir_empty();
}

#[tokio::test]
async fn leftover_background_processes_are_killed_when_the_script_exits() {
    let report = run_script("#!/bin/sh\nsleep 1000 &\necho \"child $!\"\necho done\n").await;
    assert_eq!(report.outcome(), &JobOutcome::Exited(0));
    wait_gone(&[pid_of(&report, "child")]).await;
}

#[tokio::test]
async fn a_process_escaping_the_group_does_not_hang_the_job() {
    let begun = Instant::now();
    let report =
        run_script("#!/bin/sh\nsetsid sleep 60 &\necho \"escaped $!\"\necho ok > artifact\n").await;
    let escaped = pid_of(&report, "escaped");
    let _ = kill(Pid::from_raw(escaped), HostSignal::SIGKILL);
    assert_eq!(report.outcome(), &JobOutcome::Exited(0));
    assert_eq!(report.artifact_paths(), ["artifact"]);
    assert!(begun.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn cancel_aborts_with_the_reason_and_kills_the_group() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    let job = job(
        "#!/bin/sh\necho \"pid $$\"\nsleep 1000 &\necho \"child $!\"\necho x > file\nwait\n",
        3600,
    );
    let uuid = job.uuid;
    conn.send(&ServerToWorker::Job(job)).await.unwrap();
    let mut report = Report::new(uuid);
    drive(&mut conn, &mut report, |r| r.value("child").is_some()).await;
    conn.send(&ServerToWorker::Cancel {
        uuid,
        reason: "cancelled by alice".into(),
    })
    .await
    .unwrap();
    drive(&mut conn, &mut report, |_| false).await;
    assert_eq!(
        report.outcome(),
        &JobOutcome::Aborted("cancelled by alice".into())
    );
    assert!(report.artifacts.is_empty());
    conn.send(&ServerToWorker::Stored { uuid }).await.unwrap();
    assert!(worker.exit().await.success(), "{}", worker.stderr());
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "child")]).await;
    env.assert_jobs_dir_empty();
}

#[tokio::test]
async fn sigterm_to_the_worker_aborts_the_job_as_worker_stopped() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &["--loop"]);
    let (mut conn, _) = accept_ready(&listener).await;
    let job = job(
        "#!/bin/sh\necho \"pid $$\"\nsleep 1000 &\necho \"child $!\"\nwait\n",
        3600,
    );
    let uuid = job.uuid;
    conn.send(&ServerToWorker::Job(job)).await.unwrap();
    let mut report = Report::new(uuid);
    drive(&mut conn, &mut report, |r| r.value("child").is_some()).await;
    kill(Pid::from_raw(worker.pid()), HostSignal::SIGTERM).unwrap();
    drive(&mut conn, &mut report, |_| false).await;
    assert_eq!(
        report.outcome(),
        &JobOutcome::Aborted("worker stopped".into())
    );
    conn.send(&ServerToWorker::Stored { uuid }).await.unwrap();
    let status = worker.exit().await;
    assert!(status.success(), "{status}\n{}", worker.stderr());
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "child")]).await;
    env.assert_jobs_dir_empty();
}

#[tokio::test]
async fn start_failures_are_reported_as_aborted() {
    // A missing interpreter: the script cannot be started.
    let report = run_script("#!/nonexistent/interpreter\necho never\n").await;
    match report.outcome() {
        JobOutcome::Aborted(msg) => {
            assert!(msg.starts_with("cannot start "), "{msg}");
            assert!(
                msg.contains("script.sh: No such file or directory"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(report.started.is_none());

    // No job directory can be made.
    let env = Env::new();
    let (listener, addr) = listen().await;
    let missing = env.root.path().join("missing");
    let mut worker = Worker::start_with(&env, addr, &[], |cmd| {
        cmd.env("TMPDIR", &missing);
    });
    let (mut conn, _) = accept_ready(&listener).await;
    let report = serve_job(&mut conn, job("echo never\n", 60)).await;
    match report.outcome() {
        JobOutcome::Aborted(msg) => {
            assert!(
                msg.starts_with("cannot create the job directory in "),
                "{msg}"
            );
            assert!(msg.contains("missing"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(worker.exit().await.success());
}

#[tokio::test]
async fn refused_hello_is_final_even_with_loop() {
    let env = Env::new();
    let token_file = env.root.path().join("token");
    fs::write(&token_file, "  s3cret \t\nignored second line\n").unwrap();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(
        &env,
        addr,
        &["--loop", "--token-file", token_file.to_str().unwrap()],
    );
    let (mut conn, hello) = accept(&listener).await;
    assert_eq!(hello.token.as_deref(), Some("s3cret"));
    conn.send(&HelloReply::Refused {
        reason: "platform test-platform is dropped".into(),
    })
    .await
    .unwrap();
    drop(conn);
    let status = worker.exit().await;
    assert!(!status.success());
    let stderr = worker.stderr();
    assert!(
        stderr.contains("error: server refused the connection: platform test-platform is dropped"),
        "{stderr}"
    );
}

#[test]
fn unreachable_server_is_a_one_line_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is dropped: nothing listens there now.
    let out = AssertCommand::cargo_bin("builder-worker")
        .unwrap()
        .args([
            "test-platform",
            "-r",
            &addr.to_string(),
            "--connect-retry",
            "0",
        ])
        .env_remove("RUST_LOG")
        .env_remove("BUILDER_TOKEN")
        .timeout(DEADLINE)
        .assert()
        .failure()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "error: cannot reach {addr} for 0 s (--connect-retry): \
             cannot connect to {addr}: Connection refused (os error 111)\n"
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn unreadable_token_file_names_the_file() {
    AssertCommand::cargo_bin("builder-worker")
        .unwrap()
        .args(["p", "--token-file", "/nonexistent/token"])
        .env_remove("RUST_LOG")
        .timeout(DEADLINE)
        .assert()
        .failure()
        .stderr(predicates::str::starts_with(
            "error: cannot read token file /nonexistent/token: No such file",
        ));
}

/// Starts a job that reports its pids, returns once they are known.
async fn start_sleeping_job(conn: &mut Conn) -> Report {
    let job = job(
        "#!/bin/sh\necho \"pid $$\"\nsleep 1000 &\necho \"child $!\"\nwait\n",
        3600,
    );
    let uuid = job.uuid;
    conn.send(&ServerToWorker::Job(job)).await.unwrap();
    let mut report = Report::new(uuid);
    drive(conn, &mut report, |r| r.value("child").is_some()).await;
    report
}

#[tokio::test]
async fn server_disappearing_mid_job_kills_the_job() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    let report = start_sleeping_job(&mut conn).await;
    drop(conn);
    drop(listener);
    let status = worker.exit().await;
    assert!(!status.success());
    let stderr = worker.stderr();
    assert!(stderr.contains("error: lost the connection to"), "{stderr}");
    assert!(stderr.contains("while running job test-job"), "{stderr}");
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "child")]).await;
    env.assert_jobs_dir_empty();
}

#[tokio::test]
async fn silent_server_is_lost_after_three_heartbeats() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    let report = start_sleeping_job(&mut conn).await;
    // Keep the connection open but say nothing.
    let status = worker.exit().await;
    assert!(!status.success());
    let stderr = worker.stderr();
    assert!(stderr.contains("has been silent for"), "{stderr}");
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "child")]).await;
    env.assert_jobs_dir_empty();
    drop(conn);
}

#[tokio::test]
async fn heartbeats_keep_flowing_while_waiting() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    // No job for a while: the worker heartbeats and stays as long as the
    // server does too.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut beats = 0;
    while Instant::now() < until {
        conn.send(&ServerToWorker::Heartbeat).await.unwrap();
        if let Ok(msg) = tokio::time::timeout(
            Duration::from_millis(HEARTBEAT_MS),
            conn.recv::<WorkerMessage>(),
        )
        .await
        {
            assert_eq!(msg.unwrap(), Some(WorkerMessage::Heartbeat));
            beats += 1;
        }
    }
    assert!(beats >= 4, "{beats} heartbeats in 1.5 s");
    assert!(worker.running(), "{}", worker.stderr());
    let report = serve_job(&mut conn, job("echo fine\n", 60)).await;
    assert_eq!(report.lines(), ["fine"]);
    assert!(worker.exit().await.success());
}

#[tokio::test]
async fn loop_serves_jobs_and_reconnects() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &["--loop"]);
    let (mut conn, _) = accept_ready(&listener).await;
    let first = serve_job(&mut conn, job("echo one\n", 60)).await;
    assert_eq!(first.lines(), ["one"]);
    expect_request(&mut conn).await;
    let second = serve_job(&mut conn, job("echo two\nexit 7\n", 60)).await;
    assert_eq!(second.outcome(), &JobOutcome::Exited(7));
    expect_request(&mut conn).await;
    assert!(worker.running());

    // The server goes away and comes back on the same address.
    drop(conn);
    drop(listener);
    // tokio sets SO_REUSEADDR, so the port can be bound again at once; only
    // another process taking it in between could stop that, and then the
    // test fails (after retrying) instead of passing untested.
    let listener = within("binding the same address again", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    eprintln!("cannot bind {addr} again yet: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await;
    let (mut conn, _) = accept_ready(&listener).await;
    let third = serve_job(&mut conn, job("echo three\n", 60)).await;
    assert_eq!(third.lines(), ["three"]);
    expect_request(&mut conn).await;
    assert!(worker.running());
    env.assert_jobs_dir_empty();
    let stderr = worker.stderr();
    // The outage was said once, and its end (the backoff is tests/retry.rs's).
    assert!(stderr.contains("retrying every 5 s at most"), "{stderr}");
    assert!(stderr.contains("the server is back after"), "{stderr}");
}

#[tokio::test]
async fn a_killed_worker_takes_its_job_group_and_directory_along() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    // A grandchild too: PR_SET_PDEATHSIG on the leader would miss it.
    let job = job(
        "#!/bin/sh\necho \"pid $$\"\nsh -c 'sleep 1000 & echo \"grandchild $!\"; wait' &\nwait\n",
        3600,
    );
    let uuid = job.uuid;
    conn.send(&ServerToWorker::Job(job)).await.unwrap();
    let mut report = Report::new(uuid);
    drive(&mut conn, &mut report, |r| r.value("grandchild").is_some()).await;
    assert_eq!(env.leftovers().len(), 1, "the running job's directory");

    kill(Pid::from_raw(worker.pid()), HostSignal::SIGKILL).unwrap();
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "grandchild")]).await;
    wait_until("the job directory to be removed", || {
        env.leftovers().is_empty()
    })
    .await;
}

/// One watchdog serves every job of a `--loop` worker: after a first job
/// came and went, a second's group and directory still go with the worker.
#[tokio::test]
async fn a_killed_loop_worker_takes_its_second_job_along() {
    let env = Env::new();
    let (listener, addr) = listen().await;
    let worker = Worker::start(&env, addr, &["--loop"]);
    let (mut conn, _) = accept_ready(&listener).await;
    let first = serve_job(&mut conn, job("echo one\n", 60)).await;
    assert_eq!(first.outcome(), &JobOutcome::Exited(0));
    expect_request(&mut conn).await;

    let job = job(
        "#!/bin/sh\necho \"pid $$\"\nsh -c 'sleep 1000 & echo \"grandchild $!\"; wait' &\nwait\n",
        3600,
    );
    let uuid = job.uuid;
    conn.send(&ServerToWorker::Job(job)).await.unwrap();
    let mut report = Report::new(uuid);
    drive(&mut conn, &mut report, |r| r.value("grandchild").is_some()).await;
    assert_eq!(env.leftovers().len(), 1, "the running job's directory");

    kill(Pid::from_raw(worker.pid()), HostSignal::SIGKILL).unwrap();
    wait_gone(&[pid_of(&report, "pid"), pid_of(&report, "grandchild")]).await;
    wait_until("the job directory to be removed", || {
        env.leftovers().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_starting_worker_removes_stale_job_directories_only() {
    let env = Env::new();
    let stale = env.jobs.join("builder-job-dead1234");
    fs::create_dir_all(stale.join("sub")).unwrap();
    fs::write(stale.join("sub/left"), "x").unwrap();
    let unrelated = env.jobs.join("someone-else");
    fs::create_dir(&unrelated).unwrap();
    // A directory whose worker is alive holds its lock.
    let held = env.jobs.join("builder-job-alive5678");
    fs::create_dir(&held).unwrap();
    let _lock = builder_worker::watchdog::DirLock::take(&held).unwrap();

    let (listener, addr) = listen().await;
    let mut worker = Worker::start(&env, addr, &[]);
    let (mut conn, _) = accept_ready(&listener).await;
    assert!(!stale.exists(), "stale directory still there");
    assert!(held.is_dir() && unrelated.is_dir());
    let report = serve_job(&mut conn, job("#!/bin/sh\necho hi\n", 60)).await;
    assert_eq!(report.outcome(), &JobOutcome::Exited(0));
    assert!(worker.exit().await.success());
    let mut left = env.leftovers();
    left.sort();
    assert_eq!(left, ["builder-job-alive5678", "someone-else"]);
}
