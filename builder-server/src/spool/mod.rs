//! A running build's spools: its console and its artifacts go to files in
//! `DIR/<job>/<uuid>/` as they arrive, written by one writer thread per
//! build, so the server's memory stays the same whatever their sizes and no
//! runtime thread ever waits for the disk.
//!
//! The worker's handler hands console batches and artifact chunks to the
//! build's writer over a bounded channel ([`CHANNEL`] messages): a worker
//! faster than the disk waits for it (backpressure) instead of growing the
//! server's memory. The first error (disk full, unwritable folder, or a
//! worker's inconsistent artifact) stops the writer; the handler learns it
//! at its next send or at the end ([`Spooled::error`]) and ends the build.
//!
//! The console's own spool, and how it keeps `--max-console-bytes`, is in
//! [`console`].

mod console;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::message::OutputLine;
use protocol::record::FileArtifact;
use tokio::sync::{mpsc, oneshot};

use crate::store::{ArtifactSpool, StoreError};
use console::PUBLISH_BYTES;
pub use console::{
    console_dir, read_lines, ConsoleFiles, ConsoleWriter, SharedMap, SpoolMap, SpoolRead,
    LINE_OVERHEAD,
};

/// Messages waiting for a build's writer (console batches or 256 KiB
/// artifact chunks) before the worker's handler waits.
pub const CHANNEL: usize = 16;

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

/// The handle on a build's writer thread.
pub struct BuildSpool {
    tx: Option<mpsc::Sender<Op>>,
    done: oneshot::Receiver<Spooled>,
}

impl BuildSpool {
    /// Starts the writer of attempt `attempt` of the build in `build_dir`;
    /// its console is kept within `limit` bytes and shown to observers
    /// through `map`.
    pub fn start(build_dir: &Path, attempt: u32, limit: usize, map: SharedMap) -> BuildSpool {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (done_tx, done) = oneshot::channel();
        let console_dir = console_dir(build_dir, attempt);
        let console = ConsoleWriter::new(console_dir.clone(), limit, map);
        let build = build_dir.to_owned();
        let spawned = std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || {
                let spooled = write(rx, build, console_dir, console);
                // Nobody waits any more (the server is stopping): the next
                // start removes what is left.
                let _ = done_tx.send(spooled);
            });
        match spawned {
            Ok(_) => BuildSpool { tx: Some(tx), done },
            Err(e) => {
                let (done_tx, done) = oneshot::channel();
                let _ = done_tx.send(Spooled {
                    error: Some(SpoolError {
                        what: "cannot start the spool's writer",
                        error: StoreError::Io {
                            path: build_dir.to_owned(),
                            source: e,
                        },
                    }),
                    ..Spooled::none()
                });
                BuildSpool { tx: None, done }
            }
        }
    }

    async fn send(&mut self, op: Op) -> Result<(), WriterGone> {
        let tx = self.tx.as_ref().ok_or(WriterGone)?;
        tx.send(op).await.map_err(|_| WriterGone)
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
        drop(self.tx.take());
        match (&mut self.done).await {
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
}

/// The writer thread: spools what comes until the channel closes or an
/// error stops it.
fn write(
    mut rx: mpsc::Receiver<Op>,
    build_dir: PathBuf,
    console_dir: PathBuf,
    mut console: ConsoleWriter,
) -> Spooled {
    let mut artifacts = ArtifactSpool::new(&build_dir);
    let mut error = None;
    while let Some(op) = rx.blocking_recv() {
        let done = match op {
            Op::Console(lines) => console.append(&lines).map_err(|error| SpoolError {
                what: "cannot spool the console",
                error,
            }),
            Op::ArtifactStart { path, len } => artifacts.start(path, len).map_err(artifact_error),
            Op::ArtifactChunk(data) => artifacts.chunk(&data).map_err(artifact_error),
        };
        // Published when the writer caught up, and often enough while it
        // cannot: memory keeps only what is not published yet.
        let done = done.and_then(|()| {
            if rx.is_empty() || console.unpublished >= PUBLISH_BYTES {
                console.publish().map_err(|error| SpoolError {
                    what: "cannot spool the console",
                    error,
                })
            } else {
                Ok(())
            }
        });
        if let Err(e) = done {
            error = Some(e);
            break;
        }
    }
    drop(rx);
    let artifacts = match error {
        Some(_) => {
            artifacts.discard();
            (None, Vec::new())
        }
        None => match artifacts.finish() {
            Ok((dir, list)) => (Some(dir), list),
            Err(e) => {
                crate::store::remove_spool(&build_dir.join(crate::store::ARTIFACTS_DIR));
                error = Some(artifact_error(e));
                (None, Vec::new())
            }
        },
    };
    let console = console.finish();
    if console.is_none() {
        crate::store::remove_spool(&console_dir);
    }
    Spooled {
        console,
        artifacts,
        error,
        build_dir,
        console_dir,
    }
}

fn artifact_error(error: StoreError) -> SpoolError {
    SpoolError {
        what: "cannot spool an artifact",
        error,
    }
}
