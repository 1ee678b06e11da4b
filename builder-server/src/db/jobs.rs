//! The schedule: the `jobs` table.

use protocol::message::{JobKind, JobSpec, ScheduleEntry, Timestamp};
use protocol::trigger::Trigger;
use rusqlite::{params, Connection, OptionalExtension};

use super::ends;
use super::queues::enqueue_tx;
use super::{corrupt, parse_uuid, query_all, Db, DbError, SqlError};

impl Db {
    /// Adds a job to the schedule and queues its first run, in one
    /// transaction: `scripts` are the `(platform, script)` pairs it is
    /// queued as (rendered by the caller, outside the transaction), `next`
    /// the run after this one. `Ok(None)` if the name is taken; otherwise
    /// the platforms whose queue changed.
    pub async fn schedule(
        &self,
        entry: ScheduleEntry,
        next: Option<Timestamp>,
        scripts: Vec<(String, String)>,
        timeout_secs: u64,
    ) -> Result<Option<Vec<String>>, DbError> {
        self.write(move |tx| {
            let mut stored = entry.clone();
            stored.next_run = next;
            if insert_job(tx, &stored)? == 0 {
                return Ok(None);
            }
            let mut platforms = Vec::new();
            for (platform, script) in &scripts {
                let queued =
                    enqueue_tx(tx, platform, &entry.job.name, script, timeout_secs, false)?;
                if queued.is_some_and(|(_, changed)| changed) {
                    platforms.push(platform.clone());
                }
            }
            Ok(Some(platforms))
        })
        .await
    }

    /// Adds a job to the schedule. `Ok(false)` if the name is taken.
    pub async fn insert_job(&self, entry: &ScheduleEntry) -> Result<bool, DbError> {
        let entry = entry.clone();
        self.write(move |tx| Ok(insert_job(tx, &entry)? == 1)).await
    }

    /// Removes a job from the schedule and from every queue. `Ok(false)` if
    /// there was no such job.
    pub async fn delete_job(&self, name: &str) -> Result<bool, DbError> {
        let name = name.to_owned();
        self.write(move |tx| delete_job(tx, &name)).await
    }

    /// Sets a job's next run (and trigger). `Ok(false)` if there is no such job.
    pub async fn reschedule(
        &self,
        name: &str,
        next: Timestamp,
        trigger: Option<&Trigger>,
    ) -> Result<bool, DbError> {
        let (name, trigger) = (name.to_owned(), trigger.cloned());
        self.write(move |tx| reschedule(tx, &name, next, trigger.as_ref()))
            .await
    }

    /// Changes a job in place (see [`JobUpdate`]). `Ok(false)` if there is
    /// no such job.
    pub async fn update_job(&self, update: JobUpdate) -> Result<bool, DbError> {
        self.write(move |tx| update_job(tx, &update)).await
    }

    /// One scheduled job.
    pub async fn job(&self, name: &str) -> Result<Option<ScheduleEntry>, DbError> {
        let name = name.to_owned();
        self.read(move |c| job(c, &name)).await
    }

    /// Every scheduled job, by name.
    pub async fn jobs(&self) -> Result<Vec<ScheduleEntry>, DbError> {
        self.read(jobs).await
    }

    /// Whether any orb-build job is scheduled.
    pub async fn has_orb_jobs(&self) -> Result<bool, DbError> {
        self.read(has_orb_jobs).await
    }

    /// The earliest next run of any job, if any job has one.
    pub async fn earliest_next_run(&self) -> Result<Option<Timestamp>, DbError> {
        self.read(earliest_next_run).await
    }

    /// Queues every job due at `now` (once, however many runs it missed)
    /// and moves its next run on with `next_run`. `render` turns a job into
    /// the `(platform, script)` pairs to queue; it runs outside the write
    /// transaction (it may read template files). Returns the platforms that
    /// got work.
    pub async fn queue_due(
        &self,
        now: Timestamp,
        next_run: impl Fn(&Trigger, Timestamp, Timestamp) -> Option<Timestamp>,
        render: impl Fn(&JobSpec) -> Vec<(String, String)>,
        default_timeout: u64,
    ) -> Result<Vec<String>, DbError> {
        let due = self.read(move |c| due_jobs(c, now)).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<DueRun> = due
            .into_iter()
            .map(|entry| {
                let scheduled = entry.next_run.expect("selected with next_run set");
                DueRun {
                    next: next_run(&entry.trigger, scheduled, now),
                    scheduled,
                    timeout_secs: entry.timeout_secs.unwrap_or(default_timeout),
                    scripts: render(&entry.job),
                    job: entry.job.name,
                }
            })
            .collect();
        self.write(move |tx| queue_runs(tx, &runs)).await
    }
}

