//! Per-platform queues (`queue`) and the builds handed to workers
//! (`running`).

use protocol::message::{QueueInfo, RunningBuild, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{parse_uuid, query_all, Db, DbError, SqlError};

/// How many lost workers in a row make a build aborted instead of requeued.
pub const MAX_LOST: u32 = 3;

impl Db {
    /// Puts a job in a platform's queue, at the back or the front. A job
    /// already queued there stays where it is (back) or moves to the front.
    /// `Ok(true)` if the queue changed.
    pub async fn enqueue(
        &self,
        platform: &str,
        job: &str,
        script: &str,
        timeout_secs: u64,
        front: bool,
    ) -> Result<bool, DbError> {
        let (platform, job, script) = (platform.to_owned(), job.to_owned(), script.to_owned());
        let queued = self
            .write(move |tx| enqueue_tx(tx, &platform, &job, &script, timeout_secs, front))
            .await?;
        Ok(queued.is_some_and(|(_, changed)| changed))
    }

    /// Puts a job at the front of a platform's queue (`execute`) and
    /// returns the UUID its build will have: a new one, or that of the run
    /// already queued there. `Ok(None)` if the platform is dropped.
    pub async fn enqueue_front(
        &self,
        platform: &str,
        job: &str,
        script: &str,
        timeout_secs: u64,
    ) -> Result<Option<Uuid>, DbError> {
        let (platform, job, script) = (platform.to_owned(), job.to_owned(), script.to_owned());
        let queued = self
            .write(move |tx| enqueue_tx(tx, &platform, &job, &script, timeout_secs, true))
            .await?;
        Ok(queued.map(|(uuid, _)| uuid))
    }

    /// Whether the build `uuid` waits in a queue.
    pub async fn is_queued(&self, uuid: Uuid) -> Result<bool, DbError> {
        self.read(move |c| is_queued(c, uuid)).await
    }

    /// The platform whose queue holds the build `uuid`, if it is queued.
    pub async fn queued_on(&self, uuid: Uuid) -> Result<Option<String>, DbError> {
        self.read(move |c| queued_on(c, uuid)).await
    }

    /// Whether the build `uuid` waits in a queue or has been handed to a
    /// worker and is not finished.
    pub async fn is_pending(&self, uuid: Uuid) -> Result<bool, DbError> {
        self.read(move |c| is_pending(c, uuid)).await
    }

    /// Every platform's queue, front first; platforms in name order.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, DbError> {
        self.read(queues).await
    }

    /// Takes the head of `platform`'s queue and records it as running on
    /// `worker`, in one transaction.
    pub async fn claim(
        &self,
        platform: &str,
        worker: &str,
        now: Timestamp,
    ) -> Result<Option<Running>, DbError> {
        let (platform, worker) = (platform.to_owned(), worker.to_owned());
        self.write(move |tx| claim(tx, &platform, &worker, now))
            .await
    }

    /// A build's worker was lost: requeue it at the front, or hand it back
    /// for recording as aborted (see [`MAX_LOST`]).
    pub async fn worker_lost(&self, uuid: Uuid) -> Result<LostFate, DbError> {
        self.write(move |tx| worker_lost(tx, uuid)).await
    }

    /// Every build marked running, oldest first.
    pub async fn running(&self) -> Result<Vec<Running>, DbError> {
        self.read(running).await
    }

    /// Running builds in `info` form.
    pub async fn running_info(&self) -> Result<Vec<RunningBuild>, DbError> {
        self.read(running_info).await
    }

    /// Every queued job with its script, platforms in name order, each
    /// queue front first (what a reference client's `info` shows).
    pub async fn queue_entries(&self) -> Result<Vec<QueuedJob>, DbError> {
        self.read(queue_entries).await
    }
}

/// A queued job as a worker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job's name.
    pub job: String,
    /// The platform whose queue it was in.
    pub platform: String,
    /// The script to run (an orb job's template, filled in).
    pub script: String,
    /// Its timeout.
    pub timeout_secs: u64,
    /// How many workers it lost in a row before this attempt.
    pub lost: u32,
}

/// A build handed to a worker, as persisted in `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The build.
    pub uuid: Uuid,
    /// What runs.
    pub job: QueuedJob,
    /// When it was handed out.
    pub assigned: Timestamp,
    /// Which worker has it.
    pub worker: String,
}

/// What happens to a build whose worker was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostFate {
    /// Back at the front of its queue.
    Requeued,
    /// Lost its worker too often; the caller records it as aborted.
    GiveUp(Running),
    /// It was not running (already finished or requeued).
    Unknown,
}

/// Queues a job; returns the UUID of its queued build and whether the
/// queue changed, or `None` if the platform is dropped.
/// The first and last position in a platform's queue. Two subqueries:
/// SQLite reads one end of the index for a lone `MIN` or `MAX`, but walks
/// every row of the platform for both in one query (a schedule call then
/// slowed down with the length of the queue).
pub(crate) const QUEUE_ENDS: &str = "SELECT (SELECT MIN(position) FROM queue WHERE platform = ?1),
        (SELECT MAX(position) FROM queue WHERE platform = ?1)";

