//! `fetch UUID --output DIR [--artifacts]`: a stored build downloaded over
//! the protocol, for operators who cannot log in to the server.
//!
//! The record arrives in chunks and goes straight on: into `DIR/full`, or
//! through [`crate::inspect::extract_all`] (on a blocking thread, fed by a
//! small bounded channel) into the artifacts under `DIR`. Memory stays a
//! few chunks whatever the record's size. The rules for writing are
//! builder-inspect's: nothing outside `DIR`, nothing overwritten, no
//! symlink followed.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use protocol::message::ServerToClient;
use tokio::sync::mpsc;

use crate::connect::Session;
use crate::units::human_size;

/// Chunks in flight between the connection and the artifact writer.
const IN_FLIGHT: usize = 4;

/// Receives the record announced next and writes it (or its artifacts)
/// under `dir`.
///
/// # Errors
/// The server has no such record, the connection ends early, the record
/// is longer or shorter than announced, or writing fails.
pub async fn fetch(
    session: &mut Session,
    dir: &Path,
    artifacts: bool,
    json: bool,
) -> Result<ExitCode> {
    let (uuid, len) = loop {
        match session.recv_answer("sending the record").await? {
            ServerToClient::Notice { message } => crate::notice(&message, json),
            ServerToClient::RecordStart { uuid, len, .. } => break (uuid, len),
            ServerToClient::Failure { reason } => bail!("{reason}"),
            other => bail!(
                "unexpected answer from the server: {}",
                crate::connect::answer_name(&other)
            ),
        }
    };
    let mut sink = if artifacts {
        Sink::artifacts(dir)
    } else {
        Sink::record(dir)?
    };
    let mut received = 0u64;
    let copied = async {
        while received < len {
            let data = match session.recv("the whole record was sent").await? {
                ServerToClient::RecordChunk { data } => data,
                ServerToClient::Failure { reason } => bail!("{reason}"),
                other => bail!(
                    "unexpected answer from the server: {}",
                    crate::connect::answer_name(&other)
                ),
            };
            received += data.len() as u64;
            if received > len {
                bail!("the server sent more than the {len} bytes it announced");
            }
            sink.write(data).await?;
        }
        Ok(())
    }
    .await;
    match copied {
        Ok(()) => sink.finish().await?,
        Err(e) => {
            sink.abandon().await;
            return Err(e.context(format!("fetching build {uuid}")));
        }
    }
    if !artifacts {
        let message = format!(
            "wrote the record of {uuid} ({}) to {}",
            human_size(len),
            dir.join("full").display()
        );
        if json {
            crate::output::write_json_line(
                &mut io::stdout().lock(),
                &serde_json::json!({ "ok": true, "uuid": uuid, "path": dir.join("full"), "bytes": len }),
            )?;
        } else {
            eprintln!("{message}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the record's bytes go.
enum Sink {
    /// Into `DIR/full`, created new (removed again if the fetch fails).
    Record {
        file: fs::File,
        path: std::path::PathBuf,
    },
    /// Into the artifact writer on its own thread.
    Artifacts {
        tx: Option<mpsc::Sender<Vec<u8>>>,
        writer: tokio::task::JoinHandle<Result<()>>,
    },
}

impl Sink {
    fn record(dir: &Path) -> Result<Sink> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        let path = dir.join("full");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => anyhow!(
                    "{} already exists (not overwritten, not followed)",
                    path.display()
                ),
                _ => anyhow!(e).context(format!("cannot create {}", path.display())),
            })?;
        Ok(Sink::Record { file, path })
    }

    fn artifacts(dir: &Path) -> Sink {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let dir = dir.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            crate::inspect::extract_all(ChannelReader::new(rx), &dir)
        });
        Sink::Artifacts {
            tx: Some(tx),
            writer,
        }
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        match self {
            Sink::Record { file, path } => file
                .write_all(&data)
                .with_context(|| format!("writing {}", path.display())),
            Sink::Artifacts { tx, .. } => {
                let sent = match tx {
                    Some(tx) => tx.send(data).await.is_ok(),
                    None => false,
                };
                if !sent {
                    // The writer stopped early: its error says why.
                    tx.take();
                }
                Ok(())
            }
        }
    }

    async fn finish(self) -> Result<()> {
        match self {
            Sink::Record { file, path } => file
                .sync_all()
                .with_context(|| format!("writing {}", path.display())),
            Sink::Artifacts { tx, writer } => {
                drop(tx);
                writer.await.context("the artifact writer panicked")?
            }
        }
    }

    async fn abandon(self) {
        match self {
            Sink::Record { file, path } => {
                drop(file);
                let _ = fs::remove_file(path);
            }
            Sink::Artifacts { tx, writer } => {
                drop(tx);
                // Its error (a truncated record) is the fetch's, reported
                // by the caller.
                let _ = writer.await;
            }
        }
    }
}

/// A blocking reader over chunks from a channel; ends when the sender is
/// dropped.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
