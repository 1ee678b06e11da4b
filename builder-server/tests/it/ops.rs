//! Operating the server (issue 13): signals, drain, metrics, health, log
//! format and worker names. Signals and the log format go to the real
//! binary; the rest to a server in this process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use nix::sys::signal::Signal;

/// [`setup`] with the real binary, run with `extra` flags.
fn setup_binary(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let server = Server::binary(&tmp.path().join("state"), extra);
    (tmp, server)
}

/// A job script that runs until `flag` exists.
fn wait_for_flag(dir: &Path, name: &str, flag: &Path) -> PathBuf {
    script(
        dir,
        name,
        &format!(
            "#!/bin/sh\necho waiting\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho done\n",
            flag.display()
        ),
    )
}

fn schedule(server: &Server, job: &str, platform: &str, script: &Path) {
    server.client_ok(&[
        "schedule",
        job,
        platform,
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
}

#[test]
fn sighup_is_logged_and_the_server_keeps_serving() {
    let (_tmp, mut server) = setup_binary(&[]);
    server.signal(Signal::SIGHUP);
    server.wait_log("SIGHUP received");
    // Still answering after the signal was handled.
    assert!(server.info().schedule.is_empty());
    assert!(server.exited().is_none());
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn sigterm_with_drain_timeout_lets_the_running_build_finish_and_hands_out_no_more() {
    let (tmp, mut server) = setup_binary(&["--drain-timeout", "60"]);
    let flag = tmp.path().join("go");
    schedule(
        &server,
        "first",
        "linux",
        &wait_for_flag(tmp.path(), "first.sh", &flag),
    );
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &["--loop"]);
    wait_for("the build to run", || {
        (!server.info().running.is_empty()).then_some(())
    });
    server.signal(Signal::SIGTERM);
    server.wait_log("draining");
    // Queued during the drain: not handed to the (looping) worker.
    let quick = script(tmp.path(), "second.sh", "#!/bin/sh\ntrue\n");
    schedule(&server, "second", "linux", &quick);
    assert!(
        server.exited().is_none(),
        "the server must wait for the running build:\n{}",
        server.log()
    );

    std::fs::write(&flag, "").unwrap();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("drained"), "{}", server.log());
    let first = server.records("first");
    assert_eq!(first.len(), 1, "the running build was stored");
    assert!(
        server.records("second").is_empty(),
        "no build after the drain began"
    );

    // The queued build is still there for the next start.
    let server = Server::start(&server.dir.clone());
    let queued: Vec<String> = server
        .info()
        .queues
        .into_iter()
        .flat_map(|q| q.jobs)
        .collect();
    assert_eq!(queued, ["second"]);
}

#[test]
fn a_build_still_running_at_the_drain_timeout_is_requeued_and_the_server_exits_0() {
    let (tmp, mut server) = setup_binary(&["--drain-timeout", "1"]);
    let never = tmp.path().join("never");
    schedule(
        &server,
        "slow",
        "linux",
        &wait_for_flag(tmp.path(), "slow.sh", &never),
    );
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    wait_for("the build to run", || {
        (!server.info().running.is_empty()).then_some(())
    });
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("drain timeout"), "{}", server.log());
    assert!(server.records("slow").is_empty());

    let server = Server::start(&server.dir.clone());
    let queued: Vec<String> = server
        .info()
        .queues
        .into_iter()
        .flat_map(|q| q.jobs)
        .collect();
    assert_eq!(queued, ["slow"], "requeued at the next start");
}

/// The metrics endpoint's address, from the start-up line.
fn metrics_addr(server: &Server) -> String {
    wait_for("the metrics address", || {
        let log = server.log();
        let rest = log.split("metrics=").nth(1)?;
        Some(rest.split_whitespace().next()?.to_owned())
    })
}

