//! The reference's worker protocol 5: after the hello, `job_requested
//! PLATFORM`; the server answers with `job_schedule` once that platform's
//! queue has a job; the worker sends `output` (or `output_timestamped`)
//! lines and ends with `job_finished`, its artifacts inline. One job per
//! connection: the reference's worker connects again for the next.
//!
//! This is a translator, like [`crate::worker`]: the wait for a job and
//! the build's rules are [`crate::build`]'s, so every bound applies to a
//! reference worker too (console lines cut, artifact count and bytes, a
//! path sent twice, the abort message's length, the server-side timeout
//! with `--timeout-grace`, the same abort texts).
//!
//! Liveness: a reference worker sends no heartbeat. As in the reference, it
//! is lost when its connection closes (the build is requeued). A build that
//! outlives its timeout plus `--timeout-grace` is recorded as aborted
//! (`timeout`) and the connection closed; a `cancel` from a new client,
//! which the reference's worker cannot receive, ends the build the same
//! way (`cancelled`).

use std::sync::Arc;

use protocol::codec::Connection;
use protocol::legacy::{Command, ScriptJob};
use protocol::message::{JobOutcome, OutputLine, Timestamp};

use super::{recv, send};
use crate::build::{self, Attempt, End, Waiting};
use crate::db::Running;
use crate::state::Shared;
use crate::templates::valid_platform;

/// How a reference worker shows in `info` and logs.
const HOST: &str = "OCaml builder-worker";

/// Serves one reference worker connection: one job.
pub async fn serve(shared: &Arc<Shared>, conn: &mut Connection) -> anyhow::Result<()> {
    let wait = shared.config.hello_timeout;
    let request = tokio::select! {
        request = tokio::time::timeout(wait, recv(conn)) => match request {
            Ok(request) => request?,
            Err(_) => return refuse(conn, format!("no job_requested within {wait:?} of the hello")).await,
        },
        _ = shared.shutdown.cancelled() => return Ok(()),
    };
    let platform = match request {
        Some(Command::JobRequested { platform }) => platform,
        Some(other) => {
            return refuse(
                conn,
                format!("expected job_requested, got {}", other.name()),
            )
            .await
        }
        None => return Ok(()),
    };
    let platform = match String::from_utf8(platform) {
        Ok(p) if valid_platform(&p) => p,
        Ok(p) => return refuse(conn, format!("invalid platform name {p:?}")).await,
        Err(e) => {
            let shown = protocol::record::lossy(e.as_bytes()).into_owned();
            return refuse(conn, format!("invalid platform name {shown:?}")).await;
        }
    };
    let id = shared.workers.register(&platform, HOST, conn.peer());
    shared.events.worker_connected(&platform, HOST, conn.peer());
    shared.templates.warn_missing(&platform);
    let name = format!("{HOST} ({})", conn.peer());
    tracing::info!(%platform, peer = conn.peer(), "reference worker requests a job");
    let mut waiting = Idle { conn };
    let result = match build::wait_for_job(shared, &platform, &name, &mut waiting).await {
        Ok(Some(running)) => Box::pin(run_build(shared, conn, id, running, &name)).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    shared.workers.unregister(id);
    shared
        .events
        .worker_disconnected(&platform, HOST, conn.peer());
    result
}

/// Tells a reference worker why it is turned away (it logs the failure),
/// then ends the connection with that reason.
async fn refuse(conn: &mut Connection, reason: String) -> anyhow::Result<()> {
    let failure = Command::Failure {
        message: reason.clone().into_bytes(),
    };
    let _ = tokio::time::timeout(crate::listener::LINGER, send(conn, &failure)).await;
    anyhow::bail!(reason)
}

/// A reference worker waiting for a job: it says nothing until then.
struct Idle<'a> {
    conn: &'a mut Connection,
}

impl Waiting for Idle<'_> {
    async fn idle(&mut self) -> anyhow::Result<bool> {
        match self.conn.recv_frame().await? {
            None => Ok(false),
            Some(_) => anyhow::bail!("unexpected command while waiting for a job"),
        }
    }

    /// As with the reference, a worker of a dropped platform waits.
    async fn dropped(&mut self, _platform: &str) -> anyhow::Result<bool> {
        Ok(true)
    }
}

async fn run_build(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    id: u64,
    running: Running,
    name: &str,
) -> anyhow::Result<()> {
    let schedule = Command::JobSchedule {
        uuid: running.uuid,
        job: ScriptJob::new(
            running.job.job.as_bytes(),
            running.job.script.as_bytes(),
            Some(running.job.platform.as_bytes().to_vec()),
        ),
    };
    let assigned = running.assigned;
    let mut attempt = Attempt::begin(shared, running, id, name);
    let end = match send(conn, &schedule).await {
        Err(e) => Err(End::Lost(format!("cannot send the job: {e:#}"))),
        Ok(()) => converse(shared, conn, &mut attempt, assigned).await,
    };
    if let Err(End::Abort(reason)) = &end {
        tracing::warn!(job = %attempt.job().job, uuid = %attempt.uuid(), %reason, "build of a reference worker ended; closing its connection");
    }
    attempt.settle(end).await.conclude().await?;
    Ok(())
}

/// Translates the worker's commands into the attempt's events until
/// `job_finished` or another end.
async fn converse(
    shared: &Shared,
    conn: &mut Connection,
    attempt: &mut Attempt,
    assigned: Timestamp,
) -> Result<(Timestamp, JobOutcome), End> {
    let uuid = attempt.uuid();
    let deadline = attempt.deadline();
    loop {
        let command = tokio::select! {
            command = recv(conn) => command,
            _ = tokio::time::sleep_until(deadline) => return Err(attempt.timed_out().1),
            reason = attempt.cancelled() => return Err(End::Abort(reason)),
            _ = shared.shutdown.cancelled() => return Err(End::Shutdown),
        };
        match command {
            Ok(Some(Command::Output { uuid: u, output })) => {
                warn_uuid(uuid, u);
                let delta_ns = Timestamp::now().0.saturating_sub(assigned.0);
                attempt
                    .console(vec![OutputLine {
                        delta_ns,
                        data: output,
                    }])
                    .await?;
            }
            Ok(Some(Command::OutputTimestamped {
                uuid: u,
                timestamp,
                output,
            })) => {
                warn_uuid(uuid, u);
                attempt
                    .console(vec![OutputLine {
                        delta_ns: timestamp,
                        data: output,
                    }])
                    .await?;
            }
            Ok(Some(Command::JobFinished {
                uuid: u,
                result,
                data,
            })) => {
                warn_uuid(uuid, u);
                // The inline artifacts go through the same budget and
                // writer as a new worker's streamed ones.
                for artifact in data {
                    let len = artifact.data.len() as u64;
                    attempt.artifact_start(artifact.path, len).await?;
                    attempt.artifact_chunk(artifact.data).await?;
                }
                return Ok(attempt.result(Timestamp::now(), JobOutcome::from(&result)));
            }
            Ok(Some(other)) => {
                return Err(End::Lost(format!(
                    "unexpected {} during build {uuid}",
                    other.name()
                )))
            }
            Ok(None) => return Err(End::Lost("connection closed".into())),
            Err(e) => return Err(End::Lost(format!("{e:#}"))),
        }
    }
}

fn warn_uuid(expected: uuid::Uuid, got: uuid::Uuid) {
    if expected != got {
        // The reference warns and goes on: the connection is one build's.
        tracing::warn!(uuid = %expected, got = %got, "reference worker sent another build's uuid");
    }
}
