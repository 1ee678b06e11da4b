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