/// Adds a job unless one has its name; returns how many rows it added.
pub fn insert_job(tx: &Connection, entry: &ScheduleEntry) -> Result<usize, SqlError> {
    let (kind, platform, script, package) = job_columns(&entry.job.kind);
    Ok(tx.execute(
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
    )?)
}

/// Removes a job from the schedule and from every queue. `Ok(false)` if
/// there was no such job.
pub fn delete_job(tx: &Connection, name: &str) -> Result<bool, SqlError> {
    let n = tx.execute("DELETE FROM jobs WHERE name = ?1", [name])?;
    if n == 1 {
        let reason = format!("cancelled: job {name} was unscheduled");
        ends::cancel_queued(tx, ends::Queued::Job(name), &reason, Timestamp::now())?;
    }
    Ok(n == 1)
}

/// Sets a job's next run (and trigger). `Ok(false)` if there is no such job.
pub fn reschedule(
    tx: &Connection,
    name: &str,
    next: Timestamp,
    trigger: Option<&Trigger>,
) -> Result<bool, SqlError> {
    let n = match trigger {
        Some(t) => tx.execute(
            "UPDATE jobs SET next_run = ?2, trigger = ?3 WHERE name = ?1",
            params![name, next.0, trigger_to_text(t)],
        ),
        None => tx.execute(
            "UPDATE jobs SET next_run = ?2 WHERE name = ?1",
            params![name, next.0],
        ),
    }?;
    Ok(n == 1)
}

/// Changes a job in place (see [`JobUpdate`]). Queued runs of it take
/// the new script, timeout and platform (keeping their UUIDs).
/// `Ok(false)` if there is no such job.
pub fn update_job(tx: &Connection, update: &JobUpdate) -> Result<bool, SqlError> {
    let entry = &update.entry;
    let (kind, platform, script, package) = job_columns(&entry.job.kind);
    let n = tx.execute(
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
    )?;
    if n == 0 {
        return Ok(false);
    }
    let name = &entry.job.name;
    tx.execute(
        "UPDATE queue SET timeout_secs = ?2 WHERE job = ?1",
        params![name, update.timeout_secs as i64],
    )?;
    if let JobKind::Script { platform, script } = &entry.job.kind {
        tx.execute(
            "UPDATE queue SET script = ?2 WHERE job = ?1",
            params![name, script],
        )?;
        move_queued(tx, name, platform)?;
    }
    Ok(true)
}

/// A script job's queued runs on other platforms than its own `platform`
/// move to the back of that platform's queue; where the job waits there
/// already, they are merged into that run.
fn move_queued(tx: &Connection, name: &str, platform: &str) -> Result<(), SqlError> {
    let elsewhere = query_all(
        tx,
        "SELECT platform FROM queue WHERE job = ?1 AND platform <> ?2",
        params![name, platform],
        |r| r.get::<_, String>(0),
    )?;
    for from in elsewhere {
        let waiting: Option<Option<Vec<u8>>> = tx
            .query_row(
                "SELECT uuid FROM queue WHERE platform = ?1 AND job = ?2",
                params![platform, name],
                |r| r.get(0),
            )
            .optional()?;
        match waiting {
            Some(Some(into)) => {
                let into = parse_uuid(&into)?;
                ends::merge_queued(tx, &from, name, into, Timestamp::now())?;
            }
            // Nothing there, or an entry without a UUID (never shown to
            // anyone): this run takes its place.
            _ => {
                tx.execute(
                    "DELETE FROM queue WHERE platform = ?1 AND job = ?2",
                    params![platform, name],
                )?;
                tx.execute(
                    "UPDATE queue SET platform = ?2,
                         position = (SELECT COALESCE(MAX(position), 0) + 1 FROM queue WHERE platform = ?2)
                     WHERE job = ?1 AND platform = ?3",
                    params![name, platform, from],
                )?;
            }
        }
    }
    Ok(())
}

