//! The reference server's state, converted, written in one transaction.

use protocol::message::ScheduleEntry;
use rusqlite::Connection;

use super::jobs::insert_job;
use super::queues::{enqueue_tx, QueuedJob};
use super::{Db, DbError, SqlError};

impl Db {
    /// Imports a reference server's state in one transaction: jobs whose
    /// name is taken, queue entries already queued and platforms already
    /// dropped are left as they are, so importing twice adds nothing. Queue
    /// entries of dropped platforms are skipped. Unless `force`, refuses a
    /// database that already holds jobs: `Ok(Err(count))`.
    pub async fn import(
        &self,
        import: Import,
        force: bool,
    ) -> Result<Result<Imported, u64>, DbError> {
        self.write(move |tx| self::import(tx, &import, force)).await
    }
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

/// Imports a reference server's state in one transaction: jobs whose
/// name is taken, queue entries already queued and platforms already
/// dropped are left as they are, so importing twice adds nothing. Queue
/// entries of dropped platforms are skipped. Unless `force`, refuses a
/// database that already holds jobs: `Ok(Err(count))`.
pub fn import(
    tx: &Connection,
    import: &Import,
    force: bool,
) -> Result<Result<Imported, u64>, SqlError> {
    let existing: i64 = tx.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))?;
    if existing > 0 && !force {
        return Ok(Err(existing as u64));
    }
    let mut done = Imported::default();
    for entry in &import.jobs {
        done.jobs += insert_job(tx, entry)?;
    }
    for platform in &import.dropped {
        done.dropped += tx.execute(
            "INSERT OR IGNORE INTO dropped_platforms (platform) VALUES (?1)",
            [platform],
        )?;
    }
    for q in &import.queued {
        if let Some((_, true)) =
            enqueue_tx(tx, &q.platform, &q.job, &q.script, q.timeout_secs, false)?
        {
            done.queued += 1;
        }
    }
    Ok(Ok(done))
}
