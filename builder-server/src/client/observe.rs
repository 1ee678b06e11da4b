//! `observe UUID`, `observe-latest`: the console so far, then live lines,
//! then the result. A finished build is replayed from its record.
//!
//! An observer never slows a build: it follows a bounded channel and, when
//! it falls behind, skips lines and is told how many ([`ServerToClient::Dropped`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use protocol::codec::Connection;
use protocol::message::{BuildHeader, JobOutcome, OutputLine, ServerToClient, Timestamp};
use protocol::record;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::live::{LiveBuild, LiveEvent};
use crate::state::Shared;

/// Lines per console message when replaying.
const BATCH: u64 = 1024;

/// Streams one build to the client.
pub async fn observe(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    uuid: Uuid,
) -> anyhow::Result<()> {
    if let Some(live) = shared.live.get(uuid) {
        return follow(shared, conn, &live).await;
    }
    match shared.db.result_path(uuid).map_err(|e| shared.fatal(e))? {
        Some(path) => replay(conn, uuid, path).await,
        None => {
            conn.send(&ServerToClient::Failure {
                reason: format!("no build {uuid}"),
            })
            .await?;
            Ok(())
        }
    }
}

/// Streams the newest build (running or finished) matching the filters.
pub async fn observe_latest(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    platform: Option<&str>,
    job: Option<&str>,
) -> anyhow::Result<()> {
    let live = shared.live.latest(platform, job);
    let done = shared
        .db
        .latest_result(platform, job)
        .map_err(|e| shared.fatal(e))?;
    let newest = match (live, done) {
        (Some(l), Some(d)) => Some(if l.1 >= d.1 { l.0 } else { d.0 }),
        (l, d) => l.or(d).map(|(uuid, _)| uuid),
    };
    match newest {
        Some(uuid) => observe(shared, conn, uuid).await,
        None => {
            conn.send(&ServerToClient::Failure {
                reason: "no build matches".into(),
            })
            .await?;
            Ok(())
        }
    }
}

async fn follow(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    live: &LiveBuild,
) -> anyhow::Result<()> {
    let mut sub = live.subscribe();
    conn.send(&ServerToClient::ObserveStart(sub.header.clone()))
        .await?;
    let mut next = 0u64;
    while next < sub.backlog {
        let lines = live.lines(next, (next + BATCH).min(sub.backlog));
        next += lines.len() as u64;
        conn.send(&ServerToClient::Console(lines)).await?;
    }
    if let Some((finished, outcome)) = sub.end {
        conn.send(&ServerToClient::ObserveEnd { finished, outcome })
            .await?;
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            event = sub.events.recv() => event,
            _ = shared.shutdown.cancelled() => return Ok(()),
        };
        match event {
            Ok(LiveEvent::Lines { first, lines }) => {
                let end = first + lines.len() as u64;
                if end <= next {
                    continue;
                }
                if first > next {
                    conn.send(&ServerToClient::Dropped {
                        lines: first - next,
                    })
                    .await?;
                    next = first;
                }
                let fresh = lines[(next - first) as usize..].to_vec();
                next = end;
                conn.send(&ServerToClient::Console(fresh)).await?;
            }
            Ok(LiveEvent::End { finished, outcome }) => {
                let total = live.line_count();
                if total > next {
                    conn.send(&ServerToClient::Dropped {
                        lines: total - next,
                    })
                    .await?;
                }
                conn.send(&ServerToClient::ObserveEnd { finished, outcome })
                    .await?;
                return Ok(());
            }
            // Skipped batches show up as a gap in the next one's index.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => anyhow::bail!("build {} vanished", sub.header.uuid),
        }
    }
}

async fn replay(conn: &mut Connection, uuid: Uuid, path: PathBuf) -> anyhow::Result<()> {
    let shown = path.clone();
    let head = tokio::task::spawn_blocking(move || -> anyhow::Result<record::RecordHead> {
        let file = std::fs::File::open(&path)?;
        // Artifacts are not needed: the reader skips what the callback leaves.
        Ok(record::read_record(
            std::io::BufReader::new(file),
            |_, _, _| Ok(()),
        )?)
    })
    .await
    .context("record reader panicked")?;
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            let reason = format!(
                "cannot read the record of {uuid} ({}): {e:#}",
                shown.display()
            );
            conn.send(&ServerToClient::Failure {
                reason: reason.clone(),
            })
            .await?;
            anyhow::bail!(reason);
        }
    };
    conn.send(&ServerToClient::ObserveStart(BuildHeader {
        uuid,
        job: record::lossy(&head.job.name).into_owned(),
        platform: record::lossy(head.job.platform_or_default()).into_owned(),
        started: Timestamp::from_datetime(head.started),
    }))
    .await?;
    let lines: Vec<OutputLine> = head
        .console
        .into_iter()
        .rev()
        .map(|l| OutputLine {
            delta_ns: l.delta_ns,
            data: l.data,
        })
        .collect();
    for batch in lines.chunks(BATCH as usize) {
        conn.feed(&ServerToClient::Console(batch.to_vec())).await?;
    }
    conn.send(&ServerToClient::ObserveEnd {
        finished: Timestamp::from_datetime(head.finished),
        outcome: JobOutcome::from(&head.result),
    })
    .await?;
    Ok(())
}