pub(crate) fn enqueue_tx(
    tx: &Connection,
    platform: &str,
    job: &str,
    script: &str,
    timeout_secs: u64,
    front: bool,
) -> Result<Option<(Uuid, bool)>, SqlError> {
    let dropped: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM dropped_platforms WHERE platform = ?1)",
        [platform],
        |r| r.get(0),
    )?;
    if dropped {
        return Ok(None);
    }
    let (min, max): (Option<i64>, Option<i64>) = tx
        .prepare_cached(QUEUE_ENDS)?
        .query_row([platform], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let position = if front {
        min.map_or(0, |m| m - 1)
    } else {
        max.map_or(0, |m| m + 1)
    };
    let fresh = Uuid::new_v4();
    let n = if front {
        tx.execute(
            "INSERT INTO queue (platform, job, position, script, timeout_secs, uuid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (platform, job) DO UPDATE SET position = excluded.position,
                 script = excluded.script, timeout_secs = excluded.timeout_secs,
                 uuid = COALESCE(queue.uuid, excluded.uuid)",
            params![platform, job, position, script, timeout_secs as i64, fresh.as_bytes()],
        )
    } else {
        tx.execute(
            "INSERT OR IGNORE INTO queue (platform, job, position, script, timeout_secs, uuid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![platform, job, position, script, timeout_secs as i64, fresh.as_bytes()],
        )
    }?;
    let uuid: Option<Vec<u8>> = tx.query_row(
        "SELECT uuid FROM queue WHERE platform = ?1 AND job = ?2",
        params![platform, job],
        |r| r.get(0),
    )?;
    let uuid = match uuid {
        Some(bytes) => parse_uuid(&bytes)?,
        // Queued by a server before UUIDs were assigned at queue time.
        None => {
            tx.execute(
                "UPDATE queue SET uuid = ?3 WHERE platform = ?1 AND job = ?2",
                params![platform, job, fresh.as_bytes()],
            )?;
            fresh
        }
    };
    Ok(Some((uuid, n == 1)))
}

/// Whether the build `uuid` waits in a queue.
pub fn is_queued(tx: &Connection, uuid: Uuid) -> Result<bool, SqlError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM queue WHERE uuid = ?1)",
        [uuid.as_bytes()],
        |r| r.get(0),
    )?)
}

/// The platform whose queue holds the build `uuid`, if it is queued.
pub fn queued_on(tx: &Connection, uuid: Uuid) -> Result<Option<String>, SqlError> {
    Ok(tx
        .query_row(
            "SELECT platform FROM queue WHERE uuid = ?1",
            [uuid.as_bytes()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether the build `uuid` waits in a queue or has been handed to a
/// worker and is not finished: between the claim and the start of its
/// live build an observer must wait for it, not be told it is unknown.
pub fn is_pending(tx: &Connection, uuid: Uuid) -> Result<bool, SqlError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM queue WHERE uuid = ?1)
             OR EXISTS (SELECT 1 FROM running WHERE uuid = ?1)",
        [uuid.as_bytes()],
        |r| r.get(0),
    )?)
}

/// Every platform's queue, front first; platforms in name order.
pub fn queues(tx: &Connection) -> Result<Vec<QueueInfo>, SqlError> {
    let mut stmt =
        tx.prepare_cached("SELECT platform, job FROM queue ORDER BY platform, position")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut queues: Vec<QueueInfo> = Vec::new();
    for row in rows {
        let (platform, job) = row?;
        match queues.last_mut() {
            Some(q) if q.platform == platform => q.jobs.push(job),
            _ => queues.push(QueueInfo {
                platform,
                jobs: vec![job],
            }),
        }
    }
    Ok(queues)
}

