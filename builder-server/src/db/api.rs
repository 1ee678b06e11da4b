//! Read-only queries for the HTTP API (`crate::http`): finished builds
//! filtered by job and platform, the newest successful build of a job, and
//! the queues with their builds' UUIDs.

use protocol::message::ResultEntry;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::results::{raw_result, result_row, RESULT_SELECT};
use super::{parse_uuid, query_all, Db, DbError, SqlError};

/// A queued build: (platform, job, uuid), front first.
pub type QueuedBuild = (String, String, Option<Uuid>);

impl Db {
    /// Finished builds matching the filters, newest first, at most `limit`.
    pub async fn results_filtered(
        &self,
        job: Option<&str>,
        platform: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResultEntry>, DbError> {
        let (job, platform) = (job.map(str::to_owned), platform.map(str::to_owned));
        self.read(move |c| results_filtered(c, job.as_deref(), platform.as_deref(), limit))
            .await
    }

    /// One finished build with its attempts.
    pub async fn result_entry(&self, uuid: Uuid) -> Result<Option<ResultEntry>, DbError> {
        self.read(move |c| result_entry(c, uuid)).await
    }

    /// The newest stored build of `job` that exited 0 (on `platform`).
    pub async fn latest_success(
        &self,
        job: &str,
        platform: Option<&str>,
    ) -> Result<Option<Uuid>, DbError> {
        let (job, platform) = (job.to_owned(), platform.map(str::to_owned));
        self.read(move |c| latest_success(c, &job, platform.as_deref()))
            .await
    }

    /// Every queued build, by platform, front first.
    pub async fn queued_builds(&self) -> Result<Vec<QueuedBuild>, DbError> {
        self.read(queued_builds).await
    }
}

/// Finished builds matching the filters, newest first.
pub fn results_filtered(
    tx: &Connection,
    job: Option<&str>,
    platform: Option<&str>,
    limit: u32,
) -> Result<Vec<ResultEntry>, SqlError> {
    let raws = query_all(
        tx,
        &format!(
            "{RESULT_SELECT} WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR platform = ?2)
             ORDER BY started DESC, rowid DESC LIMIT ?3"
        ),
        params![job, platform, limit as i64],
        raw_result,
    )?;
    raws.into_iter().map(result_row).collect()
}

/// One finished build with its attempts.
pub fn result_entry(tx: &Connection, uuid: Uuid) -> Result<Option<ResultEntry>, SqlError> {
    let raws = query_all(
        tx,
        &format!("{RESULT_SELECT} WHERE uuid = ?1"),
        [uuid.as_bytes()],
        raw_result,
    )?;
    raws.into_iter().next().map(result_row).transpose()
}

/// The newest build of `job` with a record that exited 0.
pub fn latest_success(
    tx: &Connection,
    job: &str,
    platform: Option<&str>,
) -> Result<Option<Uuid>, SqlError> {
    let uuid: Option<Vec<u8>> = tx
        .query_row(
            "SELECT uuid FROM results WHERE job = ?1 AND (?2 IS NULL OR platform = ?2)
                 AND outcome = 'exited' AND outcome_value = 0 AND path != ''
             ORDER BY started DESC, rowid DESC LIMIT 1",
            params![job, platform],
            |r| r.get(0),
        )
        .optional()?;
    uuid.map(|u| parse_uuid(&u)).transpose()
}

/// Every queued build, by platform, front first.
pub fn queued_builds(tx: &Connection) -> Result<Vec<QueuedBuild>, SqlError> {
    let rows = query_all(
        tx,
        "SELECT platform, job, uuid FROM queue ORDER BY platform, position",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        },
    )?;
    rows.into_iter()
        .map(|(p, j, u)| Ok((p, j, u.map(|u| parse_uuid(&u)).transpose()?)))
        .collect()
}
