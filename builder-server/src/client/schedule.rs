//! `schedule`, `orb-build`, `unschedule`, `reschedule`.

use std::sync::Arc;

use protocol::message::{JobKind, JobSpec, ScheduleEntry, Timestamp};
use protocol::trigger::Trigger;

use super::{check_job_name, check_platform, Reply};
use crate::db::DbError;
use crate::scheduler;
use crate::state::Shared;

/// Adds a job to the schedule and queues it at once.
pub fn schedule(
    shared: &Arc<Shared>,
    job: JobSpec,
    trigger: Trigger,
    timeout_secs: Option<u64>,
) -> Result<Reply, DbError> {
    if let Err(reason) = check(shared, &job, &trigger, timeout_secs)? {
        return Ok(Err(reason));
    }
    let now = Timestamp::now();
    let entry = ScheduleEntry {
        job: job.clone(),
        trigger,
        next_run: Some(now),
        timeout_secs,
    };
    if !shared.db.insert_job(&entry)? {
        return Ok(Err(format!(
            "a job named {} already exists (unschedule it first, or use reschedule)",
            job.name
        )));
    }
    scheduler::queue_due(shared, now)?;
    shared.schedule_changed.notify_one();
    tracing::info!(job = ?job.name, trigger = ?entry.trigger.to_string(), "job scheduled");
    let detail = match &job.kind {
        JobKind::Orb { opam_package } => {
            let platforms: Vec<String> = scheduler::scripts(shared, &job)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            Some(if platforms.is_empty() {
                format!(
                    "no orb-build templates in {}: {opam_package} is not queued anywhere until one is added",
                    shared.templates.dir().display()
                )
            } else {
                format!("queued on {}", platforms.join(", "))
            })
        }
        JobKind::Script { .. } => None,
    };
    Ok(Ok(detail))
}

fn check(
    shared: &Shared,
    job: &JobSpec,
    trigger: &Trigger,
    timeout_secs: Option<u64>,
) -> Result<Result<(), String>, DbError> {
    if let Err(reason) = check_job_name(&job.name) {
        return Ok(Err(reason));
    }
    if let Err(e) = trigger.validate() {
        return Ok(Err(e.to_string()));
    }
    if timeout_secs == Some(0) {
        return Ok(Err("the timeout must be at least one second".into()));
    }
    match &job.kind {
        JobKind::Script { platform, .. } => {
            if let Err(reason) = check_platform(platform) {
                return Ok(Err(reason));
            }
            if shared.db.is_dropped(platform)? {
                return Ok(Err(format!(
                    "platform {platform} is dropped (undrop-platform {platform} first)"
                )));
            }
        }
        JobKind::Orb { opam_package } => {
            // The name is pasted into a shell script: keep it to opam's
            // package name characters.
            let valid = !opam_package.is_empty()
                && opam_package.len() <= 255
                && opam_package
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_+.".contains(&b));
            if !valid {
                return Ok(Err(format!("invalid opam package name {opam_package:?}")));
            }
        }
    }
    Ok(Ok(()))
}

/// Removes a job from the schedule and every queue.
pub fn unschedule(shared: &Arc<Shared>, name: &str) -> Result<Reply, DbError> {
    if !shared.db.delete_job(name)? {
        return Ok(Err(format!("no job named {name}")));
    }
    shared.schedule_changed.notify_one();
    tracing::info!(job = name, "job unscheduled");
    Ok(Ok(None))
}

/// Sets a job's next run to exactly `next` (and its trigger); queues nothing.
pub fn reschedule(
    shared: &Arc<Shared>,
    name: &str,
    next: Timestamp,
    trigger: Option<Trigger>,
) -> Result<Reply, DbError> {
    if let Some(Err(e)) = trigger.as_ref().map(Trigger::validate) {
        return Ok(Err(e.to_string()));
    }
    if !shared.db.reschedule(name, next, trigger.as_ref())? {
        return Ok(Err(format!("no job named {name}")));
    }
    shared.schedule_changed.notify_one();
    tracing::info!(job = name, next = %next, "job rescheduled");
    Ok(Ok(None))
}
