//! The reference's client protocol 13: after the hello, one command, then
//! `success` or `failure` with a message (`info` sends its `info_reply`
//! first, `observe` the build's console as `output_timestamped` lines), and
//! the connection ends, as with the reference server.
//!
//! Every command is answered by the same handler as this project's request
//! of the same name ([`crate::client`]): only the translation is here.
//! Where the reference differed, this server's behaviour wins (see the
//! README's migration section): `reschedule` sets the next run and queues
//! nothing, `drop-platform` of a platform without a queue succeeds, and the
//! messages are this server's.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use protocol::codec::Connection;
use protocol::legacy::{
    Command, Info, Job, Period, QueueInfo, Running, ScheduleItem, ScriptJob, Time,
};
use protocol::message::{JobSpec, ServerToClient, Timestamp};
use protocol::record::lossy;
use uuid::Uuid;

use super::{recv, send};
use crate::client::observe::{self, ObserveSink};
use crate::client::{execute, persist_failure, platform, schedule, Reply};
use crate::db::DbError;
use crate::state::Shared;

/// Serves one reference client command, which must come within the hello
/// timeout (the reference's client sends it at once).
pub async fn serve(shared: &Arc<Shared>, conn: &mut Connection) -> anyhow::Result<()> {
    let wait = shared.config.hello_timeout;
    let command = tokio::select! {
        command = tokio::time::timeout(wait, recv(conn)) => match command {
            Ok(command) => command,
            Err(_) => anyhow::bail!("no command within {wait:?} of the hello"),
        },
        _ = shared.shutdown.cancelled() => return Ok(()),
    };
    let command = match command {
        Ok(Some(command)) => command,
        Ok(None) => return Ok(()),
        Err(e) => {
            let reason = format!("bad request: {e:#}");
            let _ = send(conn, &failure(reason.clone())).await;
            anyhow::bail!(reason);
        }
    };
    tracing::info!(
        peer = conn.peer(),
        command = command.name(),
        "reference client request"
    );
    // Warnings for the operator (a platform nobody asked for...): an old
    // client has no way to show them, so they go to the log.
    let mut notices = Vec::new();
    let answer = match command {
        Command::Schedule { period, job } => {
            schedule_job(shared, &Job::Script(job), period, &mut notices).await
        }
        Command::ScheduleOrbBuild { period, job } => {
            schedule_job(shared, &Job::Orb(job), period, &mut notices).await
        }
        Command::Unschedule { name } => match text(&name, "job name") {
            Ok(name) => schedule::unschedule(shared, &name).await,
            Err(reason) => Ok(Err(reason)),
        },
        Command::Reschedule { name, next, period } => match text(&name, "job name") {
            Ok(name) => {
                schedule::reschedule(
                    shared,
                    &name,
                    Timestamp::from_datetime(next.at),
                    period.map(Period::to_trigger),
                )
                .await
            }
            Err(reason) => Ok(Err(reason)),
        },
        Command::Execute { name, platform } => {
            let platform = platform.as_deref().map(|p| text(p, "platform")).transpose();
            match (text(&name, "job name"), platform) {
                (Ok(name), Ok(platform)) => {
                    execute::execute(shared, &name, platform.as_deref()).await
                }
                (Err(reason), _) | (_, Err(reason)) => Ok(Err(reason)),
            }
        }
        Command::DropPlatform { platform } => match text(&platform, "platform") {
            Ok(p) => platform::drop(shared, &p, &mut notices).await,
            Err(reason) => Ok(Err(reason)),
        },
        Command::UndropPlatform { platform } => match text(&platform, "platform") {
            Ok(p) => platform::undrop(shared, &p).await,
            Err(reason) => Ok(Err(reason)),
        },
        Command::Info => match info(shared, Utc::now()).await {
            Ok(info) => {
                // Fitted to the frame limit by leaving scripts out; what
                // cannot fit even so is refused with a reason, never cut
                // off by a closed connection.
                let reply = Command::InfoReply(info).encode();
                if reply.len() > shared.config.max_frame {
                    Ok(Err(format!(
                        "the schedule does not fit in one answer of --max-frame {} bytes even without scripts; use this project's builder-client",
                        shared.config.max_frame
                    )))
                } else {
                    conn.send_frame(&reply).await?;
                    Ok(Ok(None))
                }
            }
            Err(e) => Err(e),
        },
        Command::Observe { uuid } => {
            let mut sink = Observer {
                conn,
                uuid,
                started: None,
                failure: None,
            };
            let observed = observe::observe(shared, &mut sink, uuid).await;
            let failure = sink.failure;
            if let Err(e) = observed {
                let reason = failure.unwrap_or_else(|| format!("{e:#}"));
                let _ = send(conn, &self::failure(reason)).await;
                return Err(e);
            }
            Ok(failure.map_or(Ok(None), Err))
        }
        other => {
            tracing::warn!(
                peer = conn.peer(),
                command = other.name(),
                "unexpected command from a reference client"
            );
            // The reference's own answer.
            Ok(Err("bad communication".to_owned()))
        }
    };
    for notice in notices {
        if let ServerToClient::Notice { message } = notice {
            tracing::warn!(peer = conn.peer(), ?message, "for a reference client");
        }
    }
    let reply = match answer {
        Ok(Ok(_)) => Command::Success,
        Ok(Err(reason)) => failure(reason),
        Err(e) => {
            let (e, reason) = persist_failure(shared, e);
            send(conn, &failure(reason)).await?;
            return if e.is_disk_full() {
                Ok(())
            } else {
                Err(e.into())
            };
        }
    };
    send(conn, &reply).await
}

