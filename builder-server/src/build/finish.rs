//! How a build ends: stored (its record written, then indexed and queued
//! for upload), or lost (requeued at the front under the same UUID, or
//! aborted after too many lost workers). Observers always get an end.
//!
//! Storage: a build whose artifacts or record the server cannot write
//! (disk full, unwritable job folder) is the server's failure, not the
//! worker's: it is recorded as aborted with the reason (`disk full: ...`)
//! and not retried, observers get that result, and every other build goes
//! on (see [`store_result`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::message::{JobOutcome, Timestamp};
use protocol::record::{ExecResult, RecordHead, ScriptJob, TimeForms};

use crate::db::{self, LostFate, NewResult, Running};
use crate::live::{LiveBuild, Requeue};
use crate::spool::{ConsoleFiles, Spooled};
use crate::state::Shared;
use crate::store;

/// The build's worker is gone: requeue it, or record it as aborted when it
/// lost too many workers in a row. Observers get an end whatever happens.
///
/// `spooled` holds what the attempt spooled (its artifacts removed
/// already): its console goes into the record of a build given up, and
/// the spool goes in any case.
pub async fn build_lost(
    shared: &Arc<Shared>,
    running: Running,
    live: &Arc<LiveBuild>,
    reason: &str,
    spooled: Spooled,
) -> anyhow::Result<()> {
    let uuid = running.uuid;
    let now = Timestamp::now();
    // A build that goes back to its queue leaves nothing of this attempt
    // behind by the time anyone can see it queued; one given up keeps its
    // console for its record.
    let mut spooled = Some(spooled);
    if running.job.lost + 1 < db::MAX_LOST {
        if let Some(spooled) = spooled.take() {
            spooled.discard_async().await;
        }
        remove_empty_job_dir(shared, &running.job.job).await;
    }
    let discard = |spooled: Option<Spooled>| async move {
        if let Some(spooled) = spooled {
            spooled.discard_async().await;
        }
    };
    let fate = match shared.db.worker_lost(uuid).await {
        Ok(fate) => fate,
        Err(e) => {
            // Still marked running: the next start requeues it.
            let e = shared.refuse_or_stop(e);
            live.finish(
                now,
                JobOutcome::Aborted(format!("worker lost ({reason}); not requeued: {e}")),
            );
            discard(spooled).await;
            shared.live.remove(uuid, live);
            return if e.is_disk_full() {
                Ok(())
            } else {
                Err(e.into())
            };
        }
    };
    match fate {
        LostFate::Requeued => {
            let attempt = running.job.lost + 2;
            tracing::warn!(job = ?running.job.job, %uuid, ?reason, attempt, "worker lost; build requeued at the front");
            discard(spooled).await;
            // Same UUID: its observers follow it into its next attempt.
            live.requeued(Requeue {
                attempt,
                reason: reason.to_owned(),
            });
            shared.live.remove(uuid, live);
            shared.wake_platform(&running.job.platform);
        }
        LostFate::GiveUp(r) => {
            tracing::error!(job = ?r.job.job, %uuid, ?reason, "worker lost {} times in a row; build aborted", db::MAX_LOST);
            let outcome = JobOutcome::Aborted(format!("worker lost {} times", db::MAX_LOST));
            let spooled = spooled.unwrap_or_else(Spooled::none);
            end_build(shared, &r, live, r.assigned, now, outcome, spooled).await?;
        }
        LostFate::Unknown => {
            discard(spooled).await;
            shared.live.remove(uuid, live);
        }
    }
    Ok(())
}

/// Removes `DIR/<job>` if no build of the job has anything there (its
/// builds were lost or cancelled), so no empty folder is left behind.
pub async fn remove_empty_job_dir(shared: &Arc<Shared>, job: &str) {
    let job_dir = shared.config.dir.join(job);
    let blocking = Arc::clone(shared);
    let _ = tokio::task::spawn_blocking(move || blocking.job_dirs.remove_if_empty(&job_dir)).await;
}

/// Stores the build with its console (see [`store_result`]), then gives its
/// observers the outcome recorded and forgets it as live: always, so no
/// observer waits for an end that never comes. Returns that outcome.
pub async fn end_build(
    shared: &Arc<Shared>,
    running: &Running,
    live: &Arc<LiveBuild>,
    started: Timestamp,
    finished: Timestamp,
    outcome: JobOutcome,
    spooled: Spooled,
) -> anyhow::Result<JobOutcome> {
    live.take_console();
    let stored = store_result(shared, running, started, finished, outcome.clone(), spooled).await;
    live.finish(
        finished,
        stored.as_ref().map_or(outcome, |recorded| recorded.clone()),
    );
    shared.live.remove(running.uuid, live);
    stored
}

/// How often an index that the full disk refused is tried again.
const INDEX_RETRY: Duration = Duration::from_secs(5);