/// One sample of the metrics text, `0` if absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn metrics_move_as_builds_queue_run_and_finish_and_healthz_answers() {
    let (tmp, server) = setup_with(|c| c.metrics = Some("127.0.0.1:0".parse().unwrap()));
    let base = format!("http://{}", metrics_addr(&server));
    let rt = runtime();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        rt.block_on(async {
            let response = http.get(format!("{base}{path}")).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        })
    };

    let (status, body) = get("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, text) = get("/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE builder_build_duration_seconds histogram"),
        "{text}"
    );

    // Queued, no worker yet.
    let flag = tmp.path().join("go");
    schedule(
        &server,
        "m",
        "plat",
        &wait_for_flag(tmp.path(), "m.sh", &flag),
    );
    let queue = r#"builder_queue_length{platform="plat"}"#;
    assert_eq!(sample(&get("/metrics").1, queue), 1.0);

    // Running.
    let mut worker = server.worker("plat", &tmp.path().join("worker-tmp"), &[]);
    let text = wait_for("a busy worker in the metrics", || {
        let text = get("/metrics").1;
        (sample(&text, r#"builder_workers_busy{platform="plat"}"#) == 1.0).then_some(text)
    });
    assert_eq!(
        sample(&text, r#"builder_workers_connected{platform="plat"}"#),
        1.0
    );
    assert_eq!(sample(&text, queue), 0.0);
    let finished = r#"builder_builds_finished_total{platform="plat",result="success"}"#;
    assert_eq!(sample(&text, finished), 0.0);
    assert_eq!(sample(&text, "builder_build_duration_seconds_count"), 0.0);

    // Observed.
    let uuid = server.info().running[0].uuid.to_string();
    let observer = server.spawn_client(&["observe", &uuid]);
    wait_for("an observer in the metrics", || {
        (sample(&get("/metrics").1, "builder_observers_connected") == 1.0).then_some(())
    });

    // Finished.
    std::fs::write(&flag, "").unwrap();
    let observed = observer.wait_with_output().unwrap();
    assert!(
        observed.status.success(),
        "{}",
        String::from_utf8_lossy(&observed.stderr)
    );
    assert!(worker.wait_exit().success(), "{}", worker.log());
    let text = wait_for("the finished build in the metrics", || {
        let text = get("/metrics").1;
        (sample(&text, finished) == 1.0).then_some(text)
    });
    assert_eq!(sample(&text, "builder_build_duration_seconds_count"), 1.0);
    assert_eq!(
        sample(&text, r#"builder_workers_busy{platform="plat"}"#),
        0.0
    );
    assert_eq!(sample(&text, "builder_observers_connected"), 0.0);
    assert_eq!(sample(&text, "builder_upload_spool_depth"), 0.0);
    assert_eq!(get("/healthz").0, 200);
}

#[test]
fn metrics_beyond_loopback_need_insecure() {
    let out = Command::new(bin("builder-server"))
        .args([
            "--port",
            "0",
            "--dir",
            "/nonexistent",
            "--metrics",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn two_workers_on_one_host_are_told_apart_by_name() {
    let (tmp, server) = setup();
    let wtmp = tmp.path().join("worker-tmp");
    let _named = server.worker("linux", &wtmp, &["--loop", "--name", "builder one"]);
    let _default = server.worker("linux", &wtmp, &["--loop"]);
    let workers = wait_for("two workers", || {
        let w = server.info().workers;
        (w.len() == 2).then_some(w)
    });
    let names: Vec<&str> = workers.iter().map(|w| w.host.as_str()).collect();
    assert!(names.contains(&"builder one"), "{names:?}");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(
        names.iter().any(|n| n
            .strip_prefix(&format!("{host}/"))
            .is_some_and(|pid| pid.parse::<u32>().is_ok())),
        "default name is HOST/PID: {names:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_text_logs_quote_values_and_have_no_colours() {
    // JSON.
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = Command::new(bin("builder-server"))
        .args(["--port", "0", "--log-format", "json", "--dir"])
        .arg(tmp.path().join("state"))
        .arg("--config-dir")
        .arg(tmp.path().join("etc"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(proc.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let _ = proc.kill();
    let _ = proc.wait();
    let event: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["message"], "builder-server listening", "{line}");
    assert_eq!(event["tokens"], "none", "{line}");
    assert_eq!(event["upload"], "none", "{line}");
    assert!(
        event["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );

    // Text: a job name with a space stays one logfmt value; no ANSI in a pipe.
    let (tmp, server) = setup_binary(&[]);
    let path = script(tmp.path(), "job.sh", "#!/bin/sh\ntrue\n");
    schedule(&server, "a b", "linux", &path);
    server.wait_log("job scheduled");
    let log = server.log();
    assert!(log.contains(r#"job="a b""#), "{log}");
    assert!(
        log.contains("config_dir=") && log.contains("tokens=\"none\""),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "colours in a pipe: {log}");
}

#[test]
fn the_missing_template_warning_comes_only_while_orb_jobs_exist() {
    let (tmp, server) = setup();
    let wtmp = tmp.path().join("worker-tmp");
    let warning = "no orb-build template";
    {
        let _worker = server.worker("linux", &wtmp, &["--loop"]);
        wait_for("the worker", || {
            (server.info().workers.len() == 1).then_some(())
        });
        server.wait_log("worker connected");
    }
    assert!(!server.log().contains(warning), "{}", server.log());

    // An orb job for the platform that has a template; linux has none.
    let etc = server.dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("orb-build.template.other"),
        "#!/bin/sh\necho %%OPAM_PACKAGE%%\n",
    )
    .unwrap();
    server.client_ok(&["orb-build", "orb", "hello", "--period", "never"]);
    let _worker = server.worker("linux", &wtmp, &["--loop"]);
    server.wait_log(warning);
}