fn failure(reason: String) -> Command {
    Command::Failure {
        message: reason.into_bytes(),
    }
}

/// A field of a command as text, or the failure's reason.
fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("the {what} \"{}\" is not UTF-8", lossy(bytes)))
}

/// `schedule` and `schedule_orb_build`: this server's `schedule`.
async fn schedule_job(
    shared: &Arc<Shared>,
    job: &Job,
    period: Period,
    notices: &mut Vec<ServerToClient>,
) -> Result<Reply, DbError> {
    match JobSpec::try_from(job) {
        Ok(spec) => schedule::schedule(shared, spec, period.to_trigger(), None, notices).await,
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// The next run the reference shows for a job that never runs again.
fn never() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z")
        .expect("a valid time")
        .with_timezone(&Utc)
}

/// The server's state as a reference client can see it: the schedule (a
/// `--cron` job with the nearest period, see [`Period::nearest`]), each
/// queue with its scripts, the running builds, the dropped platforms. It
/// cannot see the workers, job timeouts, results or uploads.
pub async fn info(shared: &Shared, now: DateTime<Utc>) -> Result<Info, DbError> {
    let schedule = shared
        .db
        .jobs()
        .await?
        .iter()
        .map(|entry| ScheduleItem {
            next: Time::from(entry.next_run.map_or_else(never, Timestamp::to_datetime)),
            period: Period::nearest(&entry.trigger, now),
            job: Job::from(&entry.job),
        })
        .collect();
    let mut queues: Vec<QueueInfo> = Vec::new();
    for q in shared.db.queue_entries().await? {
        let job = Job::Script(ScriptJob::new(
            q.job.as_bytes(),
            q.script.as_bytes(),
            Some(q.platform.as_bytes().to_vec()),
        ));
        match queues.last_mut() {
            Some(last) if last.platform == q.platform.as_bytes() => last.jobs.push(job),
            _ => queues.push(QueueInfo {
                platform: q.platform.into_bytes(),
                jobs: vec![job],
            }),
        }
    }
    // As the reference, a platform with workers but nothing queued shows
    // an empty queue.
    for worker in shared.workers.list() {
        if !queues
            .iter()
            .any(|q| q.platform == worker.platform.as_bytes())
        {
            queues.push(QueueInfo {
                platform: worker.platform.into_bytes(),
                jobs: Vec::new(),
            });
        }
    }
    queues.sort_by(|a, b| a.platform.cmp(&b.platform));
    let running = shared
        .db
        .running()
        .await?
        .into_iter()
        .map(|r| Running {
            started: Time::from(r.assigned.to_datetime()),
            uuid: r.uuid,
            job: ScriptJob::new(
                r.job.job.as_bytes(),
                r.job.script.as_bytes(),
                Some(r.job.platform.into_bytes()),
            ),
        })
        .collect();
    let dropped_platforms = shared
        .db
        .dropped_platforms()
        .await?
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let mut info = Info {
        schedule,
        queues,
        running,
        dropped_platforms,
    };
    leave_out_scripts(&mut info, shared.config.max_frame / 2);
    Ok(info)
}

/// A reference client's `info` carries every script, and must fit in one
/// frame: past `budget` bytes of scripts, each further script is replaced
/// by a comment saying it was left out and how to see it.
fn leave_out_scripts(info: &mut Info, budget: usize) {
    let mut used = 0usize;
    let scripts = info
        .schedule
        .iter_mut()
        .filter_map(|item| match &mut item.job {
            Job::Script(job) => Some(job),
            Job::Orb(_) => None,
        })
        .chain(info.queues.iter_mut().flat_map(|q| {
            q.jobs.iter_mut().filter_map(|job| match job {
                Job::Script(job) => Some(job),
                Job::Orb(_) => None,
            })
        }))
        .chain(info.running.iter_mut().map(|r| &mut r.job));
    for job in scripts {
        let len = job.script.len();
        if used.saturating_add(len) <= budget {
            used += len;
            continue;
        }
        job.script = format!(
            "# builder: this script of {len} bytes is left out of `info`, whose answer must fit in one frame; `builder-client show {}` prints it\n",
            protocol::record::lossy(&job.name)
        )
        .into_bytes();
        used = used.saturating_add(job.script.len());
    }
}

/// The observe stream in the reference's commands: every console line as
/// `output_timestamped`, the end as one more line saying how the build
/// ended (as the reference does), a failure kept for the final answer.
/// Skipped lines are not announced: the reference skips them silently.
struct Observer<'a> {
    conn: &'a mut Connection,
    uuid: Uuid,
    started: Option<Timestamp>,
    failure: Option<String>,
}

impl ObserveSink for Observer<'_> {
    async fn send(&mut self, msg: &ServerToClient) -> anyhow::Result<()> {
        match msg {
            ServerToClient::ObserveStart(header) => self.started = Some(header.started),
            ServerToClient::Console(lines) => {
                for line in lines {
                    let command = Command::OutputTimestamped {
                        uuid: self.uuid,
                        timestamp: line.delta_ns,
                        output: line.data.clone(),
                    };
                    send(self.conn, &command).await?;
                }
            }
            ServerToClient::ObserveEnd { finished, outcome } => {
                let started = self.started.unwrap_or(*finished);
                let command = Command::OutputTimestamped {
                    uuid: self.uuid,
                    timestamp: finished.0.saturating_sub(started.0),
                    output: outcome.to_string().into_bytes(),
                };
                send(self.conn, &command).await?;
            }
            ServerToClient::Failure { reason } => self.failure = Some(reason.clone()),
            _ => {}
        }
        Ok(())
    }
}
