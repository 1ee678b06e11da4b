//! Where finished builds go: `DIR/<job>/<uuid>/full`.
//!
//! While a job runs, its artifacts are written as they arrive to numbered
//! files in `DIR/<job>/<uuid>/artifacts.partial/`, so the server never holds
//! one in memory. When the worker reports the end, [`write_full`] streams the
//! build record (console, result and every artifact file) to `full.partial`,
//! fsyncs it, renames it to `full` and fsyncs the directories; only then is
//! the build indexed and acknowledged.
//!
//! A write that fails ends that build only: the caller records it as
//! aborted with [`StoreError::abort_reason`] (`disk full: ...` when the disk
//! is full), and what was half written goes, empty build directory included.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use protocol::record::{self, ConsoleSource, FileArtifact, RecordHead};
use uuid::Uuid;

/// Why a build could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The worker sent something inconsistent.
    #[error("{0}")]
    Protocol(String),
}

impl StoreError {
    /// Whether the file system is out of space (or quota).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            StoreError::Protocol(_) => false,
        }
    }

    /// Whether the worker is at fault (it sent something inconsistent), as
    /// opposed to the server's disk.
    pub fn is_protocol(&self) -> bool {
        matches!(self, StoreError::Protocol(_))
    }

    /// The message a build stopped by this error is recorded as aborted
    /// with: `disk full: WHAT: PATH: CAUSE` for lack of space, `WHAT: PATH:
    /// CAUSE` otherwise. (Spelled out here, not taken from `Display`, so
    /// the cause is in the record whatever `Display` shows.)
    pub fn abort_reason(&self, what: &str) -> String {
        let detail = match self {
            StoreError::Io { path, source } => format!("{what}: {}: {source}", path.display()),
            StoreError::Protocol(reason) => format!("{what}: {reason}"),
        };
        if self.is_disk_full() {
            format!("disk full: {detail}")
        } else {
            detail
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory of one build.
pub fn build_dir(state_dir: &Path, job: &str, uuid: Uuid) -> PathBuf {
    state_dir.join(job).join(uuid.to_string())
}

/// The directory of a running build's artifact spool, in its build
/// directory.
pub const ARTIFACTS_DIR: &str = "artifacts.partial";

/// Artifacts of a running build, spooled to disk as they arrive (by the
/// build's writer, on a thread of the spool pool, [`crate::spool`]).
pub struct ArtifactSpool {
    dir: PathBuf,
    artifacts: Vec<FileArtifact>,
    current: Option<(File, u64)>,
}

impl ArtifactSpool {
    /// A spool for the build in `build_dir` (created on the first artifact).
    pub fn new(build_dir: &Path) -> ArtifactSpool {
        ArtifactSpool {
            dir: build_dir.join(ARTIFACTS_DIR),
            artifacts: Vec::new(),
            current: None,
        }
    }

    /// Starts an artifact of `len` bytes at `path` (relative to the job
    /// directory, checked here).
    pub fn start(&mut self, path: Vec<u8>, len: u64) -> Result<(), StoreError> {
        self.check_complete()?;
        check_artifact_path(&path).map_err(StoreError::Protocol)?;
        if self.artifacts.is_empty() {
            fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        let file_path = self.dir.join(self.artifacts.len().to_string());
        let file = File::create(&file_path).map_err(io_err(&file_path))?;
        self.artifacts.push(FileArtifact {
            path,
            file: file_path,
            len,
        });
        self.current = Some((file, len));
        Ok(())
    }

    /// Appends a chunk to the current artifact.
    pub fn chunk(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let Some((file, remaining)) = self.current.as_mut() else {
            return Err(StoreError::Protocol(
                "artifact chunk without artifact start".into(),
            ));
        };
        if data.len() as u64 > *remaining {
            return Err(StoreError::Protocol(format!(
                "artifact {} is longer than announced",
                record::lossy(&self.artifacts.last().expect("current artifact").path)
            )));
        }
        let path = &self.artifacts.last().expect("current artifact").file;
        file.write_all(data).map_err(io_err(path))?;
        *remaining -= data.len() as u64;
        Ok(())
    }

    fn check_complete(&mut self) -> Result<(), StoreError> {
        match self.current.take() {
            Some((_, 0)) | None => Ok(()),
            Some((_, remaining)) => Err(StoreError::Protocol(format!(
                "artifact {} ended {remaining} bytes short",
                record::lossy(&self.artifacts.last().expect("current artifact").path)
            ))),
        }
    }

    /// Every artifact received, checking the last one is complete.
    pub fn finish(mut self) -> Result<(PathBuf, Vec<FileArtifact>), StoreError> {
        self.check_complete()?;
        Ok((self.dir, self.artifacts))
    }

    /// Throws the spooled artifacts away.
    pub fn discard(self) {
        drop(self.current);
        remove_dir_logged(&self.dir);
    }
}

/// Artifact paths come from workers: relative, `/`-separated, no `.`/`..`
/// components, no NUL, not empty.
pub fn check_artifact_path(path: &[u8]) -> Result<(), String> {
    let shown = record::lossy(path);
    if path.is_empty() || path.contains(&0) || path.starts_with(b"/") {
        return Err(format!("invalid artifact path {shown:?}"));
    }
    if path
        .split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(format!("invalid artifact path {shown:?}"));
    }
    Ok(())
}

/// How many job directories [`JobDirs`] remembers before it starts afresh
/// (which only costs one more fsync per job).
const JOB_DIRS_REMEMBERED: usize = 100_000;

/// Job directories (`DIR/<job>`) known to be durable in the state directory.
///
/// A build's record needs its own directory entry and its job directory's
/// entry on disk. The job directory is new only for a job's first build, so
/// the state directory is fsynced once per job and server process instead
/// of once per build; and builds of new jobs that finish together share
/// one fsync of it ([`GroupSync`]).
#[derive(Default)]
pub struct JobDirs {
    durable: Mutex<HashSet<PathBuf>>,
    state_dir: GroupSync,
}

impl JobDirs {
    /// Creates `job_dir` if needed (blocking). Returns whether it was
    /// created: its entry is then to be made durable by
    /// [`JobDirs::make_durable`].
    fn create(&self, job_dir: &Path) -> Result<bool, StoreError> {
        match fs::create_dir(job_dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(job_dir).map_err(io_err(job_dir))?;
                Ok(true)
            }
            Err(e) => Err(io_err(job_dir)(e)),
        }
    }

    /// Makes `job_dir`'s entry in its parent durable unless it is known to
    /// be (blocking). `created`: this build created it just now.
    fn make_durable(&self, job_dir: &Path, created: bool) -> Result<(), StoreError> {
        // (A job directory removed from outside and created again is
        // synced again.) Only a sync that completed is remembered, so a
        // second build of the same job never skips one that is under way.
        if !created && lock(&self.durable).contains(job_dir) {
            return Ok(());
        }
        if let Some(state_dir) = job_dir.parent() {
            self.state_dir.sync(state_dir)?;
        }
        let mut durable = lock(&self.durable);
        if durable.len() >= JOB_DIRS_REMEMBERED {
            durable.clear();
        }
        durable.insert(job_dir.to_owned());
        Ok(())
    }

    /// Removes `job_dir` if it is empty (blocking), so that a job whose
    /// builds all ended without a record (lost, cancelled) leaves no empty
    /// folder behind. It is forgotten as durable: whoever creates it again
    /// (a spool, a record) makes its entry durable again before a record
    /// counts on it.
    pub fn remove_if_empty(&self, job_dir: &Path) {
        let mut durable = lock(&self.durable);
        // It fails when not empty (another build of the job has a folder
        // there) or already gone: both fine.
        if fs::remove_dir(job_dir).is_ok() {
            durable.remove(job_dir);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fsyncs of one directory shared between the threads that need one at
/// the same time (a group commit): a thread that needs the directory's
/// current entries durable waits for the next fsync that *starts* after it
/// asked, or starts it. While one fsync runs, every thread arriving waits
/// for the next, and that one serves them all.
#[derive(Default)]
struct GroupSync {
    state: Mutex<Syncs>,
    done: Condvar,
}

#[derive(Default)]
struct Syncs {
    /// The directory synced (the first one asked for; another one is
    /// synced on its own).
    dir: Option<PathBuf>,
    /// Fsyncs started and completed (successfully).
    started: u64,
    completed: u64,
    running: bool,
    /// Threads waiting for a running fsync to end.
    waiting: usize,
}

impl GroupSync {
    fn sync(&self, dir: &Path) -> Result<(), StoreError> {
        self.sync_with(dir, sync_dir)
    }

    /// [`GroupSync::sync`] with `fsync` doing the fsync.
    fn sync_with(
        &self,
        dir: &Path,
        fsync: impl Fn(&Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut syncs = lock(&self.state);
        match &syncs.dir {
            None => syncs.dir = Some(dir.to_owned()),
            Some(known) if known != dir => {
                drop(syncs);
                return fsync(dir);
            }
            Some(_) => {}
        }
        // The first fsync that starts from now on.
        let needed = syncs.started + 1;
        loop {
            if syncs.completed >= needed {
                return Ok(());
            }
            if syncs.running {
                syncs.waiting += 1;
                syncs = self.done.wait(syncs).unwrap_or_else(|e| e.into_inner());
                syncs.waiting -= 1;
                continue;
            }
            syncs.running = true;
            syncs.started += 1;
            let mine = syncs.started;
            drop(syncs);
            let synced = fsync(dir);
            syncs = lock(&self.state);
            syncs.running = false;
            if synced.is_ok() {
                syncs.completed = mine;
            }
            self.done.notify_all();
            // (A failed fsync fails its own caller; the others try again.)
            synced?;
        }
    }
}

/// Writes the record durably to `build_dir/full` (blocking: call from a
/// blocking thread), its console from `console` when given (from
/// `head.console` otherwise). Returns the record's path.
///
/// Every directory entry the record needs is created first and the fsyncs
/// come after (the record, its rename, then the directories inward out):
/// on a journaling file system the record's own fsync commits the new
/// directories with it, so the directory fsyncs that follow find little or
/// nothing left to write.
pub fn write_full(
    job_dirs: &JobDirs,
    build_dir: &Path,
    head: &RecordHead,
    console: Option<&mut dyn ConsoleSource>,
    artifacts: &[FileArtifact],
) -> Result<PathBuf, StoreError> {
    let job_dir = build_dir
        .parent()
        .expect("a build directory is inside its job directory");
    let mut new_job = job_dirs.create(job_dir)?;
    match fs::create_dir(build_dir) {
        Ok(()) => {}
        // Spools were written there.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        // The job's folder was removed meanwhile (its other builds ended
        // without a record): created again, and made durable again.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            new_job = true;
            fs::create_dir_all(build_dir).map_err(io_err(build_dir))?;
        }
        Err(e) => return Err(io_err(build_dir)(e)),
    }
    let partial = build_dir.join("full.partial");
    let full = build_dir.join("full");
    let written = write_partial(&partial, head, console, artifacts)
        .and_then(|()| fs::rename(&partial, &full).map_err(io_err(&full)));
    if let Err(e) = written {
        // Whatever was written is of no use, and may be what fills the disk.
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    // `full` in the build directory, the build directory in the job's, the
    // job's in the state directory.
    sync_dir(build_dir)?;
    sync_dir(job_dir)?;
    job_dirs.make_durable(job_dir, new_job)?;
    Ok(full)
}

/// Writes and fsyncs the record to `partial`.
///
/// The file itself goes to the record writer (which buffers headers and
/// lines itself), so artifact bodies are copied file to file by the kernel
/// where it can.
fn write_partial(
    partial: &Path,
    head: &RecordHead,
    console: Option<&mut dyn ConsoleSource>,
    artifacts: &[FileArtifact],
) -> Result<(), StoreError> {
    let mut file = File::create(partial).map_err(io_err(partial))?;
    match console {
        Some(console) => record::write_record_from_spools(&mut file, head, console, artifacts),
        None => record::write_record(&mut file, head, artifacts),
    }
    .map_err(io_err(partial))?;
    file.sync_all().map_err(io_err(partial))
}

/// Removes an artifact spool (`DIR/<job>/<uuid>/artifacts.partial`).
pub fn remove_spool(spool: &Path) {
    remove_dir_logged(spool);
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Removes a build directory left incomplete by a crash or a lost worker
/// (one without a `full` record).
pub fn remove_incomplete(build_dir: &Path) {
    if !build_dir.join("full").exists() {
        remove_dir_logged(build_dir);
    }
}

fn remove_dir_logged(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(dir = ?dir.display(), error = ?protocol::Chain(&e), "cannot remove directory")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_are_checked() {
        for ok in [&b"a"[..], b"out/sub/file.txt", b"\xff\xfe"] {
            assert!(check_artifact_path(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../b",
            b"a//b",
            b"./a",
            b"a\0b",
            b"a/",
        ] {
            assert!(check_artifact_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_are_written_whether_or_not_the_job_directory_exists() {
        let state = tempfile::tempdir().unwrap();
        let dirs = JobDirs::default();
        let head = RecordHead {
            job: record::ScriptJob::new(b"job", b"true", None),
            uuid: [7; 16],
            console: Vec::new(),
            started: chrono::DateTime::UNIX_EPOCH,
            finished: chrono::DateTime::UNIX_EPOCH,
            time_forms: record::TimeForms::default(),
            result: record::ExecResult::Exited(0),
        };
        let write = |uuid: Uuid| {
            let build = build_dir(state.path(), "job", uuid);
            let full = write_full(&dirs, &build, &head, None, &[]).unwrap();
            assert_eq!(full, build.join("full"));
            assert!(full.is_file());
        };
        write(Uuid::new_v4());
        write(Uuid::new_v4());
        assert_eq!(fs::read_dir(state.path().join("job")).unwrap().count(), 2);
        // Removed from outside: created (and synced) again.
        fs::remove_dir_all(state.path().join("job")).unwrap();
        write(Uuid::new_v4());
        // A state directory that is not there yet.
        fs::remove_dir_all(state.path()).unwrap();
        write(Uuid::new_v4());
    }

    /// Threads that ask while an fsync runs share the next one; none
    /// returns on the fsync that was already running when it asked.
    #[test]
    fn directory_fsyncs_are_shared_but_never_started_before_the_request() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{mpsc, Arc};

        let group = Arc::new(GroupSync::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let fsync = {
            let calls = Arc::clone(&calls);
            move |_: &Path| {
                // The first fsync is slow: it runs until released.
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    released.lock().unwrap().recv().unwrap();
                }
                Ok(())
            }
        };
        let spawn = |group: &Arc<GroupSync>| {
            let (group, fsync) = (Arc::clone(group), fsync.clone());
            std::thread::spawn(move || group.sync_with(Path::new("/state"), fsync))
        };
        let first = spawn(&group);
        let wait_for = |what: &str, cond: &dyn Fn(&Syncs) -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !cond(&lock(&group.state)) {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::yield_now();
            }
        };
        wait_for("the first fsync to run", &|s| s.running);
        let later: Vec<_> = (0..5).map(|_| spawn(&group)).collect();
        wait_for("five to wait", &|s| s.waiting == 5);
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for t in later {
            t.join().unwrap().unwrap();
        }
        // The first, and one more that serves the five.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(lock(&group.state).completed, 2);
        // Another directory is synced on its own.
        group.sync_with(Path::new("/other"), fsync).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(lock(&group.state).completed, 2);
    }

    #[test]
    fn spool_refuses_more_or_fewer_bytes_than_announced() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = ArtifactSpool::new(dir.path());
        spool.start(b"a".to_vec(), 3).unwrap();
        assert!(spool.chunk(b"abcd").is_err());
        spool.chunk(b"ab").unwrap();
        assert!(spool.start(b"b".to_vec(), 1).is_err());

        let mut spool = ArtifactSpool::new(dir.path());
        spool.start(b"a".to_vec(), 3).unwrap();
        spool.chunk(b"abc").unwrap();
        spool.start(b"b/c".to_vec(), 0).unwrap();
        let (_, artifacts) = spool.finish().unwrap();
        assert_eq!(artifacts.len(), 2);
        assert_eq!(fs::read(&artifacts[0].file).unwrap(), b"abc");
    }
}
