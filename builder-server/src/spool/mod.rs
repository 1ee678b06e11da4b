//! A running build's spools: its console and its artifacts go to files in
//! `DIR/<job>/<uuid>/` as they arrive, written by a small pool of writer
//! threads ([`WRITERS`], shared by every build), so the server's memory stays
//! the same whatever their sizes and no runtime thread ever waits for the
//! disk.
//!
//! The worker's handler hands console batches and artifact chunks to the
//! build's writer through a bounded queue ([`CHANNEL`] messages): a worker
//! faster than the disk waits for it (backpressure) instead of growing the
//! server's memory. A build with something queued is drained by one pool
//! thread at a time, in order; a build that queued nothing (a job without
//! output or artifacts) never involves a thread. The first error (disk
//! full, unwritable folder, or a worker's inconsistent artifact) stops the
//! writer; the handler learns it at its next send or at the end
//! ([`Spooled::error`]) and ends the build.
//!
//! The console's own spool, and how it keeps `--max-console-bytes`, is in
//! [`console`].

mod console;
mod pool;

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::message::OutputLine;
use protocol::record::FileArtifact;
use tokio::sync::{oneshot, Semaphore};

use crate::store::{ArtifactSpool, StoreError};
use console::PUBLISH_BYTES;
pub use console::{
    console_dir, read_lines, ConsoleFiles, ConsoleWriter, SharedMap, SpoolMap, SpoolRead,
    LINE_OVERHEAD,
};

/// Messages waiting for a build's writer (console batches or 256 KiB
/// artifact chunks) before the worker's handler waits.
pub const CHANNEL: usize = 16;

/// Threads writing the spools of every running build.
pub const WRITERS: usize = 4;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A spooling failure, and what was being spooled.
#[derive(Debug)]
pub struct SpoolError {
    /// `"cannot spool an artifact"` or `"cannot spool the console"`.
    pub what: &'static str,
    /// Why.
    pub error: StoreError,
}

/// What a build's writer leaves when it is done.
#[derive(Debug)]
pub struct Spooled {
    /// The console, unless its spool broke.
    pub console: Option<ConsoleFiles>,
    /// The artifacts' spool and the artifacts, all complete (none after an
    /// error: they are removed then).
    pub artifacts: (Option<PathBuf>, Vec<FileArtifact>),
    /// The first error, which stopped the writer.
    pub error: Option<SpoolError>,
    build_dir: PathBuf,
    console_dir: PathBuf,
}

impl Spooled {
    /// Nothing spooled (a build that never ran here).
    pub fn none() -> Spooled {
        Spooled {
            console: None,
            artifacts: (None, Vec::new()),
            error: None,
            build_dir: PathBuf::new(),
            console_dir: PathBuf::new(),
        }
    }

    /// Removes the spools (blocking), and the build's directory if that
    /// leaves it empty.
    pub fn discard(&self) {
        if self.build_dir.as_os_str().is_empty() {
            return;
        }
        crate::store::remove_spool(&self.console_dir);
        crate::store::remove_spool(&self.build_dir.join(crate::store::ARTIFACTS_DIR));
        // Only if empty: another attempt may be writing there already.
        let _ = fs::remove_dir(&self.build_dir);
    }

    /// [`Spooled::discard`] on a blocking thread.
    pub async fn discard_async(self) {
        let _ = tokio::task::spawn_blocking(move || self.discard()).await;
    }

    /// Removes the artifacts' spool (for a build recorded without them).
    pub async fn drop_artifacts(&mut self) {
        if let (Some(dir), _) = std::mem::take(&mut self.artifacts) {
            let _ = tokio::task::spawn_blocking(move || crate::store::remove_spool(&dir)).await;
        }
    }
}

enum Op {
    Console(Arc<[OutputLine]>),
    ArtifactStart { path: Vec<u8>, len: u64 },
    ArtifactChunk(Vec<u8>),
}

/// The writer is gone: it stopped at an error, which [`BuildSpool::finish`]
/// returns.
#[derive(Debug)]
pub struct WriterGone;

/// The handle on a build's writer.
pub struct BuildSpool {
    writer: Arc<Writer>,
    /// Something was queued: finishing then goes through a pool thread.
    sent: bool,
    finished: bool,
}

