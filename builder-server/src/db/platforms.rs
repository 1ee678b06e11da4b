//! Dropped platforms (`dropped_platforms`) and the platforms workers asked
//! for (`known_platforms`).

use protocol::message::Timestamp;
use rusqlite::{params, Connection};

use super::{ends, query_all, Db, DbError, SqlError};

impl Db {
    /// Drops a platform: its queue and script jobs go, new ones are
    /// refused. Returns the names of the script jobs removed, or `None` if
    /// the platform was dropped already.
    pub async fn drop_platform(&self, platform: &str) -> Result<Option<Vec<String>>, DbError> {
        let platform = platform.to_owned();
        self.write(move |tx| drop_platform(tx, &platform)).await
    }

    /// Remembers that a worker asked for `platform` (for typo warnings).
    pub async fn note_platform(&self, platform: &str, now: Timestamp) -> Result<(), DbError> {
        let platform = platform.to_owned();
        self.write(move |tx| note_platform(tx, &platform, now))
            .await
    }

    /// Whether a worker ever asked for `platform`, or a job or queue uses it.
    pub async fn platform_in_use(&self, platform: &str) -> Result<bool, DbError> {
        let platform = platform.to_owned();
        self.read(move |c| platform_in_use(c, &platform)).await
    }

    /// Whether a worker ever asked for `platform`.
    pub async fn platform_known(&self, platform: &str) -> Result<bool, DbError> {
        let platform = platform.to_owned();
        self.read(move |c| platform_known(c, &platform)).await
    }

    /// Accepts a dropped platform again. `Ok(false)` if it was not dropped.
    pub async fn undrop_platform(&self, platform: &str) -> Result<bool, DbError> {
        let platform = platform.to_owned();
        self.write(move |tx| undrop_platform(tx, &platform)).await
    }

    /// Whether a platform is dropped.
    pub async fn is_dropped(&self, platform: &str) -> Result<bool, DbError> {
        let platform = platform.to_owned();
        self.read(move |c| is_dropped(c, &platform)).await
    }

    /// Every dropped platform, by name.
    pub async fn dropped_platforms(&self) -> Result<Vec<String>, DbError> {
        self.read(dropped_platforms).await
    }
}

/// Drops a platform: its queue and script jobs go, new ones are refused.
/// Returns the names of the script jobs removed, or `None` if the
/// platform was dropped already.
pub fn drop_platform(tx: &Connection, platform: &str) -> Result<Option<Vec<String>>, SqlError> {
    let n = tx.execute(
        "INSERT OR IGNORE INTO dropped_platforms (platform) VALUES (?1)",
        [platform],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let reason = format!("cancelled: platform {platform} was dropped");
    ends::cancel_queued(
        tx,
        ends::Queued::Platform(platform),
        &reason,
        Timestamp::now(),
    )?;
    let mut stmt =
        tx.prepare("DELETE FROM jobs WHERE kind = 'script' AND platform = ?1 RETURNING name")?;
    let mut names = stmt
        .query_map([platform], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(Some(names))
}

/// Remembers that a worker asked for `platform` (for typo warnings).
pub fn note_platform(tx: &Connection, platform: &str, now: Timestamp) -> Result<(), SqlError> {
    tx.execute(
        "INSERT OR IGNORE INTO known_platforms (platform, first_seen) VALUES (?1, ?2)",
        params![platform, now.0],
    )?;
    Ok(())
}

/// Whether a worker ever asked for `platform`, or a job or queue uses it.
pub fn platform_in_use(tx: &Connection, platform: &str) -> Result<bool, SqlError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM known_platforms WHERE platform = ?1)
             OR EXISTS (SELECT 1 FROM jobs WHERE kind = 'script' AND platform = ?1)
             OR EXISTS (SELECT 1 FROM queue WHERE platform = ?1)",
        [platform],
        |r| r.get(0),
    )?)
}

/// Whether a worker ever asked for `platform`.
pub fn platform_known(tx: &Connection, platform: &str) -> Result<bool, SqlError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM known_platforms WHERE platform = ?1)",
        [platform],
        |r| r.get(0),
    )?)
}

/// Accepts a dropped platform again. `Ok(false)` if it was not dropped.
pub fn undrop_platform(tx: &Connection, platform: &str) -> Result<bool, SqlError> {
    let n = tx.execute(
        "DELETE FROM dropped_platforms WHERE platform = ?1",
        [platform],
    )?;
    Ok(n == 1)
}

/// Whether a platform is dropped.
pub fn is_dropped(tx: &Connection, platform: &str) -> Result<bool, SqlError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM dropped_platforms WHERE platform = ?1)",
        [platform],
        |r| r.get(0),
    )?)
}

/// Every dropped platform, by name.
pub fn dropped_platforms(tx: &Connection) -> Result<Vec<String>, SqlError> {
    query_all(
        tx,
        "SELECT platform FROM dropped_platforms ORDER BY platform",
        [],
        |r| r.get(0),
    )
}
