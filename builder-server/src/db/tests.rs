use std::path::PathBuf;

use protocol::message::{JobKind, JobOutcome, JobSpec, ScheduleEntry, Timestamp, UploadState};
use protocol::signal::Signal;
use protocol::trigger::Trigger;
use uuid::Uuid;

use super::*;

fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("state.db")).unwrap();
    (dir, db)
}

fn script_job(name: &str, platform: &str) -> ScheduleEntry {
    ScheduleEntry {
        job: JobSpec {
            name: name.into(),
            kind: JobKind::Script {
                platform: platform.into(),
                script: "echo hi\n".into(),
            },
        },
        trigger: Trigger::Daily,
        next_run: Some(Timestamp(1_000)),
        timeout_secs: None,
    }
}

#[tokio::test]
async fn job_names_are_unique_and_survive_reopening() {
    let (dir, db) = db();
    assert!(db.insert_job(&script_job("a", "linux")).await.unwrap());
    assert!(!db.insert_job(&script_job("a", "freebsd")).await.unwrap());
    drop(db);
    let db = Db::open(&dir.path().join("state.db")).unwrap();
    assert_eq!(db.jobs().await.unwrap(), vec![script_job("a", "linux")]);
}

#[tokio::test]
async fn queue_front_back_and_no_duplicates() {
    let (_dir, db) = db();
    assert!(db.enqueue("linux", "a", "s", 10, false).await.unwrap());
    assert!(db.enqueue("linux", "b", "s", 10, false).await.unwrap());
    assert!(!db.enqueue("linux", "a", "s", 10, false).await.unwrap());
    assert!(db.enqueue("linux", "b", "s", 10, true).await.unwrap());
    assert!(db.enqueue("linux", "c", "s", 10, true).await.unwrap());
    assert_eq!(db.queues().await.unwrap()[0].jobs, vec!["c", "b", "a"]);
}

#[tokio::test]
async fn claim_then_lost_requeues_at_front_and_gives_up_after_three() {
    let (_dir, db) = db();
    db.enqueue("linux", "poison", "s", 10, false).await.unwrap();
    db.enqueue("linux", "other", "s", 10, false).await.unwrap();
    let mut first = None;
    for attempt in 1..=MAX_LOST {
        let r = db.claim("linux", "w", Timestamp(5)).await.unwrap().unwrap();
        assert_eq!(r.job.job, "poison");
        assert_eq!(
            *first.get_or_insert(r.uuid),
            r.uuid,
            "one UUID for every attempt"
        );
        assert_eq!(r.job.lost, attempt - 1);
        match db.worker_lost(r.uuid).await.unwrap() {
            LostFate::Requeued => assert!(attempt < MAX_LOST),
            LostFate::GiveUp(g) => {
                assert_eq!(attempt, MAX_LOST);
                assert_eq!(g.uuid, r.uuid);
                // Still marked running until its result is recorded.
                assert_eq!(db.running().await.unwrap().len(), 1);
            }
            LostFate::Unknown => panic!("unknown"),
        }
    }
    assert_eq!(db.queues().await.unwrap()[0].jobs, vec!["other"]);
}

#[tokio::test]
async fn a_build_has_its_uuid_from_the_moment_it_is_queued() {
    let (_dir, db) = db();
    let uuid = db
        .enqueue_front("linux", "a", "s", 10)
        .await
        .unwrap()
        .unwrap();
    // Queued again (a due run, another execute): the same build.
    assert!(!db.enqueue("linux", "a", "s", 10, false).await.unwrap());
    assert_eq!(
        db.enqueue_front("linux", "a", "s", 10).await.unwrap(),
        Some(uuid)
    );
    assert!(db.is_queued(uuid).await.unwrap());
    assert_eq!(db.queued_on(uuid).await.unwrap().as_deref(), Some("linux"));
    let r = db.claim("linux", "w", Timestamp(5)).await.unwrap().unwrap();
    assert_eq!(r.uuid, uuid);
    assert!(!db.is_queued(uuid).await.unwrap());
    assert_eq!(db.worker_lost(uuid).await.unwrap(), LostFate::Requeued);
    assert!(db.is_queued(uuid).await.unwrap(), "requeued under its UUID");
}