impl BuildSpool {
    /// Starts the writer of attempt `attempt` of the build in `build_dir`;
    /// its console is kept within `limit` bytes and shown to observers
    /// through `map`. Nothing is created on disk before the first line or
    /// artifact.
    pub fn start(build_dir: &Path, attempt: u32, limit: usize, map: SharedMap) -> BuildSpool {
        let console_dir = console_dir(build_dir, attempt);
        let console = ConsoleWriter::new(console_dir.clone(), limit, map);
        let writer = Writer {
            queue: Mutex::new(Queue {
                ops: VecDeque::new(),
                scheduled: false,
                close: None,
                stopped: false,
            }),
            room: Semaphore::new(CHANNEL),
            spools: Mutex::new(Spools {
                artifacts: Some(ArtifactSpool::new(build_dir)),
                console: Some(console),
                error: None,
                build_dir: build_dir.to_owned(),
                console_dir,
            }),
        };
        BuildSpool {
            writer: Arc::new(writer),
            sent: false,
            finished: false,
        }
    }

    async fn send(&mut self, op: Op) -> Result<(), WriterGone> {
        let writer = &self.writer;
        // Given back by the pool thread once the op is written.
        writer
            .room
            .acquire()
            .await
            .map_err(|_| WriterGone)?
            .forget();
        let schedule = {
            let mut queue = lock(&writer.queue);
            if queue.stopped {
                return Err(WriterGone);
            }
            queue.ops.push_back(op);
            !std::mem::replace(&mut queue.scheduled, true)
        };
        self.sent = true;
        if schedule {
            schedule_drain(writer);
        }
        Ok(())
    }

    /// Console lines, oldest first.
    pub async fn console(&mut self, lines: Arc<[OutputLine]>) -> Result<(), WriterGone> {
        self.send(Op::Console(lines)).await
    }

    /// An artifact of `len` bytes at `path` starts.
    pub async fn artifact_start(&mut self, path: Vec<u8>, len: u64) -> Result<(), WriterGone> {
        self.send(Op::ArtifactStart { path, len }).await
    }

    /// The next chunk of the current artifact.
    pub async fn artifact_chunk(&mut self, data: Vec<u8>) -> Result<(), WriterGone> {
        self.send(Op::ArtifactChunk(data)).await
    }

    /// Waits for the writer to write what it was sent, and returns what it
    /// spooled.
    pub async fn finish(mut self) -> Spooled {
        self.finished = true;
        let (done_tx, done) = oneshot::channel();
        if !self.close(Some(done_tx)) {
            // Nothing was ever queued: no file was opened, so finishing
            // touches no disk and needs no thread.
            return lock(&self.writer.spools).finish();
        }
        match done.await {
            Ok(spooled) => spooled,
            // The writer panicked.
            Err(_) => Spooled {
                error: Some(SpoolError {
                    what: "cannot spool the build",
                    error: StoreError::Protocol("the spool's writer panicked".into()),
                }),
                ..Spooled::none()
            },
        }
    }

