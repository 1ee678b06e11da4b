//! Finding the files a job left behind and streaming them to the server.
//!
//! Every regular file under the job directory except the top-level
//! `script.sh` is an artifact, named by its path relative to the directory
//! (`/`-separated bytes, never absolute, never `..`). Symlinks are never
//! followed, whether they point at files or directories; sockets, FIFOs and
//! devices are skipped. Paths are sent sorted (bytewise) so the order is
//! deterministic.
//!
//! Each artifact is one [`WorkerMessage::ArtifactStart`] followed by
//! [`WorkerMessage::ArtifactChunk`]s of at most [`CHUNK_SIZE`] bytes adding up
//! to exactly its announced length, read from the file as they are sent, so
//! memory stays bounded whatever the file's size.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use protocol::codec::CHUNK_SIZE;
use protocol::message::WorkerMessage;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The script's name in the job directory; never an artifact.
pub const SCRIPT_NAME: &str = "script.sh";

/// One file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Path relative to the job directory, `/`-separated.
    pub rel: Vec<u8>,
    /// Where it is.
    pub path: PathBuf,
}

/// Why the artifacts could not all be sent.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The directory could not be walked.
    #[error("cannot list the artifacts in {dir}")]
    List {
        /// The directory that failed.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read artifact {path}")]
    Read {
        /// The artifact's relative path (lossily decoded).
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The session is gone; nobody receives the artifacts.
    #[error("the connection to the server is gone")]
    Closed,
}

/// Lists the artifacts under `root`, sorted by relative path.
///
/// # Errors
///
/// Fails if a directory under `root` cannot be read.
pub fn collect(root: &Path) -> Result<Vec<Artifact>, ArtifactError> {
    let mut found = Vec::new();
    // (directory, its relative path with a trailing '/' unless it is the root)
    let mut pending = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let list_err = |source| ArtifactError::List {
            dir: dir.clone(),
            source,
        };
        for entry in fs::read_dir(&dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            // Does not follow symlinks.
            let kind = entry.file_type().map_err(list_err)?;
            let name = entry.file_name();
            let mut rel = prefix.clone();
            rel.extend_from_slice(name.as_bytes());
            if kind.is_dir() {
                rel.push(b'/');
                pending.push((entry.path(), rel));
            } else if kind.is_file() {
                if prefix.is_empty() && name == SCRIPT_NAME {
                    continue;
                }
                found.push(Artifact {
                    rel,
                    path: entry.path(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(found)
}

/// Sends every artifact under `root` for job `uuid`.
///
/// # Errors
///
/// [`ArtifactError::Closed`] when `tx`'s receiver is gone; otherwise the
/// listing or reading failure. A failure may come after an artifact's start
/// was sent: the caller then reports the job as aborted and the receiver
/// discards the partial artifact.
pub async fn send_all(
    root: &Path,
    uuid: Uuid,
    tx: &mpsc::Sender<WorkerMessage>,
) -> Result<(), ArtifactError> {
    let dir = root.to_path_buf();
    let list = tokio::task::spawn_blocking(move || collect(&dir))
        .await
        .map_err(|e| ArtifactError::List {
            dir: root.to_path_buf(),
            source: io::Error::other(e),
        })??;
    for artifact in list {
        send_one(&artifact, uuid, tx).await?;
    }
    Ok(())
}

async fn send_one(
    artifact: &Artifact,
    uuid: Uuid,
    tx: &mpsc::Sender<WorkerMessage>,
) -> Result<(), ArtifactError> {
    let read_err = |source| ArtifactError::Read {
        path: String::from_utf8_lossy(&artifact.rel).into_owned(),
        source,
    };
    // The job's processes are gone, but refuse anything that turned into a
    // symlink or a FIFO since the walk all the same.
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(&artifact.path)
        .await
        .map_err(read_err)?;
    let meta = file.metadata().await.map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::other("no longer a regular file")));
    }
    let len = meta.len();
    send(
        tx,
        WorkerMessage::ArtifactStart {
            uuid,
            path: artifact.rel.clone(),
            len,
        },
    )
    .await?;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK_SIZE, |l| l.min(CHUNK_SIZE));
        let mut data = vec![0; n];
        file.read_exact(&mut data).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                read_err(io::Error::other("the file shrank while it was read"))
            } else {
                read_err(e)
            }
        })?;
        send(tx, WorkerMessage::ArtifactChunk { uuid, data }).await?;
        left -= n as u64;
    }
    Ok(())
}

async fn send(tx: &mpsc::Sender<WorkerMessage>, msg: WorkerMessage) -> Result<(), ArtifactError> {
    tx.send(msg).await.map_err(|_| ArtifactError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rels(list: &[Artifact]) -> Vec<String> {
        list.iter()
            .map(|a| String::from_utf8_lossy(&a.rel).into_owned())
            .collect()
    }

    #[test]
    fn walks_nested_files_skips_script_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "no").unwrap();
        let root = dir.path();
        fs::write(root.join(SCRIPT_NAME), "echo").unwrap();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("empty-dir")).unwrap();
        fs::write(root.join("a/b/c.txt"), "c").unwrap();
        fs::write(root.join("a/script.sh"), "nested, so kept").unwrap();
        fs::write(root.join("z"), "").unwrap();
        symlink(root.join("z"), root.join("link-to-file")).unwrap();
        symlink(outside.path(), root.join("link-to-dir")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let list = collect(root).unwrap();
        assert_eq!(rels(&list), ["a/b/c.txt", "a/script.sh", "z"]);
        assert_eq!(list[0].path, root.join("a/b/c.txt"));
    }

    #[tokio::test]
    async fn sends_chunks_adding_up_to_the_length() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..CHUNK_SIZE * 2 + 5).map(|i| (i % 256) as u8).collect();
        fs::write(dir.path().join("big"), &data).unwrap();
        fs::write(dir.path().join("empty"), "").unwrap();
        let (tx, mut rx) = mpsc::channel(100);
        let uuid = Uuid::new_v4();
        send_all(dir.path(), uuid, &tx).await.unwrap();
        drop(tx);
        let mut msgs = Vec::new();
        while let Some(m) = rx.recv().await {
            msgs.push(m);
        }
        let mut got: Vec<(Vec<u8>, u64, Vec<u8>)> = Vec::new();
        let mut sizes = Vec::new();
        for m in msgs {
            match m {
                WorkerMessage::ArtifactStart { uuid: u, path, len } => {
                    assert_eq!(u, uuid);
                    got.push((path, len, Vec::new()));
                }
                WorkerMessage::ArtifactChunk { uuid: u, data } => {
                    assert_eq!(u, uuid);
                    sizes.push(data.len());
                    got.last_mut().unwrap().2.extend(data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, 5]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (b"big".to_vec(), data.len() as u64, data));
        assert_eq!(got[1], (b"empty".to_vec(), 0, vec![]));
    }
}
