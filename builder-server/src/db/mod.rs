//! The server's durable state in SQLite: schedule, per-platform queues,
//! dropped platforms, running builds and the result index (which is also the
//! upload spool).
//!
//! One thread owns the write connection ([`Db::write`]): the rest of the
//! server sends it closures over a channel and awaits the answer, so no
//! runtime thread ever waits for SQLite or an fsync. Requests that arrive
//! while a commit is in flight go together into the next transaction
//! (group commit), each in its own SAVEPOINT so one failing request rolls
//! back alone; every caller is answered only once the COMMIT holding its
//! change is durable (WAL, `synchronous=FULL`), so a `kill -9` loses nothing
//! acknowledged. Reads ([`Db::read`]) run on read-only connections on
//! tokio's blocking threads, beside the writer (WAL), and see every write
//! already answered.
//!
//! The tables' SQL lives by table: [`jobs`] (jobs and schedule), [`queues`]
//! (queues and running builds), [`platforms`], [`results`] (results and
//! the upload spool), [`ends`] (builds that end without running: cancelled
//! or merged), [`import`] (the reference's state). Their functions
//! take a `&Connection` and fail with [`SqlError`], which `?` makes from a
//! rusqlite error; the owner or the reader adds the database's path.
//!
//! The schema version lives in `PRAGMA user_version`; [`MIGRATIONS`] moves
//! an older database forward and a newer one is refused.
//!
//! Times are stored as nanoseconds since the Unix epoch; UUIDs as 16-byte
//! blobs; triggers as text (`hourly`, `daily`, `weekly`, `never`,
//! `cron:EXPR`); a result's record path as text, `''` for a build that could
//! not be stored (it is indexed, never uploaded).

pub mod api;
pub mod ends;
pub mod import;
pub mod jobs;
pub mod platforms;
pub mod queues;
pub mod results;

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use import::{Import, Imported};
pub use jobs::{trigger_from_text, trigger_to_text, JobUpdate};
pub use queues::{LostFate, QueuedJob, Running, MAX_LOST};
pub use results::{NewResult, PendingUpload};

/// A failure of the state database. Fatal for the server, except a full
/// disk (see [`DbError::is_disk_full`]) and a request that panicked (see
/// [`DbError::is_refused`]).
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
    /// One request panicked; its change was rolled back, the others in its
    /// transaction were not affected.
    #[error("state database {path}: a request failed unexpectedly: {what}")]
    Panicked {
        /// The database file.
        path: PathBuf,
        /// The panic's message.
        what: String,
    },
    /// The thread that owns the database is gone: nothing can be written.
    #[error("state database {path}: its writer thread is gone")]
    OwnerGone {
        /// The database file.
        path: PathBuf,
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
            _ => false,
        }
    }

    /// Whether only this one change was refused and the database is fine: a
    /// full disk, or a request that panicked (rolled back alone).
    pub fn is_refused(&self) -> bool {
        self.is_disk_full() || matches!(self, DbError::Panicked { .. })
    }
}

/// What a table function fails with; [`SqlError::at`] names the database.
/// `?` converts a rusqlite error, so the tables need no `map_err`.
#[derive(Debug)]
pub enum SqlError {
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// A row holds something this server cannot read.
    Corrupt(String),
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> SqlError {
        SqlError::Sqlite(e)
    }
}

impl SqlError {
    /// The error about the database at `path`.
    pub fn at(self, path: &Path) -> DbError {
        let path = path.to_owned();
        match self {
            SqlError::Sqlite(source) => DbError::Sqlite { path, source },
            SqlError::Corrupt(what) => DbError::Corrupt { path, what },
        }
    }
}

/// A corrupt row.
pub(crate) fn corrupt(what: impl Into<String>) -> SqlError {
    SqlError::Corrupt(what.into())
}

/// Forward migrations; entry `i` moves schema version `i` to `i + 1`.
/// Append only: never edit an entry that has shipped.
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
    r#"
-- With 100 000 jobs nothing per request may scan a whole table: the
-- scheduler's earliest next run and due jobs, `has_orb_jobs` and the
-- platform checks, a job's queue entries and a build's queue entry.
CREATE INDEX jobs_next_run ON jobs (next_run);
CREATE INDEX jobs_kind_platform ON jobs (kind, platform);
CREATE INDEX queue_job ON queue (job);
CREATE INDEX queue_uuid ON queue (uuid);
"#,
    r#"
-- Every UUID handed out ends in the index: a queued build removed before
-- it ran is recorded cancelled; one folded into another build of the same
-- job names that build (see db/ends.rs).
ALTER TABLE results ADD COLUMN merged_into BLOB;
ALTER TABLE results ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
"#,
];

