//! The server's durable state in SQLite: schedule, per-platform queues,
//! dropped platforms, running builds and the result index (which is also the
//! upload spool).
//!
//! Every change is one transaction committed (WAL, `synchronous=FULL`) before
//! the caller acknowledges it, so a `kill -9` loses nothing acknowledged. The
//! schema version lives in `PRAGMA user_version`; [`MIGRATIONS`] moves an
//! older database forward and a newer one is refused.
//!
//! Times are stored as nanoseconds since the Unix epoch; UUIDs as 16-byte
//! blobs; triggers as text (`hourly`, `daily`, `weekly`, `never`,
//! `cron:EXPR`); a result's record path as text, `''` for a build that could
//! not be stored (it is indexed, never uploaded).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use protocol::message::{
    JobKind, JobOutcome, JobSpec, QueueInfo, ResultEntry, ResultSummary, RunningBuild,
    ScheduleEntry, Timestamp, UploadState,
};
use protocol::signal::Signal;
use protocol::trigger::Trigger;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use uuid::Uuid;

/// A failure of the state database. Fatal for the server, except a full
/// disk (see [`DbError::is_disk_full`]).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("state database {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer version of builder.
    #[error("state database {path} has schema version {found}, newer than this server's {supported}; upgrade builder-server")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// A row holds something this server cannot read.
    #[error("state database {path}: corrupt row: {what}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl DbError {
    /// Whether SQLite failed for lack of space (`SQLITE_FULL`, which its
    /// Unix layer also reports for `ENOSPC`). Such a change is refused to
    /// whoever asked, and the database works again once space is freed:
    /// SQLite rolls the transaction back, nothing is damaged. Every other
    /// failure (a corrupt or unreadable database, a lost file) is fatal.
    pub fn is_disk_full(&self) -> bool {
        match self {
            DbError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            ),
            DbError::TooNew { .. } | DbError::Corrupt { .. } => false,
        }
    }
}

/// Forward migrations; entry `i` moves schema version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    name         TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('script', 'orb')),
    platform     TEXT,
    script       TEXT,
    opam_package TEXT,
    trigger      TEXT NOT NULL,
    next_run     INTEGER,
    timeout_secs INTEGER
);
CREATE TABLE queue (
    platform     TEXT NOT NULL,
    job          TEXT NOT NULL,
    position     INTEGER NOT NULL,
    script       TEXT NOT NULL,
    timeout_secs INTEGER NOT NULL,
    lost         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (platform, job)
);
CREATE INDEX queue_order ON queue (platform, position);
CREATE TABLE dropped_platforms (platform TEXT PRIMARY KEY);
CREATE TABLE running (
    uuid         BLOB PRIMARY KEY,
    job          TEXT NOT NULL,
    platform     TEXT NOT NULL,
    script       TEXT NOT NULL,
    timeout_secs INTEGER NOT NULL,
    lost         INTEGER NOT NULL,
    assigned     INTEGER NOT NULL,
    worker       TEXT NOT NULL
);
CREATE TABLE results (
    uuid            BLOB PRIMARY KEY,
    job             TEXT NOT NULL,
    platform        TEXT NOT NULL,
    started         INTEGER NOT NULL,
    finished        INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    outcome_value   INTEGER,
    outcome_message TEXT,
    path            TEXT NOT NULL,
    upload_state    TEXT NOT NULL CHECK (upload_state IN ('none', 'pending', 'delivered')),
    upload_attempts INTEGER NOT NULL DEFAULT 0,
    upload_error    TEXT,
    upload_next     INTEGER,
    delivered_at    INTEGER
);
CREATE INDEX results_started ON results (started);
CREATE INDEX results_job ON results (job, started);
CREATE INDEX results_upload ON results (upload_state, upload_next, finished);
"#,
    r#"
-- A build's UUID is assigned when it is queued and kept across requeues.
ALTER TABLE queue ADD COLUMN uuid BLOB;
ALTER TABLE results ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
-- Platforms workers have asked for, to warn about typos in `schedule`.
CREATE TABLE known_platforms (platform TEXT PRIMARY KEY, first_seen INTEGER NOT NULL);
"#,
];

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

/// A finished build to index.
#[derive(Debug, Clone)]
pub struct NewResult {
    /// The build.
    pub uuid: Uuid,
    /// Its job.
    pub job: String,
    /// Its platform.
    pub platform: String,
    /// When it started.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Timestamp,
    /// How.
    pub outcome: JobOutcome,
    /// Where its `full` record is; `None` when it could not be stored (the
    /// result is indexed all the same, and never uploaded).
    pub path: Option<PathBuf>,
    /// Which attempt (1 unless workers were lost before).
    pub attempts: u32,
}

/// A record waiting for delivery to builder-web.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The build.
    pub uuid: Uuid,
    /// Its job (for logs).
    pub job: String,
    /// Its `full` record.
    pub path: PathBuf,
    /// Failed attempts so far.
    pub attempts: u32,
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

/// The reference server's state, converted: what [`Db::import`] writes.
#[derive(Debug, Clone, Default)]
pub struct Import {
    /// Schedule entries.
    pub jobs: Vec<ScheduleEntry>,
    /// Queue entries, each queue front first.
    pub queued: Vec<QueuedJob>,
    /// Dropped platforms.
    pub dropped: Vec<String>,
}

/// What [`Db::import`] added (entries already present are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Imported {
    /// Schedule entries.
    pub jobs: usize,
    /// Queue entries.
    pub queued: usize,
    /// Dropped platforms.
    pub dropped: usize,
}

