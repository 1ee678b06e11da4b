//! Scheduling through the real client and worker: cron timing, reschedule,
//! execute, missed runs, platforms, orb-build templates, persistence across
//! SIGKILL (of the real server binary).

use crate::common::*;
use chrono::{DurationRound, TimeDelta, Utc};
use protocol::message::{ScheduleEntry, Timestamp};
use protocol::trigger::Trigger;

fn entry(server: &Server, name: &str) -> ScheduleEntry {
    server.show(name)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How precisely a due job is queued is tested with an injected clock and
/// paused time (`scheduler::tests`); here, with the real clock and real
/// processes, only that a cron job keeps coming back, run after run, with
/// no assertion on how late a loaded machine runs it.
#[test]
fn a_cron_job_runs_again_and_again() {
    let (tmp, server) = setup();
    let path = script(tmp.path(), "tick.sh", "echo tick\n");
    server.client_ok(&[
        "schedule",
        "tick",
        "linux",
        path.to_str().unwrap(),
        "--cron",
        "*/3 * * * * *",
    ]);
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &["--loop"]);
    // The first run is the one queued at scheduling; the next ones are the
    // cron's.
    let records = server.wait_records("tick", 3);
    let mut starts: Vec<_> = records.iter().map(|r| r.started).collect();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), records.len(), "one record per run");
    for r in &records {
        assert_eq!(console(r), ["tick"]);
    }
    // Still scheduled, with a next run in the cron's 3-second grid.
    let next = entry(&server, "tick").next_run.expect("a next run");
    assert_eq!(next.to_datetime().timestamp() % 3, 0, "{next}");
    assert_eq!(next.0 % 1_000_000_000, 0, "{next}");
}

#[test]
fn reschedule_sets_the_next_run_exactly_and_queues_nothing_and_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let state = tmp.path().join("state");
    let mut server = Server::binary(&state, &[]);
    let path = script(tmp.path(), "daily.sh", "echo daily\n");
    server.client_ok(&["schedule", "daily", "linux", path.to_str().unwrap()]);
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    assert!(worker.wait_exit().success());
    assert_eq!(server.wait_records("daily", 1).len(), 1);
    let first = entry(&server, "daily");
    assert_eq!(first.trigger, Trigger::Daily);

    let tomorrow = (Utc::now() + TimeDelta::days(1))
        .duration_trunc(TimeDelta::seconds(1))
        .unwrap();
    let next = tomorrow.to_rfc3339();
    server.client_ok(&["reschedule", "daily", &next, "--period", "weekly"]);
    let after = entry(&server, "daily");
    assert_eq!(
        after.next_run,
        Some(Timestamp::from_datetime(tomorrow)),
        "exactly NEXT"
    );
    assert_eq!(after.trigger, Trigger::Weekly);
    assert!(
        server.info().queues.iter().all(|q| q.jobs.is_empty()),
        "nothing queued now"
    );

    // `execute` runs it now and leaves the schedule alone.
    server.client_ok(&["execute", "daily"]);
    assert_eq!(server.info().queues[0].jobs, ["daily"]);
    assert_eq!(entry(&server, "daily"), after);

    server.kill();
    let server = Server::start(&state);
    assert_eq!(
        entry(&server, "daily"),
        after,
        "the schedule survives SIGKILL"
    );
    assert_eq!(server.info().queues[0].jobs, ["daily"], "so does the queue");
}

#[test]
fn a_job_that_missed_runs_is_queued_once_and_keeps_its_phase() {
    let (_tmp, server) = setup();
    // The server was down for 3.5 hours since the job's slot: the job is
    // written into the stopped server's state as it would have been (a
    // reschedule into the past is refused).
    let slot = (Utc::now() - TimeDelta::minutes(210))
        .duration_trunc(TimeDelta::seconds(1))
        .unwrap();
    let state = server.dir.clone();
    drop(server);
    {
        let db = builder_server::db::Db::open(&builder_server::layout::db_path(&state)).unwrap();
        let entry = ScheduleEntry {
            job: protocol::message::JobSpec {
                name: "hourly".into(),
                kind: protocol::message::JobKind::Script {
                    platform: "linux".into(),
                    script: "echo hourly\n".into(),
                },
            },
            trigger: Trigger::Hourly,
            next_run: Some(Timestamp::from_datetime(slot)),
            timeout_secs: None,
        };
        assert!(block(db.insert_job(&entry)).unwrap());
    }
    let server = Server::start(&state);
    let next = wait_for("the missed run to be handled", || {
        let e = entry(&server, "hourly");
        (e.next_run != Some(Timestamp::from_datetime(slot))).then_some(e.next_run)
    });
    assert_eq!(
        next,
        Some(Timestamp::from_datetime(slot + TimeDelta::hours(4))),
        "next slot in phase"
    );
    let info = server.info();
    assert_eq!(info.queues.len(), 1);
    assert_eq!(
        info.queues[0].jobs,
        ["hourly"],
        "queued once, not once per missed hour"
    );
}