/// Most requests committed in one transaction: a flood of requests cannot
/// hold back the answers to the first ones.
pub const MAX_BATCH: usize = 256;

/// Most reads running at once, each on its own read-only connection.
const MAX_READERS: usize = 4;

/// Most idle read-only connections kept for reuse.
const MAX_IDLE_READERS: usize = MAX_READERS;

/// A request's value, its type erased on the way through the owner.
type Value = Box<dyn Any + Send>;

/// A request's work, run on the owner thread.
type Run = Box<dyn FnOnce(&Connection) -> Result<Value, SqlError> + Send>;

/// A request to the owner: a closure and where its answer goes.
struct Request {
    run: Run,
    reply: Reply,
}

/// What the owner, the readers and the handles share.
struct Inner {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    /// Reads running now (see [`Db::read`]).
    read_slots: Arc<Semaphore>,
    commits: AtomicU64,
}

/// The state database: a handle on its owner thread and its readers.
pub struct Db {
    requests: Option<mpsc::Sender<Request>>,
    owner: Option<std::thread::JoinHandle<()>>,
    inner: Arc<Inner>,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`, and
    /// starts its owner thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let sql = |e: rusqlite::Error| SqlError::from(e).at(path);
        let mut conn = Connection::open(path).map_err(sql)?;
        configure(&conn).map_err(|e| e.at(path))?;
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
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            readers: Mutex::new(Vec::new()),
            read_slots: Arc::new(Semaphore::new(MAX_READERS)),
            commits: AtomicU64::new(0),
        });
        let (requests, received) = mpsc::channel();
        let owning = Arc::clone(&inner);
        let owner = std::thread::Builder::new()
            .name("state-db".into())
            .spawn(move || own(conn, received, &owning))
            .map_err(|e| {
                SqlError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))).at(path)
            })?;
        Ok(Db {
            requests: Some(requests),
            owner: Some(owner),
            inner,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Transactions committed so far (each holds one or more requests).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` on the owner thread, in the next transaction, and answers
    /// once that transaction is durable. An error (or a panic) in `f` rolls
    /// back `f`'s changes only. The request is sent at once, before the
    /// returned future is first polled: requests are run in call order.
    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SqlError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, DbError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            run: Box::new(move |c| f(c).map(|v| Box::new(v) as Value)),
            reply,
        };
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(request).is_ok());
        let path = self.inner.path.clone();
        async move {
            let gone = || DbError::OwnerGone { path: path.clone() };
            if !sent {
                return Err(gone());
            }
            let value = wait(answer).await.map_err(|_| gone())??;
            Ok(*value
                .downcast::<T>()
                .expect("the owner answers with the request's own type"))
        }
    }

    /// Runs `f` on a read-only connection on a blocking thread, started at
    /// once when one of [`MAX_READERS`] slots is free. It sees every write
    /// already answered.
    pub fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SqlError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, DbError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let path = inner.path.clone();
        // At most MAX_READERS at once: a flood of reads (a thousand workers
        // connecting) waits here instead of taking as many blocking threads
        // and SQLite connections. A free slot starts the read at once.
        let slots = Arc::clone(&inner.read_slots);
        let read = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => Ok(spawn_read(slot, inner, f)),
            Err(_) => Err((inner, f)),
        };
        async move {
            let reading = match read {
                Ok(reading) => reading,
                Err((inner, f)) => {
                    // The semaphore is never closed.
                    let slot = slots.acquire_owned().await.expect("read slots stay open");
                    spawn_read(slot, inner, f)
                }
            };
            reading.await.map_err(|e| DbError::Panicked {
                path,
                what: e.to_string(),
            })?
        }
    }
}

/// Runs a read on a blocking thread, holding its slot until it is done.
fn spawn_read<T: Send + 'static>(
    slot: OwnedSemaphorePermit,
    inner: Arc<Inner>,
    f: impl FnOnce(&Connection) -> Result<T, SqlError> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, DbError>> {
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        inner.read(f)
    })
}

/// Waits for the owner's answer.
#[cfg(not(test))]
async fn wait<T>(answer: oneshot::Receiver<T>) -> Result<T, oneshot::error::RecvError> {
    answer.await
}

/// Waits for the owner's answer on a blocking thread: tokio's paused test
/// clock does not run ahead while a blocking task works, so unit tests with
/// paused time see SQLite as instantaneous, as they would a blocking call.
#[cfg(test)]
async fn wait<T: Send + 'static>(
    answer: oneshot::Receiver<T>,
) -> Result<T, oneshot::error::RecvError> {
    tokio::task::spawn_blocking(move || answer.blocking_recv())
        .await
        .expect("waiting for the owner does not panic")
}