    /// Asks the writer to finish after what is queued and send the result
    /// to `done`. `false` when nothing was ever queued (nothing is
    /// scheduled then: the caller finishes).
    fn close(&mut self, done: Option<oneshot::Sender<Spooled>>) -> bool {
        if !self.sent {
            return false;
        }
        let schedule = {
            let mut queue = lock(&self.writer.queue);
            queue.close = Some(done);
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if schedule {
            schedule_drain(&self.writer);
        }
        true
    }
}

impl Drop for BuildSpool {
    /// Not finished (the server is stopping, or the handler went away): the
    /// writer writes what it was sent and closes its files on a pool thread;
    /// nobody waits, and the next start removes what is left.
    fn drop(&mut self) {
        if !self.finished {
            self.close(None);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A build's writer: its spools, and what waits for them.
struct Writer {
    queue: Mutex<Queue>,
    /// Room in the queue: [`CHANNEL`] permits; closed when the writer stops.
    room: Semaphore,
    /// Locked by the pool thread draining the writer (or by `finish` when
    /// nothing was queued).
    spools: Mutex<Spools>,
}

struct Queue {
    ops: VecDeque<Op>,
    /// A pool thread drains the writer, or is about to.
    scheduled: bool,
    /// The handle is done: after the last op, finish, and send the result
    /// here if someone waits.
    close: Option<Option<oneshot::Sender<Spooled>>>,
    /// Stopped at an error: nothing more is taken.
    stopped: bool,
}

/// Hands the writer to a pool thread; a writer no thread can take stops
/// with the reason.
fn schedule_drain(writer: &Arc<Writer>) {
    let drained = Arc::clone(writer);
    if let Err(e) = pool::run(Box::new(move || drain(&drained))) {
        let build_dir = lock(&writer.spools).build_dir.clone();
        writer.stop(SpoolError {
            what: "cannot start the spool's writer",
            error: StoreError::Io {
                path: build_dir,
                source: e,
            },
        });
        // Nobody will finish it: do it here (the ops were never written,
        // so no file is open), sending the result if someone waits.
        let close = lock(&writer.queue).close.take();
        if let Some(done) = close.flatten() {
            let _ = done.send(lock(&writer.spools).finish());
        }
    }
}

impl Writer {
    /// Stops taking ops at `error` (the first one is kept).
    fn stop(&self, error: SpoolError) {
        self.room.close();
        {
            let mut queue = lock(&self.queue);
            queue.stopped = true;
            queue.ops.clear();
        }
        let mut spools = lock(&self.spools);
        if spools.error.is_none() {
            spools.error = Some(error);
        }
    }
}

/// On a pool thread: writes what is queued, in order, then finishes if the
/// handle is done.
fn drain(writer: &Writer) {
    // A panic stops the writer: senders must not wait for room forever.
    struct OnPanic<'a>(&'a Writer);
    impl Drop for OnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.room.close();
                lock(&self.0.queue).stopped = true;
            }
        }
    }
    let _guard = OnPanic(writer);
    loop {
        let op = {
            let mut queue = lock(&writer.queue);
            match queue.ops.pop_front() {
                Some(op) => op,
                None => match queue.close.take() {
                    // (`scheduled` stays set: nothing comes after.)
                    Some(done) => {
                        drop(queue);
                        let spooled = lock(&writer.spools).finish();
                        if let Some(done) = done {
                            let _ = done.send(spooled);
                        }
                        return;
                    }
                    None => {
                        queue.scheduled = false;
                        return;
                    }
                },
            }
        };
        let written = {
            let mut spools = lock(&writer.spools);
            let written = spools.apply(op);
            writer.room.add_permits(1);
            // Published when the writer caught up, and often enough while
            // it cannot: memory keeps only what is not published yet.
            written.and_then(|()| {
                let caught_up = lock(&writer.queue).ops.is_empty();
                spools.publish(caught_up)
            })
        };
        if let Err(e) = written {
            writer.stop(e);
        }
    }
}

/// What a build's writer writes to.
struct Spools {
    /// Taken when finished.
    console: Option<ConsoleWriter>,
    /// Taken when finished.
    artifacts: Option<ArtifactSpool>,
    error: Option<SpoolError>,
    build_dir: PathBuf,
    console_dir: PathBuf,
}

impl Spools {
    fn apply(&mut self, op: Op) -> Result<(), SpoolError> {
        let (Some(console), Some(artifacts)) = (&mut self.console, &mut self.artifacts) else {
            return Ok(());
        };
        match op {
            Op::Console(lines) => console.append(&lines).map_err(console_error),
            Op::ArtifactStart { path, len } => artifacts.start(path, len).map_err(artifact_error),
            Op::ArtifactChunk(data) => artifacts.chunk(&data).map_err(artifact_error),
        }
    }

    fn publish(&mut self, caught_up: bool) -> Result<(), SpoolError> {
        match &mut self.console {
            Some(console) if caught_up || console.unpublished >= PUBLISH_BYTES => {
                console.publish().map_err(console_error)
            }
            _ => Ok(()),
        }
    }

    /// What was spooled (blocking when something was: the console's end is
    /// read back). Only once.
    fn finish(&mut self) -> Spooled {
        let mut error = self.error.take();
        let artifacts = match (self.artifacts.take(), &error) {
            (None, _) => (None, Vec::new()),
            (Some(artifacts), Some(_)) => {
                artifacts.discard();
                (None, Vec::new())
            }
            (Some(artifacts), None) => match artifacts.finish() {
                Ok((dir, list)) => (Some(dir), list),
                Err(e) => {
                    crate::store::remove_spool(&self.build_dir.join(crate::store::ARTIFACTS_DIR));
                    error = Some(artifact_error(e));
                    (None, Vec::new())
                }
            },
        };
        let console = self.console.take().and_then(ConsoleWriter::finish);
        if console.is_none() {
            crate::store::remove_spool(&self.console_dir);
        }
        Spooled {
            console,
            artifacts,
            error,
            build_dir: self.build_dir.clone(),
            console_dir: self.console_dir.clone(),
        }
    }
}