/// How many lost workers in a row make a build aborted instead of requeued.
pub const MAX_LOST: u32 = 3;

/// The state database.
pub struct Db {
    conn: Mutex<rusqlite::Connection>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let sql = |source| DbError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = rusqlite::Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(DbError::TooNew {
                path: path.to_owned(),
                found: version,
                supported,
            });
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(sql)?;
            tx.execute_batch(migration).map_err(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock cannot leave a half-done
        // transaction behind (it rolls back on drop), so poisoning is moot.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> DbError {
        DbError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Runs `f` in an immediate transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }

    // -- schedule -----------------------------------------------------------

    /// Adds a job to the schedule. `Ok(false)` if the name is taken.
    pub fn insert_job(&self, entry: &ScheduleEntry) -> Result<bool, DbError> {
        self.write(|tx| {
            let n = self.insert_job_tx(tx, entry)?;
            Ok(n == 1)
        })
    }

    /// Adds a job unless one has its name; returns how many rows it added.
    fn insert_job_tx(&self, tx: &Transaction<'_>, entry: &ScheduleEntry) -> Result<usize, DbError> {
        let (kind, platform, script, package) = job_columns(&entry.job.kind);
        tx.execute(
            "INSERT OR IGNORE INTO jobs (name, kind, platform, script, opam_package, trigger, next_run, timeout_secs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                entry.job.name,
                kind,
                platform,
                script,
                package,
                trigger_to_text(&entry.trigger),
                entry.next_run.map(|t| t.0),
                entry.timeout_secs.map(|t| t as i64),
            ],
        )
        .map_err(|e| self.err(e))
    }

    /// Removes a job from the schedule and from every queue. `Ok(false)` if
    /// there was no such job.
    pub fn delete_job(&self, name: &str) -> Result<bool, DbError> {
        self.write(|tx| {
            let n = tx
                .execute("DELETE FROM jobs WHERE name = ?1", [name])
                .map_err(|e| self.err(e))?;
            tx.execute("DELETE FROM queue WHERE job = ?1", [name])
                .map_err(|e| self.err(e))?;
            Ok(n == 1)
        })
    }

    /// Sets a job's next run (and trigger). `Ok(false)` if there is no such job.
    pub fn reschedule(
        &self,
        name: &str,
        next: Timestamp,
        trigger: Option<&Trigger>,
    ) -> Result<bool, DbError> {
        self.write(|tx| {
            let n = match trigger {
                Some(t) => tx.execute(
                    "UPDATE jobs SET next_run = ?2, trigger = ?3 WHERE name = ?1",
                    params![name, next.0, trigger_to_text(t)],
                ),
                None => tx.execute(
                    "UPDATE jobs SET next_run = ?2 WHERE name = ?1",
                    params![name, next.0],
                ),
            }
            .map_err(|e| self.err(e))?;
            Ok(n == 1)
        })
    }

    /// Changes a job in place (see [`JobUpdate`]). Queued runs of it take
    /// the new script, timeout and platform (keeping their UUIDs).
    /// `Ok(false)` if there is no such job.
    pub fn update_job(&self, update: &JobUpdate<'_>) -> Result<bool, DbError> {
        self.write(|tx| {
            let entry = update.entry;
            let (kind, platform, script, package) = job_columns(&entry.job.kind);
            let n = tx
                .execute(
                    "UPDATE jobs SET kind = ?2, platform = ?3, script = ?4, opam_package = ?5, trigger = ?6,
                         timeout_secs = ?7, next_run = CASE WHEN ?8 THEN ?9 ELSE next_run END
                     WHERE name = ?1",
                    params![
                        entry.job.name,
                        kind,
                        platform,
                        script,
                        package,
                        trigger_to_text(&entry.trigger),
                        entry.timeout_secs.map(|t| t as i64),
                        update.new_phase,
                        entry.next_run.map(|t| t.0),
                    ],
                )
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Ok(false);
            }
            let name = &entry.job.name;
            tx.execute(
                "UPDATE queue SET timeout_secs = ?2 WHERE job = ?1",
                params![name, update.timeout_secs as i64],
            )
            .map_err(|e| self.err(e))?;
            if let JobKind::Script { platform, script } = &entry.job.kind {
                tx.execute(
                    "UPDATE queue SET script = ?2 WHERE job = ?1",
                    params![name, script],
                )
                .map_err(|e| self.err(e))?;
                // A queued run moves to the back of its new platform's queue.
                tx.execute(
                    "UPDATE queue SET platform = ?2,
                         position = (SELECT COALESCE(MAX(position), 0) + 1 FROM queue WHERE platform = ?2)
                     WHERE job = ?1 AND platform <> ?2",
                    params![name, platform],
                )
                .map_err(|e| self.err(e))?;
            }
            Ok(true)
        })
    }

    /// One scheduled job.
    pub fn job(&self, name: &str) -> Result<Option<ScheduleEntry>, DbError> {
        let conn = self.lock();
        conn.query_row(&format!("{JOB_SELECT} WHERE name = ?1"), [name], raw_job)
            .optional()
            .map_err(|e| self.err(e))?
            .map(|raw| self.entry(raw))
            .transpose()
    }

    /// Every scheduled job, by name.
    pub fn jobs(&self) -> Result<Vec<ScheduleEntry>, DbError> {
        let raws = self.query_all(&format!("{JOB_SELECT} ORDER BY name"), [], raw_job)?;
        raws.into_iter().map(|raw| self.entry(raw)).collect()
    }

    /// Whether any orb-build job is scheduled.
    pub fn has_orb_jobs(&self) -> Result<bool, DbError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'orb')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Runs a query and collects its rows.
    fn query_all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The earliest next run of any job, if any job has one.
    pub fn earliest_next_run(&self) -> Result<Option<Timestamp>, DbError> {
        let conn = self.lock();
        let t: Option<i64> = conn
            .query_row("SELECT MIN(next_run) FROM jobs", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(t.map(Timestamp))
    }

    /// Queues every job due at `now` (once, however many runs it missed) and
    /// moves its next run on with `next_run`. `render` turns a job into the
    /// `(platform, script)` pairs to queue. Returns the platforms that got work.
    pub fn queue_due(
        &self,
        now: Timestamp,
        next_run: impl Fn(&Trigger, Timestamp, Timestamp) -> Option<Timestamp>,
        render: impl Fn(&JobSpec) -> Vec<(String, String)>,
        default_timeout: u64,
    ) -> Result<Vec<String>, DbError> {
        let due: Vec<ScheduleEntry> = self
            .query_all(
                &format!("{JOB_SELECT} WHERE next_run IS NOT NULL AND next_run <= ?1"),
                [now.0],
                raw_job,
            )?
            .into_iter()
            .map(|raw| self.entry(raw))
            .collect::<Result<_, _>>()?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut platforms = Vec::new();
        self.write(|tx| {
            for entry in &due {
                // Only if nobody (another tick, a reschedule, an unschedule)
                // changed the job since it was read: checked and updated in
                // this transaction, so a due run is queued exactly once.
                let scheduled = entry.next_run.expect("selected with next_run set");
                let next = next_run(&entry.trigger, scheduled, now);
                let claimed = tx
                    .execute(
                        "UPDATE jobs SET next_run = ?2 WHERE name = ?1 AND next_run = ?3",
                        params![entry.job.name, next.map(|t| t.0), scheduled.0],
                    )
                    .map_err(|e| self.err(e))?;
                if claimed == 0 {
                    continue;
                }
                let timeout = entry.timeout_secs.unwrap_or(default_timeout);
                for (platform, script) in render(&entry.job) {
                    let queued =
                        self.enqueue_tx(tx, &platform, &entry.job.name, &script, timeout, false)?;
                    if queued.is_some_and(|(_, changed)| changed) {
                        platforms.push(platform);
                    }
                }
            }
            Ok(())
        })?;
        platforms.sort();
        platforms.dedup();
        Ok(platforms)
    }

    // -- queues -------------------------------------------------------------

    /// Puts a job in a platform's queue, at the back or the front. A job
    /// already queued there stays where it is (back) or moves to the front.
    /// `Ok(true)` if the queue changed.
    pub fn enqueue(
        &self,
        platform: &str,
        job: &str,
        script: &str,
        timeout_secs: u64,
        front: bool,
    ) -> Result<bool, DbError> {
        Ok(self
            .write(|tx| self.enqueue_tx(tx, platform, job, script, timeout_secs, front))?
            .is_some_and(|(_, changed)| changed))
    }

    /// Puts a job at the front of a platform's queue (`execute`) and returns
    /// the UUID its build will have: a new one, or that of the run already
    /// queued there. `Ok(None)` if the platform is dropped.
    pub fn enqueue_front(
        &self,
        platform: &str,
        job: &str,
        script: &str,
        timeout_secs: u64,
    ) -> Result<Option<Uuid>, DbError> {
        Ok(self
            .write(|tx| self.enqueue_tx(tx, platform, job, script, timeout_secs, true))?
            .map(|(uuid, _)| uuid))
    }

    /// Queues a job; returns the UUID of its queued build and whether the
    /// queue changed, or `None` if the platform is dropped.
    fn enqueue_tx(
        &self,
        tx: &Transaction<'_>,
        platform: &str,
        job: &str,
        script: &str,
        timeout_secs: u64,
        front: bool,
    ) -> Result<Option<(Uuid, bool)>, DbError> {
        let dropped: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM dropped_platforms WHERE platform = ?1)",
                [platform],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if dropped {
            return Ok(None);
        }
        let (min, max): (Option<i64>, Option<i64>) = tx
            .query_row(
                "SELECT MIN(position), MAX(position) FROM queue WHERE platform = ?1",
                [platform],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
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
        }
        .map_err(|e| self.err(e))?;
        let uuid: Option<Vec<u8>> = tx
            .query_row(
                "SELECT uuid FROM queue WHERE platform = ?1 AND job = ?2",
                params![platform, job],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let uuid = match uuid {
            Some(bytes) => self.uuid(&bytes)?,
            // Queued by a server before UUIDs were assigned at queue time.
            None => {
                tx.execute(
                    "UPDATE queue SET uuid = ?3 WHERE platform = ?1 AND job = ?2",
                    params![platform, job, fresh.as_bytes()],
                )
                .map_err(|e| self.err(e))?;
                fresh
            }
        };
        Ok(Some((uuid, n == 1)))
    }

    /// Whether the build `uuid` waits in a queue.
    pub fn is_queued(&self, uuid: Uuid) -> Result<bool, DbError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE uuid = ?1)",
            [uuid.as_bytes()],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Whether the build `uuid` waits in a queue or has been handed to a
    /// worker and is not finished: between the claim and the start of its
    /// live build an observer must wait for it, not be told it is unknown.
    pub fn is_pending(&self, uuid: Uuid) -> Result<bool, DbError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE uuid = ?1)
                 OR EXISTS (SELECT 1 FROM running WHERE uuid = ?1)",
            [uuid.as_bytes()],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Imports a reference server's state in one transaction: jobs whose
    /// name is taken, queue entries already queued and platforms already
    /// dropped are left as they are, so importing twice adds nothing. Queue
    /// entries of dropped platforms are skipped. Unless `force`, refuses a
    /// database that already holds jobs: `Ok(Err(count))`.
    pub fn import(&self, import: &Import, force: bool) -> Result<Result<Imported, u64>, DbError> {
        self.write(|tx| {
            let existing: i64 = tx
                .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            if existing > 0 && !force {
                return Ok(Err(existing as u64));
            }
            let mut done = Imported::default();
            for entry in &import.jobs {
                done.jobs += self.insert_job_tx(tx, entry)?;
            }
            for platform in &import.dropped {
                done.dropped += tx
                    .execute(
                        "INSERT OR IGNORE INTO dropped_platforms (platform) VALUES (?1)",
                        [platform],
                    )
                    .map_err(|e| self.err(e))?;
            }
            for q in &import.queued {
                if let Some((_, true)) =
                    self.enqueue_tx(tx, &q.platform, &q.job, &q.script, q.timeout_secs, false)?
                {
                    done.queued += 1;
                }
            }
            Ok(Ok(done))
        })
    }

    /// Every platform's queue, front first; platforms in name order.
    pub fn queues(&self) -> Result<Vec<QueueInfo>, DbError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT platform, job FROM queue ORDER BY platform, position")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut queues: Vec<QueueInfo> = Vec::new();
        for row in rows {
            let (platform, job) = row.map_err(|e| self.err(e))?;
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
        &self,
        platform: &str,
        worker: &str,
        now: Timestamp,
    ) -> Result<Option<Running>, DbError> {
        self.write(|tx| {
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
                .optional()
                .map_err(|e| self.err(e))?;
            let Some((job, uuid)) = head else {
                return Ok(None);
            };
            let uuid = match uuid {
                Some(bytes) => self.uuid(&bytes)?,
                None => Uuid::new_v4(),
            };
            tx.execute(
                "DELETE FROM queue WHERE platform = ?1 AND job = ?2",
                params![platform, job.job],
            )
            .map_err(|e| self.err(e))?;
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
            )
            .map_err(|e| self.err(e))?;
            Ok(Some(running))
        })
    }

    /// A build's worker was lost: put it back at the front of its queue, or
    /// hand it back for recording as aborted when it lost [`MAX_LOST`]
    /// workers in a row.
    pub fn worker_lost(&self, uuid: Uuid) -> Result<LostFate, DbError> {
        self.write(|tx| {
            let Some(running) = self.running_tx(tx, uuid)? else {
                return Ok(LostFate::Unknown);
            };
            let lost = running.job.lost + 1;
            if lost >= MAX_LOST {
                // The caller records the result and removes the row in
                // `finish`; keep it until then so a crash requeues it.
                return Ok(LostFate::GiveUp(running));
            }
            tx.execute("DELETE FROM running WHERE uuid = ?1", [uuid.as_bytes()])
                .map_err(|e| self.err(e))?;
            let job = &running.job;
            let min: Option<i64> = tx
                .query_row(
                    "SELECT MIN(position) FROM queue WHERE platform = ?1",
                    [&job.platform],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO queue (platform, job, position, script, timeout_secs, lost, uuid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (platform, job) DO UPDATE SET position = excluded.position, lost = excluded.lost,
                     uuid = excluded.uuid",
                params![
                    job.platform,
                    job.job,
                    min.map_or(0, |m| m - 1),
                    job.script,
                    job.timeout_secs as i64,
                    lost as i64,
                    uuid.as_bytes(),
                ],
            )
            .map_err(|e| self.err(e))?;
            Ok(LostFate::Requeued)
        })
    }

    fn running_tx(&self, tx: &Transaction<'_>, uuid: Uuid) -> Result<Option<Running>, DbError> {
        tx.query_row(
            &format!("{RUNNING_SELECT} WHERE uuid = ?1"),
            [uuid.as_bytes()],
            raw_running,
        )
        .optional()
        .map_err(|e| self.err(e))?
        .map(|r| self.running_row(r))
        .transpose()
    }

    /// Every build marked running, oldest first.
    pub fn running(&self) -> Result<Vec<Running>, DbError> {
        let raws = self.query_all(
            &format!("{RUNNING_SELECT} ORDER BY assigned"),
            [],
            raw_running,
        )?;
        raws.into_iter().map(|r| self.running_row(r)).collect()
    }

    /// Running builds in `info` form.
    pub fn running_info(&self) -> Result<Vec<RunningBuild>, DbError> {
        Ok(self
            .running()?
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
    pub fn queue_entries(&self) -> Result<Vec<QueuedJob>, DbError> {
        self.query_all(
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

    // -- platforms ----------------------------------------------------------

    /// Drops a platform: its queue and script jobs go, new ones are refused.
    /// Returns the names of the script jobs removed, or `None` if the
    /// platform was dropped already.
    pub fn drop_platform(&self, platform: &str) -> Result<Option<Vec<String>>, DbError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO dropped_platforms (platform) VALUES (?1)",
                    [platform],
                )
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Ok(None);
            }
            tx.execute("DELETE FROM queue WHERE platform = ?1", [platform])
                .map_err(|e| self.err(e))?;
            let mut stmt = tx
                .prepare("DELETE FROM jobs WHERE kind = 'script' AND platform = ?1 RETURNING name")
                .map_err(|e| self.err(e))?;
            let mut names = stmt
                .query_map([platform], |r| r.get::<_, String>(0))
                .map_err(|e| self.err(e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?;
            names.sort();
            Ok(Some(names))
        })
    }

    /// Remembers that a worker asked for `platform` (for typo warnings).
    pub fn note_platform(&self, platform: &str, now: Timestamp) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO known_platforms (platform, first_seen) VALUES (?1, ?2)",
                params![platform, now.0],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Whether a worker ever asked for `platform`, or a job or queue uses it.
    pub fn platform_in_use(&self, platform: &str) -> Result<bool, DbError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM known_platforms WHERE platform = ?1)
                 OR EXISTS (SELECT 1 FROM jobs WHERE kind = 'script' AND platform = ?1)
                 OR EXISTS (SELECT 1 FROM queue WHERE platform = ?1)",
            [platform],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Whether a worker ever asked for `platform`.
    pub fn platform_known(&self, platform: &str) -> Result<bool, DbError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM known_platforms WHERE platform = ?1)",
            [platform],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Accepts a dropped platform again. `Ok(false)` if it was not dropped.
    pub fn undrop_platform(&self, platform: &str) -> Result<bool, DbError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM dropped_platforms WHERE platform = ?1",
                    [platform],
                )
                .map_err(|e| self.err(e))?;
            Ok(n == 1)
        })
    }

    /// Whether a platform is dropped.
    pub fn is_dropped(&self, platform: &str) -> Result<bool, DbError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM dropped_platforms WHERE platform = ?1)",
            [platform],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    /// Every dropped platform, by name.
    pub fn dropped_platforms(&self) -> Result<Vec<String>, DbError> {
        self.query_all(
            "SELECT platform FROM dropped_platforms ORDER BY platform",
            [],
            |r| r.get(0),
        )
    }

    // -- results ------------------------------------------------------------

    /// Indexes a finished build and forgets it as running, in one
    /// transaction. With `upload`, the record joins the upload spool.
    pub fn finish(&self, result: &NewResult, upload: bool) -> Result<(), DbError> {
        self.write(|tx| {
            let (kind, value, message) = outcome_columns(&result.outcome);
            // The column is NOT NULL: an unstored build's path is ''.
            let path = match &result.path {
                Some(path) => path
                    .to_str()
                    .ok_or_else(|| self.corrupt(format!("non-UTF-8 path {}", path.display())))?,
                None => "",
            };
            let upload = upload && result.path.is_some();
            tx.execute(
                "INSERT OR REPLACE INTO results (uuid, job, platform, started, finished, outcome, outcome_value,
                     outcome_message, path, upload_state, upload_next, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    result.uuid.as_bytes(),
                    result.job,
                    result.platform,
                    result.started.0,
                    result.finished.0,
                    kind,
                    value,
                    message,
                    path,
                    if upload { "pending" } else { "none" },
                    if upload { Some(0i64) } else { None },
                    result.attempts as i64,
                ],
            )
            .map_err(|e| self.err(e))?;
            tx.execute("DELETE FROM running WHERE uuid = ?1", [result.uuid.as_bytes()])
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Recent builds, newest first.
    pub fn results(&self, job: Option<&str>, limit: u32) -> Result<Vec<ResultEntry>, DbError> {
        let raws = self.query_all(
            &format!(
                "{RESULT_SELECT} WHERE ?1 IS NULL OR job = ?1 ORDER BY started DESC, rowid DESC LIMIT ?2"
            ),
            params![job, limit as i64],
            raw_result,
        )?;
        raws.into_iter().map(|r| self.result_row(r)).collect()
    }

    /// Where a finished build's record is; `None` if there is no such build
    /// or it has no record (see [`Db::result`]).
    pub fn result_path(&self, uuid: Uuid) -> Result<Option<PathBuf>, DbError> {
        let conn = self.lock();
        let path: Option<String> = conn
            .query_row(
                "SELECT path FROM results WHERE uuid = ?1 AND path != ''",
                [uuid.as_bytes()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(path.map(PathBuf::from))
    }

    /// One finished build, whether or not it has a record.
    pub fn result(&self, uuid: Uuid) -> Result<Option<ResultSummary>, DbError> {
        let raws = self.query_all(
            &format!("{RESULT_SELECT} WHERE uuid = ?1"),
            [uuid.as_bytes()],
            raw_result,
        )?;
        raws.into_iter()
            .next()
            .map(|r| self.result_row(r).map(|e| e.summary))
            .transpose()
    }

    /// The newest finished build matching the filters: (uuid, started).
    pub fn latest_result(
        &self,
        platform: Option<&str>,
        job: Option<&str>,
    ) -> Result<Option<(Uuid, Timestamp)>, DbError> {
        let conn = self.lock();
        let row: Option<(Vec<u8>, i64)> = conn
            .query_row(
                "SELECT uuid, started FROM results WHERE (?1 IS NULL OR platform = ?1) AND (?2 IS NULL OR job = ?2)
                 ORDER BY started DESC, rowid DESC LIMIT 1",
                params![platform, job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(uuid, started)| Ok((self.uuid(&uuid)?, Timestamp(started))))
            .transpose()
    }

    // -- upload spool -------------------------------------------------------

    /// The oldest records due for an upload attempt at `now`, skipping
    /// `busy` ones, at most `limit`.
    pub fn due_uploads(
        &self,
        now: Timestamp,
        busy: &[Uuid],
        limit: usize,
    ) -> Result<Vec<PendingUpload>, DbError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT uuid, job, path, upload_attempts FROM results
                 WHERE upload_state = 'pending' AND upload_next <= ?1 ORDER BY finished, rowid",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([now.0]).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let uuid = self.uuid(&row.get::<_, Vec<u8>>(0).map_err(|e| self.err(e))?)?;
            if busy.contains(&uuid) {
                continue;
            }
            out.push(PendingUpload {
                uuid,
                job: row.get(1).map_err(|e| self.err(e))?,
                path: PathBuf::from(row.get::<_, String>(2).map_err(|e| self.err(e))?),
                attempts: row.get::<_, i64>(3).map_err(|e| self.err(e))? as u32,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the next pending upload is due, if any is pending.
    pub fn next_upload_due(&self) -> Result<Option<Timestamp>, DbError> {
        let conn = self.lock();
        let t: Option<i64> = conn
            .query_row(
                "SELECT MIN(upload_next) FROM results WHERE upload_state = 'pending'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(t.map(Timestamp))
    }

    /// Records a delivered upload.
    pub fn upload_delivered(&self, uuid: Uuid, at: Timestamp) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE results SET upload_state = 'delivered', delivered_at = ?2, upload_next = NULL, upload_error = NULL
                 WHERE uuid = ?1",
                params![uuid.as_bytes(), at.0],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Records a failed upload attempt and when to try again.
    pub fn upload_failed(&self, uuid: Uuid, error: &str, next: Timestamp) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE results SET upload_attempts = upload_attempts + 1, upload_error = ?2, upload_next = ?3
                 WHERE uuid = ?1 AND upload_state = 'pending'",
                params![uuid.as_bytes(), error, next.0],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Puts every record not yet delivered into the spool (after `--upload`
    /// is configured on a server that ran without it).
    pub fn spool_unconfigured(&self, now: Timestamp) -> Result<usize, DbError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE results SET upload_state = 'pending', upload_next = ?1 WHERE upload_state = 'none' AND path != ''",
                [now.0],
            )
            .map_err(|e| self.err(e))
        })
    }

    /// Records waiting for delivery, and when the oldest of them finished
    /// (for the metrics).
    pub fn spool_stats(&self) -> Result<(u64, Option<Timestamp>), DbError> {
        let conn = self.lock();
        let (count, oldest): (i64, Option<i64>) = conn
            .query_row(
                "SELECT COUNT(*), MIN(finished) FROM results WHERE upload_state = 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok((count.max(0) as u64, oldest.map(Timestamp)))
    }

    /// A trivial query: whether the database still answers (`/healthz`).
    pub fn ping(&self) -> Result<(), DbError> {
        let conn = self.lock();
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    // -- row decoding -------------------------------------------------------

    fn uuid(&self, bytes: &[u8]) -> Result<Uuid, DbError> {
        Uuid::from_slice(bytes).map_err(|_| self.corrupt(format!("uuid of {} bytes", bytes.len())))
    }

    fn entry(&self, raw: RawJob) -> Result<ScheduleEntry, DbError> {
        let kind = match raw.kind.as_str() {
            "script" => JobKind::Script {
                platform: raw
                    .platform
                    .ok_or_else(|| self.corrupt(format!("job {}: no platform", raw.name)))?,
                script: raw
                    .script
                    .ok_or_else(|| self.corrupt(format!("job {}: no script", raw.name)))?,
            },
            "orb" => JobKind::Orb {
                opam_package: raw
                    .opam_package
                    .ok_or_else(|| self.corrupt(format!("job {}: no opam package", raw.name)))?,
            },
            other => return Err(self.corrupt(format!("job {}: kind {other:?}", raw.name))),
        };
        let trigger = trigger_from_text(&raw.trigger)
            .ok_or_else(|| self.corrupt(format!("job {}: trigger {:?}", raw.name, raw.trigger)))?;
        Ok(ScheduleEntry {
            job: JobSpec {
                name: raw.name,
                kind,
            },
            trigger,
            next_run: raw.next_run.map(Timestamp),
            timeout_secs: raw.timeout_secs.map(|t| t as u64),
        })
    }

    fn running_row(&self, raw: RawRunning) -> Result<Running, DbError> {
        Ok(Running {
            uuid: self.uuid(&raw.uuid)?,
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

    fn result_row(&self, raw: RawResult) -> Result<ResultEntry, DbError> {
        let outcome = outcome_from_columns(&raw.outcome, raw.value, raw.message)
            .ok_or_else(|| self.corrupt(format!("result outcome {:?}", raw.outcome)))?;
        let upload = match raw.upload_state.as_str() {
            "none" => UploadState::NotConfigured,
            "pending" => UploadState::Pending {
                attempts: raw.attempts as u32,
                last_error: raw.error,
            },
            "delivered" => UploadState::Delivered {
                at: Timestamp(raw.delivered_at.unwrap_or(raw.finished)),
            },
            other => return Err(self.corrupt(format!("upload state {other:?}"))),
        };
        Ok(ResultEntry {
            summary: ResultSummary {
                uuid: self.uuid(&raw.uuid)?,
                job: raw.job,
                platform: raw.platform,
                started: Timestamp(raw.started),
                finished: Timestamp(raw.finished),
                outcome,
                upload,
            },
            attempts: raw.build_attempts as u32,
        })
    }
}

/// The columns [`raw_result`] reads.
const RESULT_SELECT: &str =
    "SELECT uuid, job, platform, started, finished, outcome, outcome_value, outcome_message,
            upload_state, upload_attempts, upload_error, delivered_at, attempts FROM results";

fn raw_result(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawResult> {
    Ok(RawResult {
        uuid: r.get(0)?,
        job: r.get(1)?,
        platform: r.get(2)?,
        started: r.get(3)?,
        finished: r.get(4)?,
        outcome: r.get(5)?,
        value: r.get(6)?,
        message: r.get(7)?,
        upload_state: r.get(8)?,
        attempts: r.get(9)?,
        error: r.get(10)?,
        delivered_at: r.get(11)?,
        build_attempts: r.get(12)?,
    })
}

/// What `update` changes: the job as it will be, and whether its trigger
/// changed (then its next run becomes `entry.next_run`; otherwise it is
/// left alone, so the job keeps its phase).
#[derive(Debug, Clone)]
pub struct JobUpdate<'a> {
    /// The job as it will be.
    pub entry: &'a ScheduleEntry,
    /// Whether `entry.next_run` replaces the stored next run.
    pub new_phase: bool,
    /// The timeout queued runs get.
    pub timeout_secs: u64,
}

/// The columns [`raw_job`] reads.
const JOB_SELECT: &str =
    "SELECT name, kind, platform, script, opam_package, trigger, next_run, timeout_secs FROM jobs";

struct RawJob {
    name: String,
    kind: String,
    platform: Option<String>,
    script: Option<String>,
    opam_package: Option<String>,
    trigger: String,
    next_run: Option<i64>,
    timeout_secs: Option<i64>,
}

fn raw_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        name: r.get(0)?,
        kind: r.get(1)?,
        platform: r.get(2)?,
        script: r.get(3)?,
        opam_package: r.get(4)?,
        trigger: r.get(5)?,
        next_run: r.get(6)?,
        timeout_secs: r.get(7)?,
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

struct RawResult {
    uuid: Vec<u8>,
    job: String,
    platform: String,
    started: i64,
    finished: i64,
    outcome: String,
    value: Option<i64>,
    message: Option<String>,
    upload_state: String,
    attempts: i64,
    error: Option<String>,
    delivered_at: Option<i64>,
    build_attempts: i64,
}

fn job_columns(kind: &JobKind) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
    match kind {
        JobKind::Script { platform, script } => ("script", Some(platform), Some(script), None),
        JobKind::Orb { opam_package } => ("orb", None, None, Some(opam_package)),
    }
}

/// The text form of a trigger in the database.
pub fn trigger_to_text(t: &Trigger) -> String {
    match t {
        Trigger::Hourly => "hourly".into(),
        Trigger::Daily => "daily".into(),
        Trigger::Weekly => "weekly".into(),
        Trigger::Never => "never".into(),
        Trigger::Cron(expr) => format!("cron:{expr}"),
    }
}

/// Reads [`trigger_to_text`]'s form back.
pub fn trigger_from_text(s: &str) -> Option<Trigger> {
    match s {
        "hourly" => Some(Trigger::Hourly),
        "daily" => Some(Trigger::Daily),
        "weekly" => Some(Trigger::Weekly),
        "never" => Some(Trigger::Never),
        _ => s
            .strip_prefix("cron:")
            .map(|expr| Trigger::Cron(expr.to_owned())),
    }
}

fn outcome_columns(o: &JobOutcome) -> (&'static str, Option<i64>, Option<&str>) {
    match o {
        JobOutcome::Exited(code) => ("exited", Some(i64::from(*code)), None),
        JobOutcome::Signalled(sig) => ("signalled", Some(sig.portable()), None),
        JobOutcome::Stopped(sig) => ("stopped", Some(sig.portable()), None),
        JobOutcome::Aborted(msg) => ("aborted", None, Some(msg)),
    }
}

fn outcome_from_columns(
    kind: &str,
    value: Option<i64>,
    message: Option<String>,
) -> Option<JobOutcome> {
    Some(match kind {
        "exited" => JobOutcome::Exited(i32::try_from(value?).ok()?),
        "signalled" => JobOutcome::Signalled(Signal::from_portable(value?)),
        "stopped" => JobOutcome::Stopped(Signal::from_portable(value?)),
        "aborted" => JobOutcome::Aborted(message?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn job_names_are_unique_and_survive_reopening() {
        let (dir, db) = db();
        assert!(db.insert_job(&script_job("a", "linux")).unwrap());
        assert!(!db.insert_job(&script_job("a", "freebsd")).unwrap());
        drop(db);
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(db.jobs().unwrap(), vec![script_job("a", "linux")]);
    }

    #[test]
    fn queue_front_back_and_no_duplicates() {
        let (_dir, db) = db();
        assert!(db.enqueue("linux", "a", "s", 10, false).unwrap());
        assert!(db.enqueue("linux", "b", "s", 10, false).unwrap());
        assert!(!db.enqueue("linux", "a", "s", 10, false).unwrap());
        assert!(db.enqueue("linux", "b", "s", 10, true).unwrap());
        assert!(db.enqueue("linux", "c", "s", 10, true).unwrap());
        assert_eq!(db.queues().unwrap()[0].jobs, vec!["c", "b", "a"]);
    }

    #[test]
    fn claim_then_lost_requeues_at_front_and_gives_up_after_three() {
        let (_dir, db) = db();
        db.enqueue("linux", "poison", "s", 10, false).unwrap();
        db.enqueue("linux", "other", "s", 10, false).unwrap();
        let mut first = None;
        for attempt in 1..=MAX_LOST {
            let r = db.claim("linux", "w", Timestamp(5)).unwrap().unwrap();
            assert_eq!(r.job.job, "poison");
            assert_eq!(
                *first.get_or_insert(r.uuid),
                r.uuid,
                "one UUID for every attempt"
            );
            assert_eq!(r.job.lost, attempt - 1);
            match db.worker_lost(r.uuid).unwrap() {
                LostFate::Requeued => assert!(attempt < MAX_LOST),
                LostFate::GiveUp(g) => {
                    assert_eq!(attempt, MAX_LOST);
                    assert_eq!(g.uuid, r.uuid);
                    // Still marked running until its result is recorded.
                    assert_eq!(db.running().unwrap().len(), 1);
                }
                LostFate::Unknown => panic!("unknown"),
            }
        }
        assert_eq!(db.queues().unwrap()[0].jobs, vec!["other"]);
    }

    #[test]
    fn a_build_has_its_uuid_from_the_moment_it_is_queued() {
        let (_dir, db) = db();
        let uuid = db.enqueue_front("linux", "a", "s", 10).unwrap().unwrap();
        // Queued again (a due run, another execute): the same build.
        assert!(!db.enqueue("linux", "a", "s", 10, false).unwrap());
        assert_eq!(db.enqueue_front("linux", "a", "s", 10).unwrap(), Some(uuid));
        assert!(db.is_queued(uuid).unwrap());
        let r = db.claim("linux", "w", Timestamp(5)).unwrap().unwrap();
        assert_eq!(r.uuid, uuid);
        assert!(!db.is_queued(uuid).unwrap());
        assert_eq!(db.worker_lost(uuid).unwrap(), LostFate::Requeued);
        assert!(db.is_queued(uuid).unwrap(), "requeued under its UUID");
    }

    #[test]
    fn dropped_platform_refuses_work() {
        let (_dir, db) = db();
        db.insert_job(&script_job("a", "linux")).unwrap();
        db.enqueue("linux", "a", "s", 10, false).unwrap();
        assert_eq!(
            db.drop_platform("linux").unwrap(),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(db.drop_platform("linux").unwrap(), None, "already dropped");
        assert!(db.queues().unwrap().is_empty());
        assert!(db.jobs().unwrap().is_empty());
        assert!(!db.enqueue("linux", "a", "s", 10, false).unwrap());
        assert!(db.undrop_platform("linux").unwrap());
        assert!(db.enqueue("linux", "a", "s", 10, false).unwrap());
    }

    #[test]
    fn queue_due_queues_once_and_moves_next_run() {
        let (_dir, db) = db();
        db.insert_job(&script_job("a", "linux")).unwrap();
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
            .unwrap();
        assert_eq!(platforms, vec!["linux"]);
        assert_eq!(
            db.job("a").unwrap().unwrap().next_run,
            Some(Timestamp(5_001))
        );
        assert_eq!(db.queues().unwrap()[0].jobs, vec!["a"]);
    }

    #[test]
    fn results_and_upload_spool() {
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
            .unwrap();
        }
        let listed = db.results(None, 10).unwrap();
        assert_eq!(listed[0].summary.job, "new");
        assert_eq!(
            listed[1].summary.outcome,
            JobOutcome::Signalled(Signal::Kill)
        );
        let due = db.due_uploads(Timestamp(100), &[], 10).unwrap();
        assert_eq!(
            due.iter().map(|d| d.job.as_str()).collect::<Vec<_>>(),
            ["old", "new"]
        );
        db.upload_failed(due[0].uuid, "boom", Timestamp(1_000))
            .unwrap();
        db.upload_delivered(due[1].uuid, Timestamp(7)).unwrap();
        assert!(db.due_uploads(Timestamp(100), &[], 10).unwrap().is_empty());
        assert_eq!(db.next_upload_due().unwrap(), Some(Timestamp(1_000)));
        let listed = db.results(None, 10).unwrap();
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

    #[test]
    fn a_newer_schema_is_refused() {
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

    #[test]
    fn a_build_without_a_record_is_indexed_but_never_uploaded() {
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
        .unwrap();
        assert_eq!(db.result_path(uuid).unwrap(), None);
        let indexed = db.result(uuid).unwrap().expect("indexed");
        assert_eq!(indexed.outcome, outcome);
        assert_eq!(indexed.upload, UploadState::NotConfigured);
        assert_eq!(db.spool_unconfigured(Timestamp(3)).unwrap(), 0);
        assert!(db.due_uploads(Timestamp(100), &[], 10).unwrap().is_empty());
        assert_eq!(db.result(Uuid::from_u128(10)).unwrap(), None);
    }

    #[test]
    fn a_full_database_refuses_the_change_and_works_again_with_room() {
        let (_dir, db) = db();
        // SQLite's own page limit gives the same SQLITE_FULL as a full disk.
        let pages: i64 = db
            .lock()
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        db.lock()
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let mut big = script_job("big", "linux");
        big.job.kind = JobKind::Script {
            platform: "linux".into(),
            script: "x".repeat(1 << 20),
        };
        let e = db.insert_job(&big).unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert!(db.jobs().unwrap().is_empty(), "reads still work");
        db.lock()
            .pragma_update(None, "max_page_count", 1 << 30)
            .unwrap();
        assert!(db.insert_job(&big).unwrap());
        assert!(!db.corrupt("x").is_disk_full());
    }
}
