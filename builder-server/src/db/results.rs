//! Finished builds (`results`), which are also the upload spool.

use std::path::PathBuf;

use protocol::message::{JobOutcome, ResultEntry, ResultSummary, Timestamp, UploadState};
use protocol::signal::Signal;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{corrupt, parse_uuid, query_all, Db, DbError, SqlError};

impl Db {
    /// Indexes a finished build and forgets it as running, in one
    /// transaction. With `upload`, the record joins the upload spool.
    pub async fn finish(&self, result: &NewResult, upload: bool) -> Result<(), DbError> {
        let result = result.clone();
        self.write(move |tx| finish(tx, &result, upload)).await
    }

    /// Recent builds, newest first.
    pub async fn results(
        &self,
        job: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResultEntry>, DbError> {
        let job = job.map(str::to_owned);
        self.read(move |c| results(c, job.as_deref(), limit)).await
    }

    /// Where a finished build's record is; `None` if there is no such build
    /// or it has no record (see [`Db::result`]).
    pub async fn result_path(&self, uuid: Uuid) -> Result<Option<PathBuf>, DbError> {
        self.read(move |c| result_path(c, uuid)).await
    }

    /// One finished build, whether or not it has a record.
    pub async fn result(&self, uuid: Uuid) -> Result<Option<ResultSummary>, DbError> {
        self.read(move |c| result(c, uuid)).await
    }

    /// The newest finished build matching the filters: (uuid, started).
    pub async fn latest_result(
        &self,
        platform: Option<&str>,
        job: Option<&str>,
    ) -> Result<Option<(Uuid, Timestamp)>, DbError> {
        let (platform, job) = (platform.map(str::to_owned), job.map(str::to_owned));
        self.read(move |c| latest_result(c, platform.as_deref(), job.as_deref()))
            .await
    }

    /// The oldest records due for an upload attempt at `now`, skipping
    /// `busy` ones, at most `limit`.
    pub async fn due_uploads(
        &self,
        now: Timestamp,
        busy: &[Uuid],
        limit: usize,
    ) -> Result<Vec<PendingUpload>, DbError> {
        let busy = busy.to_vec();
        self.read(move |c| due_uploads(c, now, &busy, limit)).await
    }

    /// When the next pending upload is due, if any is pending.
    pub async fn next_upload_due(&self) -> Result<Option<Timestamp>, DbError> {
        self.read(next_upload_due).await
    }

    /// Records a delivered upload.
    pub async fn upload_delivered(&self, uuid: Uuid, at: Timestamp) -> Result<(), DbError> {
        self.write(move |tx| upload_delivered(tx, uuid, at)).await
    }

    /// Records a failed upload attempt and when to try again.
    pub async fn upload_failed(
        &self,
        uuid: Uuid,
        error: &str,
        next: Timestamp,
    ) -> Result<(), DbError> {
        let error = error.to_owned();
        self.write(move |tx| upload_failed(tx, uuid, &error, next))
            .await
    }

    /// Puts every record not yet delivered into the spool (after
    /// `--upload` is configured on a server that ran without it).
    pub async fn spool_unconfigured(&self, now: Timestamp) -> Result<usize, DbError> {
        self.write(move |tx| spool_unconfigured(tx, now)).await
    }

    /// Records waiting for delivery, and when the oldest of them finished
    /// (for the metrics).
    pub async fn spool_stats(&self) -> Result<(u64, Option<Timestamp>), DbError> {
        self.read(spool_stats).await
    }
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

/// Indexes a finished build and forgets it as running, in one
/// transaction. With `upload`, the record joins the upload spool.
pub fn finish(tx: &Connection, result: &NewResult, upload: bool) -> Result<(), SqlError> {
    let (kind, value, message) = outcome_columns(&result.outcome);
    // The column is NOT NULL: an unstored build's path is ''.
    let path = match &result.path {
        Some(path) => path
            .to_str()
            .ok_or_else(|| corrupt(format!("non-UTF-8 path {}", path.display())))?,
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
    )?;
    tx.execute(
        "DELETE FROM running WHERE uuid = ?1",
        [result.uuid.as_bytes()],
    )?;
    Ok(())
}

/// Recent builds, newest first.
pub fn results(
    tx: &Connection,
    job: Option<&str>,
    limit: u32,
) -> Result<Vec<ResultEntry>, SqlError> {
    let raws = query_all(tx,
        &format!(
            "{RESULT_SELECT} WHERE ?1 IS NULL OR job = ?1 ORDER BY started DESC, rowid DESC LIMIT ?2"
        ),
        params![job, limit as i64],
        raw_result,
    )?;
    raws.into_iter().map(result_row).collect()
}

/// Where a finished build's record is; `None` if there is no such build
/// or it has no record (see [`Db::result`]).
pub fn result_path(tx: &Connection, uuid: Uuid) -> Result<Option<PathBuf>, SqlError> {
    let path: Option<String> = tx
        .query_row(
            "SELECT path FROM results WHERE uuid = ?1 AND path != ''",
            [uuid.as_bytes()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(path.map(PathBuf::from))
}

/// One finished build, whether or not it has a record.
pub fn result(tx: &Connection, uuid: Uuid) -> Result<Option<ResultSummary>, SqlError> {
    Ok(super::api::result_entry(tx, uuid)?.map(|e| e.summary))
}

/// The newest finished build matching the filters: (uuid, started).
/// Builds that never ran (cancelled or merged while queued) do not count.
pub fn latest_result(
    tx: &Connection,
    platform: Option<&str>,
    job: Option<&str>,
) -> Result<Option<(Uuid, Timestamp)>, SqlError> {
    let row: Option<(Vec<u8>, i64)> = tx
        .query_row(
            "SELECT uuid, started FROM results WHERE (?1 IS NULL OR platform = ?1) AND (?2 IS NULL OR job = ?2)
                 AND merged_into IS NULL AND cancelled = 0
             ORDER BY started DESC, rowid DESC LIMIT 1",
            params![platform, job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(uuid, started)| Ok((parse_uuid(&uuid)?, Timestamp(started))))
        .transpose()
}

/// The oldest records due for an upload attempt at `now`, skipping
/// `busy` ones, at most `limit`.
pub fn due_uploads(
    tx: &Connection,
    now: Timestamp,
    busy: &[Uuid],
    limit: usize,
) -> Result<Vec<PendingUpload>, SqlError> {
    let mut stmt = tx.prepare_cached(
        "SELECT uuid, job, path, upload_attempts FROM results
             WHERE upload_state = 'pending' AND upload_next <= ?1 ORDER BY finished, rowid",
    )?;
    let mut rows = stmt.query([now.0])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let uuid = parse_uuid(&row.get::<_, Vec<u8>>(0)?)?;
        if busy.contains(&uuid) {
            continue;
        }
        out.push(PendingUpload {
            uuid,
            job: row.get(1)?,
            path: PathBuf::from(row.get::<_, String>(2)?),
            attempts: row.get::<_, i64>(3)? as u32,
        });
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// When the next pending upload is due, if any is pending.
pub fn next_upload_due(tx: &Connection) -> Result<Option<Timestamp>, SqlError> {
    let t: Option<i64> = tx.query_row(
        "SELECT MIN(upload_next) FROM results WHERE upload_state = 'pending'",
        [],
        |r| r.get(0),
    )?;
    Ok(t.map(Timestamp))
}

/// Records a delivered upload.
pub fn upload_delivered(tx: &Connection, uuid: Uuid, at: Timestamp) -> Result<(), SqlError> {
    tx.execute(
        "UPDATE results SET upload_state = 'delivered', delivered_at = ?2, upload_next = NULL, upload_error = NULL
         WHERE uuid = ?1",
        params![uuid.as_bytes(), at.0],
    )?;
    Ok(())
}

/// Records a failed upload attempt and when to try again.
pub fn upload_failed(
    tx: &Connection,
    uuid: Uuid,
    error: &str,
    next: Timestamp,
) -> Result<(), SqlError> {
    tx.execute(
        "UPDATE results SET upload_attempts = upload_attempts + 1, upload_error = ?2, upload_next = ?3
         WHERE uuid = ?1 AND upload_state = 'pending'",
        params![uuid.as_bytes(), error, next.0],
    )?;
    Ok(())
}

/// Puts every record not yet delivered into the spool (after `--upload`
/// is configured on a server that ran without it).
pub fn spool_unconfigured(tx: &Connection, now: Timestamp) -> Result<usize, SqlError> {
    Ok(tx.execute(
        "UPDATE results SET upload_state = 'pending', upload_next = ?1 WHERE upload_state = 'none' AND path != ''",
        [now.0],
    )?)
}

/// Records waiting for delivery, and when the oldest of them finished
/// (for the metrics).
pub fn spool_stats(tx: &Connection) -> Result<(u64, Option<Timestamp>), SqlError> {
    let (count, oldest): (i64, Option<i64>) = tx.query_row(
        "SELECT COUNT(*), MIN(finished) FROM results WHERE upload_state = 'pending'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((count.max(0) as u64, oldest.map(Timestamp)))
}

pub(super) fn result_row(raw: RawResult) -> Result<ResultEntry, SqlError> {
    let outcome = outcome_from_columns(&raw.outcome, raw.value, raw.message)
        .ok_or_else(|| corrupt(format!("result outcome {:?}", raw.outcome)))?;
    let upload = match raw.upload_state.as_str() {
        "none" => UploadState::NotConfigured,
        "pending" => UploadState::Pending {
            attempts: raw.attempts as u32,
            last_error: raw.error,
        },
        "delivered" => UploadState::Delivered {
            at: Timestamp(raw.delivered_at.unwrap_or(raw.finished)),
        },
        other => return Err(corrupt(format!("upload state {other:?}"))),
    };
    Ok(ResultEntry {
        summary: ResultSummary {
            uuid: parse_uuid(&raw.uuid)?,
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

/// The columns [`raw_result`] reads.
pub(super) const RESULT_SELECT: &str =
    "SELECT uuid, job, platform, started, finished, outcome, outcome_value, outcome_message,
            upload_state, upload_attempts, upload_error, delivered_at, attempts FROM results";

pub(super) struct RawResult {
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

pub(super) fn raw_result(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawResult> {
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