fn console_error(error: StoreError) -> SpoolError {
    SpoolError {
        what: "cannot spool the console",
        error,
    }
}

fn artifact_error(error: StoreError) -> SpoolError {
    SpoolError {
        what: "cannot spool an artifact",
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(build: usize, i: usize) -> OutputLine {
        OutputLine {
            delta_ns: i as i64,
            data: format!("build {build} line {i}").into_bytes(),
        }
    }

    /// More builds than pool threads, each with console batches and two
    /// artifacts: each gets its own, complete and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_builds_share_the_pool_and_each_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let builds = 5 * WRITERS;
        let mut tasks = Vec::new();
        for b in 0..builds {
            let build_dir = dir.path().join(format!("job/{b}"));
            tasks.push(tokio::spawn(async move {
                let map = SharedMap::default();
                let mut spool = BuildSpool::start(&build_dir, 1, usize::MAX, map.clone());
                for batch in 0..50 {
                    let lines: Vec<OutputLine> =
                        (batch * 10..batch * 10 + 10).map(|i| line(b, i)).collect();
                    spool.console(lines.into()).await.unwrap();
                }
                for a in 0..2u8 {
                    spool.artifact_start(vec![b'a' + a], 3000).await.unwrap();
                    for _ in 0..3 {
                        spool.artifact_chunk(vec![a; 1000]).await.unwrap();
                    }
                }
                let spooled = spool.finish().await;
                assert!(spooled.error.is_none(), "{:?}", spooled.error);
                assert!(spooled.console.is_some());
                let lines = match read_lines(&map, 0, 1000).unwrap() {
                    SpoolRead::Lines(lines) => lines,
                    other => panic!("{other:?}"),
                };
                assert_eq!(lines, (0..500).map(|i| line(b, i)).collect::<Vec<_>>());
                let (spool_dir, artifacts) = &spooled.artifacts;
                assert!(spool_dir.is_some());
                assert_eq!(artifacts.len(), 2);
                for (a, artifact) in artifacts.iter().enumerate() {
                    assert_eq!(artifact.path, vec![b'a' + a as u8]);
                    assert_eq!(fs::read(&artifact.file).unwrap(), vec![a as u8; 3000]);
                }
                spooled.discard_async().await;
                assert!(!build_dir.exists(), "the build directory stays");
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_build_that_spools_nothing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let build_dir = dir.path().join("job/build");
        let spool = BuildSpool::start(&build_dir, 1, usize::MAX, SharedMap::default());
        let spooled = spool.finish().await;
        assert!(spooled.error.is_none());
        assert!(spooled.artifacts.1.is_empty());
        assert!(spooled.console.is_some(), "an empty console is a console");
        assert!(!dir.path().join("job").exists());
        // Dropped unfinished: nothing either.
        drop(BuildSpool::start(
            &build_dir,
            2,
            usize::MAX,
            SharedMap::default(),
        ));
        assert!(!dir.path().join("job").exists());
    }

    #[tokio::test]
    async fn the_first_error_stops_the_writer_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let build_dir = dir.path().join("job/build");
        let mut spool = BuildSpool::start(&build_dir, 1, usize::MAX, SharedMap::default());
        spool.artifact_start(b"a".to_vec(), 1).await.unwrap();
        spool.artifact_chunk(b"too long".to_vec()).await.unwrap();
        // The writer stops at the chunk; the sends after that learn it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while spool.console(vec![line(0, 0)].into()).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never stopped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let spooled = spool.finish().await;
        let error = spooled.error.expect("the error");
        assert_eq!(error.what, "cannot spool an artifact");
        assert!(error.error.is_protocol(), "{:?}", error.error);
        assert!(spooled.artifacts.1.is_empty());
        assert!(!build_dir.join(crate::store::ARTIFACTS_DIR).exists());
    }
}
