//! Queues scheduled jobs when they are due.
//!
//! One task sleeps until the earliest next run in the schedule (re-armed
//! whenever the schedule changes, and at least once a minute in case the
//! wall clock jumps), then queues every due job once — however many runs it
//! missed while the server was down — and moves its next run to the next
//! slot in phase (see [`protocol::trigger::Trigger::next_after`]).

use std::sync::Arc;
use std::time::Duration;

use protocol::message::{JobKind, JobSpec, Timestamp};
use protocol::trigger::Trigger;

use crate::db::DbError;
use crate::state::Shared;

/// The longest the scheduler sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How soon due jobs are tried again after a full disk refused them.
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

/// The scheduler task, on the wall clock.
pub async fn run(shared: Arc<Shared>) {
    run_with_clock(shared, Timestamp::now).await
}

/// The scheduler task reading the time from `now` (injected by tests, which
/// pair it with tokio's paused time).
pub async fn run_with_clock(shared: Arc<Shared>, now: impl Fn() -> Timestamp) {
    loop {
        let changed = shared.schedule_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // (Errors are reported by `Shared::fatal`.) A full disk refuses
        // the change: try again soon, space may be back.
        let mut max_sleep = MAX_SLEEP;
        match queue_due(&shared, now()).await {
            Ok(()) => {}
            Err(e) if e.is_disk_full() => max_sleep = DISK_FULL_RETRY,
            Err(_) => return,
        }
        let next = match shared.db.earliest_next_run().await {
            Ok(next) => next,
            Err(e) => {
                shared.refuse_or_stop(e);
                return;
            }
        };
        let sleep = next.map_or(max_sleep, |t| t.since(now()).min(max_sleep));
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Queues every job due at `now` and wakes the workers of the platforms that
/// got work.
pub async fn queue_due(shared: &Shared, now: Timestamp) -> Result<(), DbError> {
    let platforms = shared
        .db
        .queue_due(
            now,
            next_run,
            |job| scripts(shared, job),
            shared.config.job_timeout.as_secs(),
        )
        .await
        .map_err(|e| shared.refuse_or_stop(e))?;
    for platform in platforms {
        shared.wake_platform(&platform);
    }
    Ok(())
}

/// The next run after `now` of a job whose last scheduled run was
/// `scheduled`.
pub fn next_run(trigger: &Trigger, scheduled: Timestamp, now: Timestamp) -> Option<Timestamp> {
    trigger
        .next_after(scheduled.to_datetime(), now.to_datetime())
        .map(Timestamp::from_datetime)
}

/// The `(platform, script)` pairs a job is queued as: a script job on its
/// platform, an orb-build job on every platform with a template.
pub fn scripts(shared: &Shared, job: &JobSpec) -> Vec<(String, String)> {
    match &job.kind {
        JobKind::Script { platform, script } => vec![(platform.clone(), script.clone())],
        JobKind::Orb { opam_package } => shared.templates.render_all(opam_package),
    }
}

#[cfg(test)]
mod tests {
    //! The schedule with an injected clock: `now` is passed in, never read.

    use chrono::{TimeZone, Utc};
    use protocol::message::{JobKind, ScheduleEntry};

    use super::*;
    use crate::db::Db;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        Timestamp::from_datetime(Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap())
    }

    async fn tick(db: &Db, now: Timestamp) -> Vec<String> {
        let render = |job: &JobSpec| match &job.kind {
            JobKind::Script { platform, script } => vec![(platform.clone(), script.clone())],
            JobKind::Orb { .. } => Vec::new(),
        };
        db.queue_due(now, next_run, render, 60).await.unwrap()
    }

    /// Runs the head of the queue (so the next tick can queue the job again).
    async fn run_queued(db: &Db) -> usize {
        let mut n = 0;
        while let Some(r) = db.claim("linux", "w", Timestamp(0)).await.unwrap() {
            db.finish(
                &crate::db::NewResult {
                    uuid: r.uuid,
                    job: r.job.job,
                    platform: "linux".into(),
                    started: Timestamp(0),
                    finished: Timestamp(0),
                    outcome: protocol::message::JobOutcome::Exited(0),
                    path: Some("/nowhere".into()),
                    attempts: 1,
                },
                false,
            )
            .await
            .unwrap();
            n += 1;
        }
        n
    }

    async fn schedule(db: &Db, trigger: Trigger, now: Timestamp) {
        db.insert_job(&ScheduleEntry {
            job: JobSpec {
                name: "job".into(),
                kind: JobKind::Script {
                    platform: "linux".into(),
                    script: "true".into(),
                },
            },
            trigger,
            next_run: Some(now),
            timeout_secs: None,
        })
        .await
        .unwrap();
    }

    async fn next(db: &Db) -> Option<Timestamp> {
        db.job("job").await.unwrap().unwrap().next_run
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_daily_job_keeps_its_phase_through_a_busy_period_and_downtime() {
        let (_dir, db) = db();
        let t0 = at(2025, 1, 1, 3, 0);
        schedule(&db, Trigger::Daily, t0).await;
        assert_eq!(tick(&db, t0).await, ["linux"], "queued at once");
        assert_eq!(next(&db).await, Some(at(2025, 1, 2, 3, 0)));
        assert_eq!(run_queued(&db).await, 1);

        // A busy server gets to it 47 minutes late: the phase stays 03:00.
        assert!(
            tick(&db, at(2025, 1, 2, 2, 59)).await.is_empty(),
            "not due yet"
        );
        assert_eq!(tick(&db, at(2025, 1, 2, 3, 47)).await, ["linux"]);
        assert_eq!(next(&db).await, Some(at(2025, 1, 3, 3, 0)));
        assert_eq!(run_queued(&db).await, 1);

        // Down from Jan 3 to Jan 6 14:27: one run, next slot still at 03:00.
        assert_eq!(tick(&db, at(2025, 1, 6, 14, 27)).await, ["linux"]);
        assert_eq!(
            run_queued(&db).await,
            1,
            "queued once, not once per missed day"
        );
        assert_eq!(next(&db).await, Some(at(2025, 1, 7, 3, 0)));
    }

    #[tokio::test]
    async fn reschedule_to_tomorrow_runs_tomorrow_not_now() {
        let (_dir, db) = db();
        let now = at(2025, 6, 1, 12, 0);
        schedule(&db, Trigger::Hourly, now).await;
        tick(&db, now).await;
        run_queued(&db).await;
        let tomorrow = at(2025, 6, 2, 9, 30);
        db.reschedule("job", tomorrow, Some(&Trigger::Weekly))
            .await
            .unwrap();
        for minutes in [0, 60, 600, 1289] {
            let later = now.saturating_add(std::time::Duration::from_secs(minutes * 60));
            assert!(
                tick(&db, later).await.is_empty(),
                "nothing before NEXT ({minutes} min)"
            );
        }
        assert_eq!(tick(&db, tomorrow).await, ["linux"], "runs exactly at NEXT");
        assert_eq!(
            next(&db).await,
            Some(at(2025, 6, 9, 9, 30)),
            "then weekly from NEXT"
        );
    }

    #[tokio::test]
    async fn never_runs_once_and_cron_follows_its_expression() {
        let (_dir, db) = db();
        let now = at(2025, 2, 27, 10, 0);
        schedule(&db, Trigger::Never, now).await;
        assert_eq!(tick(&db, now).await, ["linux"]);
        assert_eq!(next(&db).await, None);
        run_queued(&db).await;
        assert!(tick(&db, at(2030, 1, 1, 0, 0)).await.is_empty());

        db.reschedule("job", now, Some(&Trigger::cron("0 0 29 2 *").unwrap()))
            .await
            .unwrap();
        tick(&db, now).await;
        assert_eq!(next(&db).await, Some(at(2028, 2, 29, 0, 0)), "next Feb 29");
    }

    /// A test clock: a fixed start plus tokio's (paused) time since then.
    fn paused_clock(start: Timestamp) -> impl Fn() -> Timestamp + Clone {
        let origin = tokio::time::Instant::now();
        move || start.saturating_add(origin.elapsed())
    }

    async fn queued(db: &Db) -> Vec<String> {
        db.queues()
            .await
            .unwrap()
            .into_iter()
            .flat_map(|q| q.jobs)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_cron_job_is_queued_at_its_slot_not_on_a_coarse_tick() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let t0 = at(2025, 1, 1, 3, 0);
        schedule(&db, Trigger::cron("*/3 * * * * *").unwrap(), t0).await;
        let shared = Arc::new(Shared::new(
            crate::config::Config::new(dir.path().to_owned()),
            db,
            tokio_util::sync::CancellationToken::new(),
        ));
        let clock = paused_clock(t0);
        let task = tokio::spawn(run_with_clock(shared.clone(), clock.clone()));
        let origin = tokio::time::Instant::now();
        let ms = Duration::from_millis;

        // Queued at once (next_run is t0), then at every 3-second slot:
        // 1 ms before a slot nothing is queued, 1 ms after it the job is.
        tokio::time::sleep_until(origin + ms(1)).await;
        assert_eq!(queued(&shared.db).await, ["job"], "queued at once");
        assert_eq!(run_queued(&shared.db).await, 1);
        for slot in 1..=4u64 {
            tokio::time::sleep_until(origin + ms(3000 * slot - 1)).await;
            assert!(queued(&shared.db).await.is_empty(), "before slot {slot}");
            tokio::time::sleep_until(origin + ms(3000 * slot + 1)).await;
            assert_eq!(queued(&shared.db).await, ["job"], "at slot {slot}");
            assert_eq!(run_queued(&shared.db).await, 1);
            assert_eq!(
                next(&shared.db).await,
                Some(t0.saturating_add(Duration::from_secs(3 * (slot + 1)))),
                "next slot in phase"
            );
        }
        assert_eq!(clock().since(t0), ms(12_001), "the injected clock ran");
        shared.shutdown.cancel();
        task.await.unwrap();
    }
}
