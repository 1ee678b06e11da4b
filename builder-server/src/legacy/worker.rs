//! The reference's worker protocol 5: after the hello, `job_requested
//! PLATFORM`; the server answers with `job_schedule` once that platform's
//! queue has a job; the worker sends `output` (or `output_timestamped`)
//! lines and ends with `job_finished`, its artifacts inline. One job per
//! connection: the reference's worker connects again for the next.
//!
//! The build goes through the same path as a new worker's
//! ([`crate::worker`]): the queue's claim, the live build and its
//! observers, the artifact spool, [`end_build`] (record, result index,
//! upload) and [`build_lost`] (requeue at the front).
//!
//! Liveness: a reference worker sends no heartbeat. As in the reference, it
//! is lost when its connection closes (the build is requeued), and a build
//! that outlives its job timeout ends there: it is recorded as aborted
//! (`timeout after N s`) and the connection is closed. A `cancel` from a new
//! client, which the reference's worker cannot receive, ends the build the
//! same way.

use std::sync::Arc;
use std::time::Duration;

use protocol::codec::Connection;
use protocol::legacy::{Command, ScriptJob};
use protocol::message::{BuildHeader, JobOutcome, OutputLine, Timestamp};
use protocol::Chain;
use tokio::time::Instant;

use super::{recv, send};
use crate::db::Running;
use crate::live::LiveBuild;
use crate::spool::{BuildSpool, SharedMap};
use crate::state::Shared;
use crate::store;
use crate::templates::valid_platform;
use crate::worker::{build_lost, claim, end_build};

/// How a reference worker shows in `info` and logs.
const HOST: &str = "OCaml builder-worker";