#[tokio::test]
async fn dropped_platform_refuses_work() {
    let (_dir, db) = db();
    db.insert_job(&script_job("a", "linux")).await.unwrap();
    db.enqueue("linux", "a", "s", 10, false).await.unwrap();
    assert_eq!(
        db.drop_platform("linux").await.unwrap(),
        Some(vec!["a".to_owned()])
    );
    assert_eq!(
        db.drop_platform("linux").await.unwrap(),
        None,
        "already dropped"
    );
    assert!(db.queues().await.unwrap().is_empty());
    assert!(db.jobs().await.unwrap().is_empty());
    assert!(!db.enqueue("linux", "a", "s", 10, false).await.unwrap());
    assert!(db.undrop_platform("linux").await.unwrap());
    assert!(db.enqueue("linux", "a", "s", 10, false).await.unwrap());
}

#[tokio::test]
async fn queue_due_queues_once_and_moves_next_run() {
    let (_dir, db) = db();
    db.insert_job(&script_job("a", "linux")).await.unwrap();
    let platforms = db
        .queue_due(
            Timestamp(5_000),
            |_, _, now| Some(Timestamp(now.0 + 1)),
            |job| match &job.kind {
                JobKind::Script { platform, script } => {
                    vec![(platform.clone(), script.clone())]
                }
                JobKind::Orb { .. } => vec![],
            },
            60,
        )
        .await
        .unwrap();
    assert_eq!(platforms, vec!["linux"]);
    assert_eq!(
        db.job("a").await.unwrap().unwrap().next_run,
        Some(Timestamp(5_001))
    );
    assert_eq!(db.queues().await.unwrap()[0].jobs, vec!["a"]);
}

#[tokio::test]
async fn results_and_upload_spool() {
    let (_dir, db) = db();
    for (i, name) in ["old", "new"].iter().enumerate() {
        db.finish(
            &NewResult {
                uuid: Uuid::from_u128(i as u128 + 1),
                job: (*name).into(),
                platform: "linux".into(),
                started: Timestamp(i as i64 * 10),
                finished: Timestamp(i as i64 * 10 + 5),
                outcome: JobOutcome::Signalled(Signal::Kill),
                path: Some(PathBuf::from(format!("/x/{name}/full"))),
                attempts: 1,
            },
            true,
        )
        .await
        .unwrap();
    }
    let listed = db.results(None, 10).await.unwrap();
    assert_eq!(listed[0].summary.job, "new");
    assert_eq!(
        listed[1].summary.outcome,
        JobOutcome::Signalled(Signal::Kill)
    );
    let due = db.due_uploads(Timestamp(100), &[], 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.job.as_str()).collect::<Vec<_>>(),
        ["old", "new"]
    );
    db.upload_failed(due[0].uuid, "boom", Timestamp(1_000))
        .await
        .unwrap();
    db.upload_delivered(due[1].uuid, Timestamp(7))
        .await
        .unwrap();
    assert!(db
        .due_uploads(Timestamp(100), &[], 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.next_upload_due().await.unwrap(), Some(Timestamp(1_000)));
    let listed = db.results(None, 10).await.unwrap();
    assert_eq!(
        listed[0].summary.upload,
        UploadState::Delivered { at: Timestamp(7) }
    );
    assert_eq!(
        listed[1].summary.upload,
        UploadState::Pending {
            attempts: 1,
            last_error: Some("boom".into())
        }
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (dir, db) = db();
    drop(db);
    let path = dir.path().join("state.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        Db::open(&path),
        Err(DbError::TooNew { found: 99, .. })
    ));
}