/// Takes the head of `platform`'s queue and records it as running on
/// `worker` under a fresh UUID, in one transaction.
pub fn claim(
    tx: &Connection,
    platform: &str,
    worker: &str,
    now: Timestamp,
) -> Result<Option<Running>, SqlError> {
    let head = tx
        .query_row(
            "SELECT job, script, timeout_secs, lost, uuid FROM queue WHERE platform = ?1 ORDER BY position LIMIT 1",
            [platform],
            |r| {
                Ok((
                    QueuedJob {
                        job: r.get(0)?,
                        platform: platform.to_owned(),
                        script: r.get(1)?,
                        timeout_secs: r.get::<_, i64>(2)? as u64,
                        lost: r.get::<_, i64>(3)? as u32,
                    },
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((job, uuid)) = head else {
        return Ok(None);
    };
    let uuid = match uuid {
        Some(bytes) => parse_uuid(&bytes)?,
        None => Uuid::new_v4(),
    };
    tx.execute(
        "DELETE FROM queue WHERE platform = ?1 AND job = ?2",
        params![platform, job.job],
    )?;
    let running = Running {
        uuid,
        job,
        assigned: now,
        worker: worker.to_owned(),
    };
    tx.execute(
        "INSERT INTO running (uuid, job, platform, script, timeout_secs, lost, assigned, worker)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            running.uuid.as_bytes(),
            running.job.job,
            running.job.platform,
            running.job.script,
            running.job.timeout_secs as i64,
            running.job.lost as i64,
            running.assigned.0,
            running.worker,
        ],
    )?;
    Ok(Some(running))
}

/// A build's worker was lost: put it back at the front of its queue, or
/// hand it back for recording as aborted when it lost [`MAX_LOST`]
/// workers in a row. A run of the same job already queued there is merged
/// into it (see [`super::ends`]): no UUID is ever overwritten.
pub fn worker_lost(tx: &Connection, uuid: Uuid) -> Result<LostFate, SqlError> {
    let Some(running) = running_tx(tx, uuid)? else {
        return Ok(LostFate::Unknown);
    };
    let lost = running.job.lost + 1;
    if lost >= MAX_LOST {
        // The caller records the result and removes the row in
        // `finish`; keep it until then so a crash requeues it.
        return Ok(LostFate::GiveUp(running));
    }
    tx.execute("DELETE FROM running WHERE uuid = ?1", [uuid.as_bytes()])?;
    let job = &running.job;
    // The queue holds one run of a job: one already waiting is merged into
    // this build, which keeps its UUID, and takes the newest script.
    let (script, timeout_secs) =
        super::ends::merge_queued(tx, &job.platform, &job.job, uuid, Timestamp::now())?
            .unwrap_or_else(|| (job.script.clone(), job.timeout_secs));
    let (min, _): (Option<i64>, Option<i64>) = tx
        .prepare_cached(QUEUE_ENDS)?
        .query_row([&job.platform], |r| Ok((r.get(0)?, r.get(1)?)))?;
    tx.execute(
        "INSERT INTO queue (platform, job, position, script, timeout_secs, lost, uuid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            job.platform,
            job.job,
            min.map_or(0, |m| m - 1),
            script,
            timeout_secs as i64,
            lost as i64,
            uuid.as_bytes(),
        ],
    )?;
    Ok(LostFate::Requeued)
}

fn running_tx(tx: &Connection, uuid: Uuid) -> Result<Option<Running>, SqlError> {
    tx.query_row(
        &format!("{RUNNING_SELECT} WHERE uuid = ?1"),
        [uuid.as_bytes()],
        raw_running,
    )
    .optional()?
    .map(running_row)
    .transpose()
}

/// Every build marked running, oldest first.
pub fn running(tx: &Connection) -> Result<Vec<Running>, SqlError> {
    let raws = query_all(
        tx,
        &format!("{RUNNING_SELECT} ORDER BY assigned"),
        [],
        raw_running,
    )?;
    raws.into_iter().map(running_row).collect()
}

/// Running builds in `info` form.
pub fn running_info(tx: &Connection) -> Result<Vec<RunningBuild>, SqlError> {
    Ok(running(tx)?
        .into_iter()
        .map(|r| RunningBuild {
            uuid: r.uuid,
            job: r.job.job,
            platform: r.job.platform,
            started: r.assigned,
            worker: r.worker,
        })
        .collect())
}

/// Every queued job with its script, platforms in name order, each
/// queue front first (what a reference client's `info` shows).
pub fn queue_entries(tx: &Connection) -> Result<Vec<QueuedJob>, SqlError> {
    query_all(
        tx,
        "SELECT job, platform, script, timeout_secs, lost FROM queue ORDER BY platform, position",
        [],
        |r| {
            Ok(QueuedJob {
                job: r.get(0)?,
                platform: r.get(1)?,
                script: r.get(2)?,
                timeout_secs: r.get::<_, i64>(3)? as u64,
                lost: r.get::<_, i64>(4)? as u32,
            })
        },
    )
}

fn running_row(raw: RawRunning) -> Result<Running, SqlError> {
    Ok(Running {
        uuid: parse_uuid(&raw.uuid)?,
        job: QueuedJob {
            job: raw.job,
            platform: raw.platform,
            script: raw.script,
            timeout_secs: raw.timeout_secs as u64,
            lost: raw.lost as u32,
        },
        assigned: Timestamp(raw.assigned),
        worker: raw.worker,
    })
}

/// The columns [`raw_running`] reads.
const RUNNING_SELECT: &str =
    "SELECT uuid, job, platform, script, timeout_secs, lost, assigned, worker FROM running";

struct RawRunning {
    uuid: Vec<u8>,
    job: String,
    platform: String,
    script: String,
    timeout_secs: i64,
    lost: i64,
    assigned: i64,
    worker: String,
}

fn raw_running(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRunning> {
    Ok(RawRunning {
        uuid: r.get(0)?,
        job: r.get(1)?,
        platform: r.get(2)?,
        script: r.get(3)?,
        timeout_secs: r.get(4)?,
        lost: r.get(5)?,
        assigned: r.get(6)?,
        worker: r.get(7)?,
    })
}
