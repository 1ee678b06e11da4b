//! Start-up recovery: builds still marked running lost their worker when
//! the server stopped.

use std::sync::Arc;

use anyhow::Context;
use protocol::message::{JobOutcome, Timestamp};
use protocol::record::RecordHead;

use super::finish::{index, index_later, store_result};
use crate::db::{self, LostFate, NewResult, Running};
use crate::spool::Spooled;
use crate::state::Shared;
use crate::store;

/// At start-up: builds still marked running lost their worker when the
/// server stopped. Each goes back to the front of its queue (or is recorded
/// as aborted after too many lost workers), and half-written files go.
///
/// Never stopped by one build: one whose record cannot be written is indexed
/// as aborted (see [`store_result`]); one the full disk will not let change
/// stays marked running for the next start. Fails only for a broken
/// database.
pub async fn recover(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let running = shared.db.running().await?;
    if !running.is_empty() {
        tracing::warn!(
            count = running.len(),
            "recovering builds that were running when the server stopped"
        );
    }
    for r in running {
        let build_dir = store::build_dir(&shared.config.dir, &r.job.job, r.uuid);
        if index_stored(shared, &r, &build_dir).await? {
            continue;
        }
        store::remove_incomplete(&build_dir);
        let fate = match shared.db.worker_lost(r.uuid).await {
            Ok(fate) => fate,
            Err(e) if e.is_disk_full() => {
                tracing::error!(job = ?r.job.job, uuid = %r.uuid, error = ?protocol::Chain(&e), "disk full: build left for the next start");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let LostFate::GiveUp(r) = fate {
            let outcome = JobOutcome::Aborted(format!("worker lost {} times", db::MAX_LOST));
            store_result(
                shared,
                &r,
                r.assigned,
                Timestamp::now(),
                outcome,
                Spooled::none(),
            )
            .await?;
        }
    }
    Ok(())
}

/// A build whose record was written durably but not indexed when the server
/// stopped: index it now instead of running it again. `Ok(false)` when
/// there is no complete record.
async fn index_stored(
    shared: &Arc<Shared>,
    running: &Running,
    build_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    let path = build_dir.join("full");
    if !path.exists() {
        return Ok(false);
    }
    let reading = path.clone();
    let head = tokio::task::spawn_blocking(move || -> anyhow::Result<RecordHead> {
        let file = std::fs::File::open(&reading)?;
        // Checked whole, but its console is not kept.
        Ok(protocol::record::index_record(file, u64::MAX)?.0)
    })
    .await
    .context("record reader panicked")?;
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            // `full` only ever appears complete (renamed after fsync), so
            // this is damage from outside; keep the file for inspection.
            tracing::error!(path = ?path.display(), error = ?protocol::Chain(&*e), "unreadable record; running the build again");
            let aside = build_dir.with_extension("unreadable");
            if let Err(e) = std::fs::rename(build_dir, &aside) {
                tracing::error!(dir = ?build_dir, error = ?protocol::Chain(&e), "cannot move the unreadable record aside");
            }
            return Ok(false);
        }
    };
    let result = NewResult {
        uuid: running.uuid,
        job: running.job.job.clone(),
        platform: running.job.platform.clone(),
        started: Timestamp::from_datetime(head.started),
        finished: Timestamp::from_datetime(head.finished),
        outcome: JobOutcome::from(&head.result),
        path: Some(path),
        attempts: running.job.lost + 1,
    };
    let indexed = index(shared, &result).await;
    match indexed {
        Ok(()) => {}
        Err(e) if e.is_disk_full() => {
            index_later(shared, result);
            return Ok(true);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(job = ?result.job, uuid = %result.uuid, "indexed a build stored just before the server stopped");
    Ok(true)
}