#[tokio::test]
async fn a_build_without_a_record_is_indexed_but_never_uploaded() {
    let (_dir, db) = db();
    let uuid = Uuid::from_u128(9);
    let outcome = JobOutcome::Aborted("disk full: no room".into());
    db.finish(
        &NewResult {
            uuid,
            job: "j".into(),
            platform: "linux".into(),
            started: Timestamp(1),
            finished: Timestamp(2),
            outcome: outcome.clone(),
            path: None,
            attempts: 1,
        },
        true,
    )
    .await
    .unwrap();
    assert_eq!(db.result_path(uuid).await.unwrap(), None);
    let indexed = db.result(uuid).await.unwrap().expect("indexed");
    assert_eq!(indexed.outcome, outcome);
    assert_eq!(indexed.upload, UploadState::NotConfigured);
    assert_eq!(db.spool_unconfigured(Timestamp(3)).await.unwrap(), 0);
    assert!(db
        .due_uploads(Timestamp(100), &[], 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.result(Uuid::from_u128(10)).await.unwrap(), None);
}

#[tokio::test]
async fn a_full_database_refuses_the_change_and_works_again_with_room() {
    let (_dir, db) = db();
    // SQLite's own page limit gives the same SQLITE_FULL as a full disk.
    let pages: i64 = db
        .write(|c| Ok(c.pragma_query_value(None, "page_count", |r| r.get(0))?))
        .await
        .unwrap();
    db.write(move |c| Ok(c.pragma_update(None, "max_page_count", pages)?))
        .await
        .unwrap();
    let mut big = script_job("big", "linux");
    big.job.kind = JobKind::Script {
        platform: "linux".into(),
        script: "x".repeat(1 << 20),
    };
    let e = db.insert_job(&big).await.unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert!(db.jobs().await.unwrap().is_empty(), "reads still work");
    db.write(|c| Ok(c.pragma_update(None, "max_page_count", 1 << 30)?))
        .await
        .unwrap();
    assert!(db.insert_job(&big).await.unwrap());
    assert!(!corrupt("x").at(db.path()).is_disk_full());
}

/// Holds the owner thread inside a request until the returned sender is
/// used (or dropped), so the requests sent meanwhile pile up in its channel.
async fn hold_owner(db: &Db) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (started, is_started) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let held = db.write(move |_| {
        started.send(()).unwrap();
        let _ = released.recv();
        Ok(())
    });
    let held = tokio::spawn(async move { held.await.unwrap() });
    tokio::task::spawn_blocking(move || is_started.recv().unwrap())
        .await
        .unwrap();
    (release, held)
}