impl Inner {
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, SqlError>) -> Result<T, DbError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(|e| e.at(&self.path))?,
        };
        let value = f(&conn).map_err(|e| e.at(&self.path));
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() < MAX_IDLE_READERS {
            readers.push(conn);
        }
        value
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // The owner finishes what it was sent, then stops; joining it here
        // closes the write connection before the state directory's lock
        // is released.
        self.requests = None;
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}

fn configure(conn: &Connection) -> Result<(), SqlError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, SqlError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The owner thread: takes a batch of requests, runs each in its own
/// savepoint inside one transaction, commits, then answers them all.
fn own(conn: Connection, requests: mpsc::Receiver<Request>, inner: &Inner) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        commit_batch(&conn, batch, inner);
    }
}

/// One transaction for `batch`; answers every request after the commit.
fn commit_batch(conn: &Connection, batch: Vec<Request>, inner: &Inner) {
    let path = &inner.path;
    let mut answers: Vec<(Reply, Result<Value, DbError>)> = Vec::with_capacity(batch.len());
    // Requests answered by this transaction's commit.
    let mut open = 0;
    let mut begun = false;
    for request in batch {
        if !begun {
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                let e = SqlError::from(e).at(path);
                answers.push((request.reply, Err(e)));
                continue;
            }
            begun = true;
            open = answers.len();
        }
        let answer = run_one(conn, request.run, path);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (a full disk can do
            // that): the requests before this one are lost with it and get
            // its error; the rest go into a new transaction.
            let failure = match &answer {
                Err(e) => copy_error(e),
                Ok(_) => SqlError::Corrupt("transaction ended early".into()).at(path),
            };
            for (_, earlier) in &mut answers[open..] {
                if earlier.is_ok() {
                    *earlier = Err(copy_error(&failure));
                }
            }
            answers.push((request.reply, answer.and(Err(failure))));
            begun = false;
            continue;
        }
        answers.push((request.reply, answer));
    }
    if begun {
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                inner.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Nothing of this transaction is durable: every request in
                // it fails with the commit's error (a full disk stays one).
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                let failure = SqlError::from(e).at(path);
                for (_, answer) in &mut answers[open..] {
                    if answer.is_ok() {
                        *answer = Err(copy_error(&failure));
                    }
                }
            }
        }
    }
    for (reply, answer) in answers {
        let _ = reply.send(answer);
    }
}

type Reply = oneshot::Sender<Result<Value, DbError>>;

/// Runs one request in its own savepoint: released when it succeeds, rolled
/// back when it fails or panics.
fn run_one(conn: &Connection, run: Run, path: &Path) -> Result<Value, DbError> {
    conn.execute_batch("SAVEPOINT request")
        .map_err(|e| SqlError::from(e).at(path))?;
    let result = match std::panic::catch_unwind(AssertUnwindSafe(|| run(conn))) {
        Ok(result) => result.map_err(|e| e.at(path)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::error!(
                ?what,
                "a state database request panicked; its change is rolled back"
            );
            Err(DbError::Panicked {
                path: path.to_owned(),
                what,
            })
        }
    };
    if conn.is_autocommit() {
        return result;
    }
    let end = if result.is_ok() {
        "RELEASE request"
    } else {
        "ROLLBACK TO request; RELEASE request"
    };
    conn.execute_batch(end)
        .map_err(|e| SqlError::from(e).at(path))?;
    result
}

/// The same failure again, for another caller (the type is not `Clone`).
fn copy_error(e: &DbError) -> DbError {
    match e {
        DbError::Sqlite { path, source } => DbError::Sqlite {
            path: path.clone(),
            source: copy(source),
        },
        DbError::TooNew {
            path,
            found,
            supported,
        } => DbError::TooNew {
            path: path.clone(),
            found: *found,
            supported: *supported,
        },
        DbError::Corrupt { path, what } => DbError::Corrupt {
            path: path.clone(),
            what: what.clone(),
        },
        DbError::Panicked { path, what } => DbError::Panicked {
            path: path.clone(),
            what: what.clone(),
        },
        DbError::OwnerGone { path } => DbError::OwnerGone { path: path.clone() },
    }
}

/// A copy of a rusqlite error for each caller of a failed commit (the type
/// is not `Clone`); keeps SQLite's code, so a full disk is still one.
fn copy(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Runs a query and collects its rows.
pub(crate) fn query_all<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, SqlError> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A UUID column.
pub(crate) fn parse_uuid(bytes: &[u8]) -> Result<uuid::Uuid, SqlError> {
    uuid::Uuid::from_slice(bytes).map_err(|_| corrupt(format!("uuid of {} bytes", bytes.len())))
}

impl Db {
    /// A trivial query: whether the database still answers (`/healthz`).
    pub async fn ping(&self) -> Result<(), DbError> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