/// One scheduled job.
pub fn job(tx: &Connection, name: &str) -> Result<Option<ScheduleEntry>, SqlError> {
    tx.query_row(&format!("{JOB_SELECT} WHERE name = ?1"), [name], raw_job)
        .optional()?
        .map(entry)
        .transpose()
}

/// Every scheduled job, by name.
pub fn jobs(tx: &Connection) -> Result<Vec<ScheduleEntry>, SqlError> {
    let raws = query_all(tx, &format!("{JOB_SELECT} ORDER BY name"), [], raw_job)?;
    raws.into_iter().map(entry).collect()
}

/// Whether any orb-build job is scheduled.
pub fn has_orb_jobs(tx: &Connection) -> Result<bool, SqlError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'orb')",
        [],
        |r| r.get(0),
    )?)
}

/// The earliest next run of any job, if any job has one.
pub fn earliest_next_run(tx: &Connection) -> Result<Option<Timestamp>, SqlError> {
    let t: Option<i64> = tx.query_row("SELECT MIN(next_run) FROM jobs", [], |r| r.get(0))?;
    Ok(t.map(Timestamp))
}

/// Every job due at `now`.
pub fn due_jobs(tx: &Connection, now: Timestamp) -> Result<Vec<ScheduleEntry>, SqlError> {
    query_all(
        tx,
        &format!("{JOB_SELECT} WHERE next_run IS NOT NULL AND next_run <= ?1"),
        [now.0],
        raw_job,
    )?
    .into_iter()
    .map(entry)
    .collect()
}

/// A due run of a job, ready to queue: what [`queue_runs`] writes.
#[derive(Debug, Clone)]
pub struct DueRun {
    /// The job.
    pub job: String,
    /// The next run it was due at, as read.
    pub scheduled: Timestamp,
    /// Its next run after this one.
    pub next: Option<Timestamp>,
    /// The timeout its queued runs get.
    pub timeout_secs: u64,
    /// The `(platform, script)` pairs to queue.
    pub scripts: Vec<(String, String)>,
}

/// Queues due runs and moves each job's next run on. Returns the platforms
/// whose queue changed.
pub fn queue_runs(tx: &Connection, runs: &[DueRun]) -> Result<Vec<String>, SqlError> {
    let mut platforms = Vec::new();
    for run in runs {
        // Only if nobody (another tick, a reschedule, an unschedule)
        // changed the job since it was read: checked and updated in this
        // transaction, so a due run is queued exactly once.
        let claimed = tx.execute(
            "UPDATE jobs SET next_run = ?2 WHERE name = ?1 AND next_run = ?3",
            params![run.job, run.next.map(|t| t.0), run.scheduled.0],
        )?;
        if claimed == 0 {
            continue;
        }
        for (platform, script) in &run.scripts {
            let queued = enqueue_tx(tx, platform, &run.job, script, run.timeout_secs, false)?;
            if queued.is_some_and(|(_, changed)| changed) {
                platforms.push(platform.clone());
            }
        }
    }
    platforms.sort();
    platforms.dedup();
    Ok(platforms)
}

fn entry(raw: RawJob) -> Result<ScheduleEntry, SqlError> {
    let kind = match raw.kind.as_str() {
        "script" => JobKind::Script {
            platform: raw
                .platform
                .ok_or_else(|| corrupt(format!("job {}: no platform", raw.name)))?,
            script: raw
                .script
                .ok_or_else(|| corrupt(format!("job {}: no script", raw.name)))?,
        },
        "orb" => JobKind::Orb {
            opam_package: raw
                .opam_package
                .ok_or_else(|| corrupt(format!("job {}: no opam package", raw.name)))?,
        },
        other => return Err(corrupt(format!("job {}: kind {other:?}", raw.name))),
    };
    let trigger = trigger_from_text(&raw.trigger)
        .ok_or_else(|| corrupt(format!("job {}: trigger {:?}", raw.name, raw.trigger)))?;
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

/// What `update` changes: the job as it will be, and whether its trigger
/// changed (then its next run becomes `entry.next_run`; otherwise it is
/// left alone, so the job keeps its phase).
#[derive(Debug, Clone)]
pub struct JobUpdate {
    /// The job as it will be.
    pub entry: ScheduleEntry,
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