/// Serves one reference worker connection: one job.
pub async fn serve(shared: &Arc<Shared>, conn: &mut Connection) -> anyhow::Result<()> {
    let wait = shared.config.hello_timeout;
    let request = tokio::select! {
        request = tokio::time::timeout(wait, recv(conn)) => match request {
            Ok(request) => request?,
            Err(_) => anyhow::bail!("no job_requested within {wait:?} of the hello"),
        },
        _ = shared.shutdown.cancelled() => return Ok(()),
    };
    let platform = match request {
        Some(Command::JobRequested { platform }) => platform,
        Some(other) => anyhow::bail!("expected job_requested, got {}", other.name()),
        None => return Ok(()),
    };
    let platform = match String::from_utf8(platform) {
        Ok(p) if valid_platform(&p) => p,
        Ok(p) => anyhow::bail!("invalid platform name {p:?}"),
        Err(e) => anyhow::bail!(
            "invalid platform name \"{}\"",
            protocol::record::lossy(e.as_bytes())
        ),
    };
    let id = shared.workers.register(&platform, HOST, conn.peer());
    shared.templates.warn_missing(&platform);
    let name = format!("{HOST} ({})", conn.peer());
    tracing::info!(%platform, peer = conn.peer(), "reference worker requests a job");
    let result = match wait_for_job(shared, conn, &platform, &name).await {
        Ok(Some(running)) => run_build(shared, conn, id, running, &name).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    shared.workers.unregister(id);
    result
}

/// Claims the head of the platform's queue, waiting for one. While the
/// platform is dropped the worker waits, as with the reference. `None` when
/// the worker left or the server stops.
async fn wait_for_job(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    platform: &str,
    name: &str,
) -> anyhow::Result<Option<Running>> {
    let wakeup = shared.platform_wakeup(platform);
    loop {
        let notified = wakeup.notified();
        tokio::pin!(notified);
        // Register before looking, so an enqueue in between is not missed.
        notified.as_mut().enable();
        let dropped = shared
            .db
            .is_dropped(platform)
            .await
            .map_err(|e| shared.fatal(e))?;
        let retry = if dropped {
            None
        } else {
            match claim(shared, platform, name).await? {
                Ok(Some(running)) => return Ok(Some(running)),
                Ok(None) => None,
                Err(retry) => Some(retry),
            }
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {}
            frame = conn.recv_frame() => match frame? {
                None => return Ok(None),
                Some(_) => anyhow::bail!("unexpected command while waiting for a job"),
            },
            _ = shared.shutdown.cancelled() => return Ok(None),
        }
    }
}

/// How a build's conversation ended without `job_finished`.
enum Interrupted {
    /// The worker is gone or misbehaved: requeue the build.
    Lost(String),
    /// Over its timeout, or cancelled: recorded as aborted with this reason.
    Ended(String),
    /// The server is stopping: left marked running for the next start.
    Shutdown,
    /// The build's writer stopped at an error, which it gives when it is
    /// finished.
    Spool,
}

async fn run_build(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    id: u64,
    running: Running,
    name: &str,
) -> anyhow::Result<()> {
    let uuid = running.uuid;
    let job = &running.job;
    tracing::info!(job = %job.job, %uuid, platform = %job.platform, worker = name, "build started");
    let started = running.assigned;
    let map = SharedMap::default();
    let live = LiveBuild::new(
        BuildHeader {
            uuid,
            job: job.job.clone(),
            platform: job.platform.clone(),
            started,
        },
        map.clone(),
    );
    let build_dir = store::build_dir(&shared.config.dir, &running.job.job, uuid);
    let mut spool = BuildSpool::start(&build_dir, job.lost + 1, shared.config.max_console, map);
    shared.live.insert(uuid, live.clone());
    let mut cancel = shared.workers.set_running(id, Some(uuid));
    let timeout = Duration::from_secs(job.timeout_secs);
    let deadline = Instant::now() + timeout;
    let schedule = Command::JobSchedule {
        uuid,
        job: ScriptJob::new(
            job.job.as_bytes(),
            job.script.as_bytes(),
            Some(job.platform.as_bytes().to_vec()),
        ),
    };
    let mut end = match send(conn, &schedule).await {
        Err(e) => Err(Interrupted::Lost(format!("cannot send the job: {e:#}"))),
        Ok(()) => loop {
            tokio::select! {
                command = recv(conn) => match command {
                    Ok(Some(Command::Output { uuid: u, output })) => {
                        warn_uuid(uuid, u);
                        let delta_ns = Timestamp::now().0.saturating_sub(started.0);
                        if let Some(batch) = live.push(vec![OutputLine { delta_ns, data: output }]) {
                            if spool.console(batch).await.is_err() {
                                break Err(Interrupted::Spool);
                            }
                        }
                    }
                    Ok(Some(Command::OutputTimestamped { uuid: u, timestamp, output })) => {
                        warn_uuid(uuid, u);
                        if let Some(batch) = live.push(vec![OutputLine { delta_ns: timestamp, data: output }]) {
                            if spool.console(batch).await.is_err() {
                                break Err(Interrupted::Spool);
                            }
                        }
                    }
                    Ok(Some(Command::JobFinished { uuid: u, result, data })) => {
                        warn_uuid(uuid, u);
                        break Ok((result, data));
                    }
                    Ok(Some(other)) => break Err(Interrupted::Lost(format!("unexpected {} during build {uuid}", other.name()))),
                    Ok(None) => break Err(Interrupted::Lost("connection closed".into())),
                    Err(e) => break Err(Interrupted::Lost(format!("{e:#}"))),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(Interrupted::Ended(format!("timeout after {} s", timeout.as_secs())));
                }
                Some(reason) = cancel.recv() => break Err(Interrupted::Ended(reason)),
                _ = shared.shutdown.cancelled() => break Err(Interrupted::Shutdown),
            }
        },
    };
    shared.workers.set_running(id, None);
    if let Err(Interrupted::Shutdown) = end {
        shared.live.remove(uuid, &live);
        return Ok(());
    }
    let finished = Timestamp::now();
    // The inline artifacts go through the same writer as a new worker's
    // streamed ones.
    if let Ok((_, data)) = &mut end {
        for artifact in std::mem::take(data) {
            let len = artifact.data.len() as u64;
            if spool.artifact_start(artifact.path, len).await.is_err()
                || spool.artifact_chunk(artifact.data).await.is_err()
            {
                break;
            }
        }
    }
    let mut spooled = spool.finish().await;
    let failed = spooled.error.take();
    let result = match end {
        Ok((result, _)) => Some(result),
        Err(Interrupted::Shutdown) => unreachable!("handled above"),
        Err(Interrupted::Lost(reason)) => {
            spooled.drop_artifacts().await;
            return build_lost(shared, running, &live, &reason, spooled).await;
        }
        Err(Interrupted::Ended(reason)) => {
            tracing::warn!(job = %running.job.job, %uuid, %reason, "build of a reference worker ended; closing its connection");
            spooled.drop_artifacts().await;
            let outcome = JobOutcome::Aborted(reason);
            end_build(shared, &running, &live, started, finished, outcome, spooled).await?;
            return Ok(());
        }
        // The writer's error follows.
        Err(Interrupted::Spool) => None,
    };
    let outcome = match failed {
        None => match result {
            Some(result) => JobOutcome::from(&result),
            None => JobOutcome::Aborted("the spool's writer stopped".into()),
        },
        Some(e) if e.error.is_protocol() => {
            // The worker's result does not hold together: as if it was lost.
            spooled.drop_artifacts().await;
            let reason = Chain(&e.error).to_string();
            return build_lost(shared, running, &live, &reason, spooled).await;
        }
        Some(e) => {
            let reason = e.error.abort_reason(e.what);
            tracing::error!(job = %running.job.job, %uuid, %reason, "cannot store the build; recorded as aborted");
            spooled.drop_artifacts().await;
            JobOutcome::Aborted(reason)
        }
    };
    let outcome = end_build(shared, &running, &live, started, finished, outcome, spooled).await?;
    tracing::info!(job = %running.job.job, %uuid, %outcome, "build finished");
    Ok(())
}

fn warn_uuid(expected: uuid::Uuid, got: uuid::Uuid) {
    if expected != got {
        // The reference warns and goes on: the connection is one build's.
        tracing::warn!(uuid = %expected, got = %got, "reference worker sent another build's uuid");
    }
}
