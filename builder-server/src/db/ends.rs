//! Builds that end without running to a result.
//!
//! Every UUID the server hands out ends in exactly one of three ways:
//! - a result, with or without a record ([`super::results`]);
//! - a recorded cancellation: a queued build removed by `cancel`,
//!   `unschedule` or `drop-platform` before it ran;
//! - a merge into another build of the same job on the same platform, when
//!   a queue can hold only one of them (a lost build requeued beside a run
//!   of its job that was already queued; `update --platform` moving a run
//!   onto a platform where its job waits already). `observe` of the merged
//!   UUID follows the build it was merged into.
//!
//! The last two are index entries like a result without a record: outcome
//! aborted with a message that says what happened, no record, never
//! uploaded, and marked (`cancelled`, `merged_into`) so that
//! `observe-latest` does not take them for a build.

use protocol::message::{JobOutcome, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::results::{self, NewResult};
use super::{parse_uuid, query_all, Db, DbError, SqlError};

/// Which queued builds to cancel.
#[derive(Debug, Clone, Copy)]
pub enum Queued<'a> {
    /// One build.
    Build(Uuid),
    /// Every queued run of a job.
    Job(&'a str),
    /// Every build queued on a platform.
    Platform(&'a str),
}

/// A queued build that was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The build.
    pub uuid: Uuid,
    /// Its job.
    pub job: String,
    /// The platform whose queue it was in.
    pub platform: String,
}

impl Db {
    /// Cancels a build that waits in a queue: it leaves the queue and is
    /// recorded cancelled with `reason`. `Ok(None)` when it is not queued.
    pub async fn cancel_queued(
        &self,
        uuid: Uuid,
        reason: &str,
    ) -> Result<Option<Cancelled>, DbError> {
        let reason = reason.to_owned();
        self.write(move |tx| {
            Ok(cancel_queued(tx, Queued::Build(uuid), &reason, Timestamp::now())?.pop())
        })
        .await
    }

    /// The build `uuid` was merged into, if it was.
    pub async fn merged_into(&self, uuid: Uuid) -> Result<Option<Uuid>, DbError> {
        self.read(move |c| merged_into(c, uuid)).await
    }
}

/// Removes the builds `which` selects from their queues and records each
/// cancelled with `reason`. Returns them.
pub fn cancel_queued(
    tx: &Connection,
    which: Queued<'_>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<Cancelled>, SqlError> {
    let (filter, key): (&str, Box<dyn rusqlite::ToSql>) = match which {
        Queued::Build(uuid) => ("uuid = ?1", Box::new(uuid.as_bytes().to_vec())),
        Queued::Job(job) => ("job = ?1", Box::new(job.to_owned())),
        Queued::Platform(platform) => ("platform = ?1", Box::new(platform.to_owned())),
    };
    let rows = query_all(
        tx,
        &format!("SELECT uuid, job, platform, lost FROM queue WHERE {filter}"),
        [&key],
        |r| {
            Ok((
                r.get::<_, Option<Vec<u8>>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
    )?;
    let mut cancelled = Vec::with_capacity(rows.len());
    for (uuid, job, platform, lost) in rows {
        tx.execute(
            "DELETE FROM queue WHERE platform = ?1 AND job = ?2",
            params![platform, job],
        )?;
        // Queued by a server before UUIDs were given at queue time: nobody
        // was told of it, so there is nothing to account for.
        let Some(uuid) = uuid else { continue };
        let uuid = parse_uuid(&uuid)?;
        let ended = Ended {
            uuid,
            job: &job,
            platform: &platform,
            attempts: lost as u32,
        };
        ended.record(tx, now, reason, None)?;
        cancelled.push(Cancelled {
            uuid,
            job,
            platform,
        });
    }
    Ok(cancelled)
}

/// `platform`'s queue can hold one run of `job`: when it holds one other
/// than `into`, that run is recorded as merged into `into` and leaves the
/// queue. Returns the script and timeout it had (the newest the job was
/// queued with), for the caller to keep.
pub fn merge_queued(
    tx: &Connection,
    platform: &str,
    job: &str,
    into: Uuid,
    now: Timestamp,
) -> Result<Option<(String, u64)>, SqlError> {
    let queued = tx
        .query_row(
            "SELECT uuid, script, timeout_secs, lost FROM queue WHERE platform = ?1 AND job = ?2",
            params![platform, job],
            |r| {
                Ok((
                    r.get::<_, Option<Vec<u8>>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((uuid, script, timeout, lost)) = queued else {
        return Ok(None);
    };
    tx.execute(
        "DELETE FROM queue WHERE platform = ?1 AND job = ?2",
        params![platform, job],
    )?;
    if let Some(uuid) = uuid {
        let uuid = parse_uuid(&uuid)?;
        if uuid != into {
            let ended = Ended {
                uuid,
                job,
                platform,
                attempts: lost as u32,
            };
            ended.record(tx, now, &format!("merged into {into}"), Some(into))?;
        }
    }
    Ok(Some((script, timeout as u64)))
}

/// The build `uuid` was merged into, if it was.
pub fn merged_into(tx: &Connection, uuid: Uuid) -> Result<Option<Uuid>, SqlError> {
    let into: Option<Option<Vec<u8>>> = tx
        .query_row(
            "SELECT merged_into FROM results WHERE uuid = ?1",
            [uuid.as_bytes()],
            |r| r.get(0),
        )
        .optional()?;
    into.flatten().map(|b| parse_uuid(&b)).transpose()
}

/// A queued build that ends without running.
struct Ended<'a> {
    uuid: Uuid,
    job: &'a str,
    platform: &'a str,
    /// Attempts that ran before (workers lost).
    attempts: u32,
}

impl Ended<'_> {
    /// Indexes the end: aborted with `message`, no record, never uploaded;
    /// marked cancelled, or merged into `into`.
    fn record(
        &self,
        tx: &Connection,
        now: Timestamp,
        message: &str,
        into: Option<Uuid>,
    ) -> Result<(), SqlError> {
        let result = NewResult {
            uuid: self.uuid,
            job: self.job.to_owned(),
            platform: self.platform.to_owned(),
            started: now,
            finished: now,
            outcome: JobOutcome::Aborted(message.to_owned()),
            path: None,
            attempts: self.attempts,
        };
        results::finish(tx, &result, false)?;
        tx.execute(
            "UPDATE results SET merged_into = ?2, cancelled = ?3 WHERE uuid = ?1",
            params![
                self.uuid.as_bytes(),
                into.map(|u| u.as_bytes().to_vec()),
                into.is_none()
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use protocol::message::{JobKind, JobSpec, ScheduleEntry};
    use protocol::trigger::Trigger;

    use super::*;
    use crate::db::{LostFate, Running};

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    fn stored(r: &Running) -> NewResult {
        NewResult {
            uuid: r.uuid,
            job: r.job.job.clone(),
            platform: r.job.platform.clone(),
            started: r.assigned,
            finished: r.assigned,
            outcome: JobOutcome::Exited(0),
            path: None,
            attempts: r.job.lost + 1,
        }
    }

    /// How `uuid` ended: follows merges to the build that ran in its place.
    async fn end_of(db: &Db, mut uuid: Uuid) -> Option<(Uuid, JobOutcome)> {
        for _ in 0..100 {
            let result = db.result(uuid).await.unwrap()?;
            match db.merged_into(uuid).await.unwrap() {
                Some(into) => uuid = into,
                None => return Some((uuid, result.outcome)),
            }
        }
        panic!("a merge cycle from {uuid}");
    }

    #[tokio::test]
    async fn a_lost_build_requeued_beside_a_queued_run_merges_it_visibly() {
        // The first case: A runs, `execute` queues B, A's worker dies.
        let (_dir, db) = db();
        db.enqueue("linux", "j", "s", 10, false).await.unwrap();
        let a = db.claim("linux", "w", Timestamp(5)).await.unwrap().unwrap();
        let b = db
            .enqueue_front("linux", "j", "s2", 10)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(a.uuid, b);
        assert_eq!(db.worker_lost(a.uuid).await.unwrap(), LostFate::Requeued);
        // A waits again, with the newest script; B is recorded merged into A.
        let again = db.claim("linux", "w", Timestamp(6)).await.unwrap().unwrap();
        assert_eq!((again.uuid, again.job.script.as_str()), (a.uuid, "s2"));
        assert_eq!(db.merged_into(b).await.unwrap(), Some(a.uuid));
        let b_result = db.result(b).await.unwrap().expect("B is indexed");
        assert_eq!(
            b_result.outcome,
            JobOutcome::Aborted(format!("merged into {}", a.uuid))
        );
        db.finish(&stored(&again), false).await.unwrap();
        assert_eq!(end_of(&db, b).await, Some((a.uuid, JobOutcome::Exited(0))));
        // A merged build is not "the latest build" of its job.
        assert_eq!(
            db.latest_result(None, Some("j")).await.unwrap().unwrap().0,
            a.uuid
        );
    }

    #[tokio::test]
    async fn two_running_builds_of_one_job_lost_at_once_both_end() {
        // The second case: A and B run on two workers, the server
        // is killed; recovery requeues both.
        let (dir, db) = db();
        db.enqueue("linux", "j", "s", 10, false).await.unwrap();
        let a = db
            .claim("linux", "w1", Timestamp(5))
            .await
            .unwrap()
            .unwrap();
        db.enqueue_front("linux", "j", "s", 10).await.unwrap();
        let b = db
            .claim("linux", "w2", Timestamp(6))
            .await
            .unwrap()
            .unwrap();
        drop(db);
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        for r in db.running().await.unwrap() {
            assert_eq!(db.worker_lost(r.uuid).await.unwrap(), LostFate::Requeued);
        }
        let c = db.claim("linux", "w", Timestamp(7)).await.unwrap().unwrap();
        db.finish(&stored(&c), false).await.unwrap();
        assert!(db
            .claim("linux", "w", Timestamp(8))
            .await
            .unwrap()
            .is_none());
        for uuid in [a.uuid, b.uuid] {
            assert_eq!(
                end_of(&db, uuid).await,
                Some((c.uuid, JobOutcome::Exited(0)))
            );
        }
    }

    #[tokio::test]
    async fn cancel_unschedule_and_drop_record_each_queued_build() {
        let (_dir, db) = db();
        let entry = |name: &str| ScheduleEntry {
            job: JobSpec {
                name: name.into(),
                kind: JobKind::Script {
                    platform: "linux".into(),
                    script: "true".into(),
                },
            },
            trigger: Trigger::Daily,
            next_run: None,
            timeout_secs: None,
        };
        for job in ["a", "b", "c"] {
            db.insert_job(&entry(job)).await.unwrap();
        }
        let a = db
            .enqueue_front("linux", "a", "s", 10)
            .await
            .unwrap()
            .unwrap();
        let b = db
            .enqueue_front("linux", "b", "s", 10)
            .await
            .unwrap()
            .unwrap();
        let c = db
            .enqueue_front("linux", "c", "s", 10)
            .await
            .unwrap()
            .unwrap();
        let cancelled = db.cancel_queued(a, "cancelled").await.unwrap().unwrap();
        assert_eq!((cancelled.uuid, cancelled.job.as_str()), (a, "a"));
        assert_eq!(db.cancel_queued(a, "cancelled").await.unwrap(), None);
        assert!(db.delete_job("b").await.unwrap());
        db.drop_platform("linux").await.unwrap();
        for (uuid, message) in [
            (a, "cancelled".to_owned()),
            (b, "cancelled: job b was unscheduled".to_owned()),
            (c, "cancelled: platform linux was dropped".to_owned()),
        ] {
            let r = db.result(uuid).await.unwrap().expect("indexed");
            assert_eq!(r.outcome, JobOutcome::Aborted(message));
            assert_eq!(db.merged_into(uuid).await.unwrap(), None);
            assert_eq!(db.result_path(uuid).await.unwrap(), None, "no record");
        }
        assert!(db.latest_result(None, None).await.unwrap().is_none());
        assert!(db
            .due_uploads(Timestamp(i64::MAX), &[], 10)
            .await
            .unwrap()
            .is_empty());
    }

    /// A small deterministic generator (xorshift), so a failing seed can be
    /// run again.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Every UUID the queues ever held, and those running now.
    async fn seen(db: &Db, into: &mut BTreeSet<Uuid>) {
        let queued = db
            .read(|c| {
                query_all(
                    c,
                    "SELECT uuid FROM queue WHERE uuid IS NOT NULL",
                    [],
                    |r| r.get::<_, Vec<u8>>(0),
                )
            })
            .await
            .unwrap();
        into.extend(queued.iter().map(|b| parse_uuid(b).unwrap()));
        into.extend(db.running().await.unwrap().iter().map(|r| r.uuid));
    }

    #[tokio::test]
    async fn every_acknowledged_uuid_ends_whatever_the_interleaving() {
        const JOBS: [&str; 3] = ["a", "b", "c"];
        const PLATFORMS: [&str; 2] = ["linux", "bsd"];
        for seed in 1..=20u64 {
            let (dir, mut db) = db();
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut acknowledged = BTreeSet::new();
            let mut finished: HashMap<Uuid, ()> = HashMap::new();
            for _ in 0..60 {
                let job = JOBS[rng.below(JOBS.len())];
                let platform = PLATFORMS[rng.below(PLATFORMS.len())];
                match rng.below(8) {
                    // The scheduler: at the back, no UUID told to anyone,
                    // but `info` shows it once it runs.
                    0 => {
                        db.enqueue(platform, job, "s", 10, false).await.unwrap();
                    }
                    // `execute`: the UUID is printed.
                    1 | 2 => {
                        let uuid = db.enqueue_front(platform, job, "s", 10).await.unwrap();
                        acknowledged.extend(uuid);
                    }
                    3 | 4 => {
                        if let Some(r) = db.claim(platform, "w", Timestamp(1)).await.unwrap() {
                            acknowledged.insert(r.uuid);
                        }
                    }
                    5 => {
                        let running = db.running().await.unwrap();
                        if !running.is_empty() {
                            let r = &running[rng.below(running.len())];
                            if let LostFate::GiveUp(r) = db.worker_lost(r.uuid).await.unwrap() {
                                db.finish(&stored(&r), false).await.unwrap();
                            }
                        }
                    }
                    6 => {
                        let running = db.running().await.unwrap();
                        if !running.is_empty() {
                            let r = &running[rng.below(running.len())];
                            db.finish(&stored(r), false).await.unwrap();
                            assert!(finished.insert(r.uuid, ()).is_none(), "stored twice");
                        }
                    }
                    // The server is killed and starts again: recovery.
                    _ => {
                        drop(db);
                        db = Db::open(&dir.path().join("state.db")).unwrap();
                        for r in db.running().await.unwrap() {
                            if let LostFate::GiveUp(r) = db.worker_lost(r.uuid).await.unwrap() {
                                db.finish(&stored(&r), false).await.unwrap();
                            }
                        }
                    }
                }
                seen(&db, &mut acknowledged).await;
            }
            // The running builds end, then workers drain every queue.
            for r in db.running().await.unwrap() {
                db.finish(&stored(&r), false).await.unwrap();
            }
            loop {
                let mut any = false;
                for platform in PLATFORMS {
                    while let Some(r) = db.claim(platform, "w", Timestamp(2)).await.unwrap() {
                        db.finish(&stored(&r), false).await.unwrap();
                        any = true;
                    }
                }
                if !any {
                    break;
                }
            }
            for uuid in &acknowledged {
                let end = end_of(&db, *uuid).await;
                assert!(end.is_some(), "seed {seed}: build {uuid} has no end");
            }
        }
    }
}