/// Writes the build record and indexes it. Returns the outcome indexed.
///
/// A record that cannot be written (disk full, unwritable job folder) ends
/// this build only, once: the spool goes, and the build is recorded as
/// aborted with the reason ([`store::StoreError::abort_reason`]: `disk
/// full: ...` for lack of space) in a record of its job and console, or,
/// when even that cannot be written, in the index alone. An index the full
/// disk refuses is tried again every [`INDEX_RETRY`] until space returns
/// (or at the next start). Fails only when the state database is broken,
/// which stops the server.
pub async fn store_result(
    shared: &Arc<Shared>,
    running: &Running,
    started: Timestamp,
    finished: Timestamp,
    outcome: JobOutcome,
    mut spooled: Spooled,
) -> anyhow::Result<JobOutcome> {
    let job = &running.job;
    let (spool_dir, artifacts) = std::mem::take(&mut spooled.artifacts);
    let mut head = RecordHead {
        job: ScriptJob::new(
            job.job.as_bytes(),
            job.script.as_bytes(),
            Some(job.platform.as_bytes().to_vec()),
        ),
        uuid: *running.uuid.as_bytes(),
        // Streamed from the console's spool.
        console: Vec::new(),
        started: started.to_datetime(),
        finished: finished.to_datetime(),
        time_forms: TimeForms::default(),
        result: ExecResult::from(&outcome),
    };
    let build_dir = store::build_dir(&shared.config.dir, &job.job, running.uuid);
    let mut result = NewResult {
        uuid: running.uuid,
        job: job.job.clone(),
        platform: job.platform.clone(),
        started,
        finished,
        outcome,
        path: None,
        attempts: job.lost + 1,
    };
    // The record is written and fsynced off the async threads; the index
    // goes through the database owner.
    let blocking = Arc::clone(shared);
    let mut console_files = spooled.console.take();
    let result = tokio::task::spawn_blocking(move || {
        let written = store::write_full(
            &blocking.job_dirs,
            &build_dir,
            &head,
            console(&mut console_files),
            &artifacts,
        );
        result.path = match written {
            Ok(path) => {
                if let Some(spool) = &spool_dir {
                    store::remove_spool(spool);
                }
                spooled.discard();
                Some(path)
            }
            Err(e) => {
                // The artifacts' room is given back before the second try.
                if let Some(spool) = &spool_dir {
                    store::remove_spool(spool);
                }
                let reason =
                    e.abort_reason(&format!("cannot store the build ({})", result.outcome));
                tracing::error!(job = ?result.job, uuid = %result.uuid, ?reason, "build recorded as aborted");
                result.outcome = JobOutcome::Aborted(reason);
                head.result = ExecResult::from(&result.outcome);
                let written = store::write_full(
                    &blocking.job_dirs,
                    &build_dir,
                    &head,
                    console(&mut console_files),
                    &[],
                );
                spooled.discard();
                match written {
                    Ok(path) => Some(path),
                    Err(e) => {
                        tracing::error!(job = ?result.job, uuid = %result.uuid, error = ?e.abort_reason("cannot store the aborted build"), "build indexed without a record");
                        store::remove_incomplete(&build_dir);
                        None
                    }
                }
            }
        };
        result
    })
    .await
    .context("record writer panicked")?;
    let indexed = index(shared, &result).await;
    let outcome = result.outcome.clone();
    shared
        .metrics
        .build_finished(&job.platform, &outcome, started, finished);
    match indexed {
        Ok(()) => {}
        Err(e) if e.is_disk_full() => index_later(shared, result),
        Err(e) => return Err(e.into()),
    }
    Ok(outcome)
}

fn console(files: &mut Option<ConsoleFiles>) -> Option<&mut dyn protocol::record::ConsoleSource> {
    files
        .as_mut()
        .map(|c| c as &mut dyn protocol::record::ConsoleSource)
}

/// Indexes a finished build and wakes the uploader.
pub(super) async fn index(shared: &Shared, result: &NewResult) -> Result<(), db::DbError> {
    let upload = shared.config.upload.is_some();
    shared
        .db
        .finish(result, upload)
        .await
        .map_err(|e| shared.refuse_or_stop(e))?;
    shared.events.build_finished(result);
    if upload {
        shared.upload_wakeup.notify_one();
    }
    Ok(())
}

/// The full disk refused to index a finished build: it stays marked running
/// (the next start finds it) and is indexed as soon as there is room.
pub(super) fn index_later(shared: &Arc<Shared>, result: NewResult) {
    tracing::warn!(job = ?result.job, uuid = %result.uuid, "disk full: the build is indexed when space returns");
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let result = Arc::new(result);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INDEX_RETRY) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            match index(&shared, &result).await {
                Ok(()) => {
                    tracing::info!(job = ?result.job, uuid = %result.uuid, "build indexed now that there is room");
                    return;
                }
                Err(e) if e.is_refused() => continue,
                // Fatal: the server is stopping.
                Err(_) => return,
            }
        }
    });
}