#[test]
fn job_names_are_unique_and_unschedule_removes_from_schedule_and_queue() {
    let (tmp, server) = setup();
    let path = script(tmp.path(), "a.sh", "true\n");
    server.client_ok(&["schedule", "a", "linux", path.to_str().unwrap()]);
    let out = server.client(&["schedule", "a", "freebsd", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(server.info().queues[0].jobs, ["a"]);

    server.client_ok(&["unschedule", "a"]);
    let info = server.info();
    assert!(info.schedule.is_empty());
    assert!(info.queues.iter().all(|q| q.jobs.is_empty()));
    let out = server.client(&["unschedule", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job named a"));
}

#[test]
fn a_dropped_platform_gets_no_work_and_its_worker_exits_with_the_reason() {
    let (tmp, server) = setup();
    let path = script(tmp.path(), "old.sh", "true\n");
    let mut waiting = server.worker("old", &tmp.path().join("worker-tmp"), &["--loop"]);
    wait_for("the worker to connect", || {
        (!server.info().workers.is_empty()).then_some(())
    });

    let out = server.client_ok(&["drop-platform", "old"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped platform old"));
    let status = waiting.wait_exit();
    assert!(!status.success());
    assert!(
        waiting.log().contains("platform old was dropped"),
        "{}",
        waiting.log()
    );

    let out = server.client(&["schedule", "j", "old", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("platform old is dropped"),
        "{}",
        stderr(&out)
    );

    let mut refused = server.worker("old", &tmp.path().join("worker-tmp"), &[]);
    assert!(!refused.wait_exit().success());
    assert!(
        refused.log().contains("platform old is dropped"),
        "{}",
        refused.log()
    );

    server.client_ok(&["undrop-platform", "old"]);
    server.client_ok(&["schedule", "j", "old", path.to_str().unwrap()]);
    assert_eq!(server.info().dropped_platforms, Vec::<String>::new());
}

#[test]
fn orb_build_jobs_are_queued_on_every_platform_with_a_template() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let state = tmp.path().join("state");
    let etc = state.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("orb-build.template.linux"),
        "#!/bin/sh\necho building %%OPAM_PACKAGE%% on %%PLATFORM%%\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("orb-build.template.freebsd"),
        "echo bsd %%OPAM_PACKAGE%%\n",
    )
    .unwrap();
    let server = Server::start(&state);

    let out = server.client_ok(&["orb-build", "solo5", "solo5-hvt", "--period", "weekly"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("freebsd, linux"));
    let queues = server.info().queues;
    assert_eq!(queues.len(), 2);
    assert!(queues.iter().all(|q| q.jobs == ["solo5"]));

    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    assert!(worker.wait_exit().success());
    let exec = server.wait_records("solo5", 1).remove(0);
    assert_eq!(console(&exec), ["building solo5-hvt on linux"]);

    // Templates are re-read: no restart needed.
    std::fs::write(
        etc.join("orb-build.template.linux"),
        "echo v2 %%OPAM_PACKAGE%%\n",
    )
    .unwrap();
    server.client_ok(&["execute", "solo5", "--platform", "linux"]);
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    assert!(worker.wait_exit().success());
    let records = server.wait_records("solo5", 2);
    assert!(records.iter().any(|r| console(r) == ["v2 solo5-hvt"]));

    // A platform with workers but no template is warned about once.
    let _a = server.worker("sparc", &tmp.path().join("worker-tmp"), &[]);
    let _b = server.worker("sparc", &tmp.path().join("worker-tmp"), &[]);
    wait_for("both workers", || {
        (server
            .info()
            .workers
            .iter()
            .filter(|w| w.platform == "sparc")
            .count()
            == 2)
            .then_some(())
    });
    let warnings = server
        .log()
        .lines()
        .filter(|l| l.contains("no orb-build template") && l.contains("sparc"))
        .count();
    assert_eq!(warnings, 1);
}