fn named(i: usize) -> ScheduleEntry {
    script_job(&format!("job-{i:03}"), "linux")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_are_durable_when_answered() {
    let (dir, db) = db();
    let (release, held) = hold_owner(&db).await;
    let before = db.commits();
    // Sent now, while a commit is in flight: they go together into the next.
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let entry = named(i);
            db.write(move |c| jobs::insert_job(c, &entry))
        })
        .collect();
    release.send(()).unwrap();
    for added in futures_util::future::join_all(writes).await {
        assert_eq!(added.unwrap(), 1);
    }
    held.await.unwrap();
    let commits = db.commits() - before;
    assert!(
        commits <= 2,
        "200 requests took {commits} commits (the held one and one more expected)"
    );
    // Answered means durable: another connection sees every one of them.
    let other = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let n: i64 = other
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_request_rolls_back_alone() {
    let (_dir, db) = db();
    let (release, held) = hold_owner(&db).await;
    let before = db.commits();
    let first = named(1);
    let ok_first = db.write(move |c| jobs::insert_job(c, &first));
    let failing_entry = named(2);
    let failing = db.write(move |c| {
        jobs::insert_job(c, &failing_entry)?;
        Err::<(), _>(corrupt("refused on purpose"))
    });
    let panicking_entry = named(3);
    let panicking = db.write(move |c| {
        jobs::insert_job(c, &panicking_entry)?;
        panic!("a bug in one request");
        #[allow(unreachable_code)]
        Ok(())
    });
    let last = named(4);
    let ok_last = db.write(move |c| jobs::insert_job(c, &last));
    release.send(()).unwrap();
    held.await.unwrap();
    assert_eq!(ok_first.await.unwrap(), 1);
    let e = failing.await.unwrap_err();
    assert!(matches!(e, DbError::Corrupt { .. }), "{e}");
    let e = panicking.await.unwrap_err();
    assert!(matches!(e, DbError::Panicked { .. }), "{e}");
    assert!(e.is_refused() && !e.is_disk_full());
    assert_eq!(ok_last.await.unwrap(), 1);
    assert_eq!(
        db.commits() - before,
        2,
        "the held request's commit, then one for all four"
    );
    let names: Vec<String> = db
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.name)
        .collect();
    assert_eq!(names, ["job-001", "job-004"]);
    // The owner lives on.
    assert!(db.insert_job(&named(5)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_answered_while_a_long_read_runs() {
    let (_dir, db) = db();
    let (started, is_started) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let read = db.read(move |c| {
        started.send(()).unwrap();
        let _ = released.recv();
        jobs::jobs(c)
    });
    let read = tokio::spawn(read);
    tokio::task::spawn_blocking(move || is_started.recv().unwrap())
        .await
        .unwrap();
    // The read holds its connection and a blocking thread; the write does
    // not wait for it (a deadline, not a sleep: it fails instead of hanging).
    let written =
        tokio::time::timeout(std::time::Duration::from_secs(30), db.insert_job(&named(1)))
            .await
            .expect("the write was answered while the read ran");
    assert!(written.unwrap());
    // Read-your-writes: a read after the answer sees the change.
    assert!(db.job("job-001").await.unwrap().is_some());
    release.send(()).unwrap();
    read.await.unwrap().unwrap();
}

#[tokio::test]
async fn schedule_inserts_and_queues_in_one_commit() {
    let (_dir, db) = db();
    let before = db.commits();
    let platforms = db
        .schedule(
            script_job("a", "linux"),
            Some(Timestamp(2_000)),
            vec![("linux".into(), "echo hi\n".into())],
            60,
        )
        .await
        .unwrap();
    assert_eq!(platforms, Some(vec!["linux".to_owned()]));
    assert_eq!(db.commits() - before, 1);
    assert_eq!(db.queues().await.unwrap()[0].jobs, vec!["a"]);
    assert_eq!(
        db.job("a").await.unwrap().unwrap().next_run,
        Some(Timestamp(2_000))
    );
    // A taken name changes nothing.
    let again = db
        .schedule(
            script_job("a", "freebsd"),
            None,
            vec![("freebsd".into(), "x".into())],
            60,
        )
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(db.queues().await.unwrap().len(), 1);
}

#[test]
fn per_request_queries_use_an_index() {
    // With 100 000 jobs, nothing a request or a scheduler tick runs may
    // scan the jobs or queue table.
    let (dir, db) = db();
    drop(db);
    let c = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    for sql in [
        "SELECT MIN(next_run) FROM jobs",
        "SELECT name FROM jobs WHERE next_run IS NOT NULL AND next_run <= 5",
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'orb')",
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'script' AND platform = 'x')",
        "SELECT EXISTS (SELECT 1 FROM queue WHERE uuid = x'00')",
        "SELECT platform FROM queue WHERE uuid = x'00'",
        "DELETE FROM queue WHERE job = 'x'",
        "SELECT job FROM queue WHERE platform = 'x' ORDER BY position LIMIT 1",
    ] {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !plan
                .iter()
                .any(|p| p.starts_with("SCAN jobs") || p.starts_with("SCAN queue")),
            "{sql}: {plan:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_readers_reads_run_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    let (_tmp, db) = db();
    let running = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut releases = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..MAX_READERS + 1 {
        let (release, released) = mpsc::channel::<()>();
        releases.push(release);
        let (running, started, most) = (running.clone(), started.clone(), most.clone());
        reads.push(tokio::spawn(db.read(move |_| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            started.fetch_add(1, Ordering::SeqCst);
            let _ = released.recv();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })));
    }
    let wait_started = |n: usize| {
        let started = started.clone();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while started.load(Ordering::SeqCst) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{n} reads never started"
                );
                tokio::task::yield_now().await;
            }
        }
    };
    // The first MAX_READERS run; the last waits for a slot, which the end
    // of the first read frees.
    wait_started(MAX_READERS).await;
    releases[0].send(()).unwrap();
    wait_started(MAX_READERS + 1).await;
    for release in &releases {
        let _ = release.send(());
    }
    for read in reads {
        read.await.unwrap().unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), MAX_READERS);
}

#[tokio::test]
async fn queueing_does_not_walk_the_queue() {
    let (dir, db) = db();
    let n = 5000;
    db.write(move |tx| {
        for i in 0..n {
            queues::enqueue_tx(tx, "p", &format!("job{i}"), "true", 60, false)?;
        }
        Ok(())
    })
    .await
    .unwrap();
    drop(db);
    let c = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let mut stmt = c.prepare(queues::QUEUE_ENDS).unwrap();
    let ends: (i64, i64) = stmt
        .query_row(["p"], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(ends, (0, n - 1));
    // A handful of steps for each end, not one per queued job.
    let steps = stmt.get_status(rusqlite::StatementStatus::VmStep);
    assert!(steps < 100, "{steps} steps for a queue of {n}");
}
