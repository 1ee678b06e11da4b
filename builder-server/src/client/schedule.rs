//! `schedule`, `orb-build`, `unschedule`, `reschedule`, `update`.
//!
//! Each answers with one line saying what it did. A script job on a
//! platform no worker ever asked for and no template names is scheduled
//! all the same, with a warning: the name may be a typo.

use std::sync::Arc;

use protocol::message::{JobKind, JobSpec, ScheduleEntry, ServerToClient, Timestamp};
use protocol::trigger::Trigger;

use super::Reply;
use crate::db::{DbError, JobUpdate};
use crate::names::{check_job_name, check_platform};
use crate::scheduler;
use crate::state::Shared;

/// Adds a job to the schedule and queues it at once.
pub async fn schedule(
    shared: &Arc<Shared>,
    job: JobSpec,
    trigger: Trigger,
    timeout_secs: Option<u64>,
    notices: &mut Vec<ServerToClient>,
) -> Result<Reply, DbError> {
    if let Err(reason) = check(shared, &job, &trigger, timeout_secs).await? {
        return Ok(Err(reason));
    }
    if let JobKind::Script { platform, .. } = &job.kind {
        warn_unknown_platform(shared, platform, notices).await?;
    }
    let now = Timestamp::now();
    let entry = ScheduleEntry {
        job: job.clone(),
        trigger,
        next_run: Some(now),
        timeout_secs,
    };
    // The first run is queued with the job, in one commit; templates are
    // read here, outside the transaction.
    let scripts = scheduler::scripts(shared, &job);
    let next = scheduler::next_run(&entry.trigger, now, now);
    let timeout = timeout_secs.unwrap_or(shared.config.job_timeout.as_secs());
    let Some(platforms) = shared
        .db
        .schedule(entry.clone(), next, scripts.clone(), timeout)
        .await?
    else {
        return Ok(Err(format!(
            "a job named {0} already exists (change it with `update {0}`, or unschedule it first)",
            job.name
        )));
    };
    for platform in &platforms {
        shared.wake_platform(platform);
    }
    shared.schedule_changed.notify_one();
    shared.events.job_changed(&job.name);
    tracing::info!(job = ?job.name, trigger = ?entry.trigger.to_string(), "job scheduled");
    let detail = match &job.kind {
        JobKind::Orb { opam_package } => {
            let platforms: Vec<String> = scripts.into_iter().map(|(p, _)| p).collect();
            if platforms.is_empty() {
                format!(
                    "scheduled {} ({}); no orb-build templates in {}: {opam_package} is not queued anywhere until one is added",
                    job.name,
                    entry.trigger,
                    shared.templates.dir().display()
                )
            } else {
                format!(
                    "scheduled {} ({}); queued now on {}",
                    job.name,
                    entry.trigger,
                    platforms.join(", ")
                )
            }
        }
        JobKind::Script { platform, .. } => {
            format!(
                "scheduled {} on {platform} ({}); queued now",
                job.name, entry.trigger
            )
        }
    };
    Ok(Ok(Some(detail)))
}

/// The platforms builder ships for: those of the orb-build templates in
/// `packaging/templates/` (which the packages install in the config
/// directory) and `debian-12`, the default of the shipped worker units.
/// Scheduling onto one of them is never warned about, even on a fresh
/// server from source with an empty config directory.
pub const SHIPPED_PLATFORMS: [&str; 3] = ["debian-12", "freebsd-14", "ubuntu-24.04"];

/// Warns when `platform` is unknown: no worker ever asked for it, the
/// config directory has no orb-build template for it, and it is not one of
/// the [`SHIPPED_PLATFORMS`]. Most likely a typo, and the job would wait
/// forever.
async fn warn_unknown_platform(
    shared: &Shared,
    platform: &str,
    notices: &mut Vec<ServerToClient>,
) -> Result<(), DbError> {
    if SHIPPED_PLATFORMS.contains(&platform)
        || shared.db.platform_known(platform).await?
        || shared.templates.render(platform, "").is_some()
    {
        return Ok(());
    }
    notices.push(ServerToClient::Notice {
        message: format!(
            "warning: no worker has ever asked for platform {platform} and it has no orb-build template: check the name (the job waits until such a worker connects)"
        ),
    });
    Ok(())
}

async fn check(
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
            if shared.db.is_dropped(platform).await? {
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
pub async fn unschedule(shared: &Arc<Shared>, name: &str) -> Result<Reply, DbError> {
    if !shared.db.delete_job(name).await? {
        return Ok(Err(format!("no job named {name}")));
    }
    shared.schedule_changed.notify_one();
    shared.events.job_changed(name);
    crate::build::finish::remove_empty_job_dir(shared, name).await;
    tracing::info!(job = name, "job unscheduled");
    Ok(Ok(None))
}

/// Sets a job's next run to exactly `next` (and its trigger); queues nothing.
pub async fn reschedule(
    shared: &Arc<Shared>,
    name: &str,
    next: Timestamp,
    trigger: Option<Trigger>,
) -> Result<Reply, DbError> {
    if let Some(Err(e)) = trigger.as_ref().map(Trigger::validate) {
        return Ok(Err(e.to_string()));
    }
    if shared.db.job(name).await?.is_none() {
        return Ok(Err(format!("no job named {name}")));
    }
    // Queueing nothing now is the point of reschedule; a past NEXT would
    // queue the job at once.
    if next < Timestamp::now() {
        return Ok(Err(format!(
            "NEXT ({next}) is in the past; use `execute {name}` to run it now"
        )));
    }
    if !shared.db.reschedule(name, next, trigger.as_ref()).await? {
        return Ok(Err(format!("no job named {name}")));
    }
    shared.schedule_changed.notify_one();
    shared.events.job_changed(name);
    tracing::info!(job = name, next = %next, "job rescheduled");
    Ok(Ok(Some(format!("rescheduled {name}: next run {next}"))))
}

/// What `update` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// A new script.
    pub script: Option<String>,
    /// A new platform.
    pub platform: Option<String>,
    /// A new trigger.
    pub trigger: Option<Trigger>,
    /// A new timeout.
    pub timeout_secs: Option<u64>,
}

/// Changes a job in place: it keeps its name and its history (results are
/// by name), and its next run unless the trigger changes (a new trigger's
/// phase starts now).
pub async fn update(
    shared: &Arc<Shared>,
    name: &str,
    changes: Changes,
    notices: &mut Vec<ServerToClient>,
) -> Result<Reply, DbError> {
    let Some(mut entry) = shared.db.job(name).await? else {
        return Ok(Err(format!("no job named {name}")));
    };
    let Changes {
        script,
        platform,
        trigger,
        timeout_secs,
    } = changes;
    if script.is_none() && platform.is_none() && trigger.is_none() && timeout_secs.is_none() {
        return Ok(Err(
            "nothing to update: give --script, --period or --cron, --timeout, or --platform".into(),
        ));
    }
    let mut changed = Vec::new();
    match &mut entry.job.kind {
        JobKind::Script {
            platform: old_platform,
            script: old_script,
        } => {
            if let Some(new) = script {
                *old_script = new;
                changed.push("script".to_owned());
            }
            if let Some(new) = platform {
                if let Err(reason) = check_platform(&new) {
                    return Ok(Err(reason));
                }
                if shared.db.is_dropped(&new).await? {
                    return Ok(Err(format!(
                        "platform {new} is dropped (undrop-platform {new} first)"
                    )));
                }
                warn_unknown_platform(shared, &new, notices).await?;
                changed.push(format!("platform {new}"));
                *old_platform = new;
            }
        }
        JobKind::Orb { .. } => {
            if script.is_some() || platform.is_some() {
                return Ok(Err(format!(
                    "job {name} is an orb-build job: its scripts and platforms come from the templates; only --period, --cron and --timeout apply"
                )));
            }
        }
    }
    if let Some(secs) = timeout_secs {
        if secs == 0 {
            return Ok(Err("the timeout must be at least one second".into()));
        }
        entry.timeout_secs = Some(secs);
        changed.push(format!("timeout {secs}s"));
    }
    let mut new_phase = false;
    if let Some(trigger) = trigger {
        if let Err(e) = trigger.validate() {
            return Ok(Err(e.to_string()));
        }
        if trigger != entry.trigger {
            let now = Timestamp::now();
            entry.next_run = scheduler::next_run(&trigger, now, now);
            entry.trigger = trigger;
            new_phase = true;
            changed.push(format!("trigger {}", entry.trigger));
        }
    }
    let update = JobUpdate {
        entry: entry.clone(),
        new_phase,
        timeout_secs: entry
            .timeout_secs
            .unwrap_or(shared.config.job_timeout.as_secs()),
    };
    if !shared.db.update_job(update).await? {
        return Ok(Err(format!("no job named {name}")));
    }
    if new_phase {
        shared.schedule_changed.notify_one();
    }
    if let JobKind::Script { platform, .. } = &entry.job.kind {
        shared.wake_platform(platform);
    }
    shared.events.job_changed(name);
    tracing::info!(job = name, changed = ?changed, "job updated");
    let next = match (
        new_phase,
        shared.db.job(name).await?.and_then(|e| e.next_run),
    ) {
        (_, None) => "no next run".to_owned(),
        (true, Some(t)) => format!("next run {t}"),
        (false, Some(t)) => format!("next run unchanged ({t})"),
    };
    let what = if changed.is_empty() {
        "nothing changed".to_owned()
    } else {
        changed.join(", ")
    };
    Ok(Ok(Some(format!("updated {name}: {what}; {next}"))))
}

#[cfg(test)]
mod tests {
    use super::SHIPPED_PLATFORMS;
    use std::path::Path;

    /// The list follows what is shipped: every template's platform and
    /// every unit's default `BUILDER_PLATFORM` is in it.
    #[test]
    fn shipped_platforms_cover_the_templates_and_the_units() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut shipped = Vec::new();
        for entry in std::fs::read_dir(root.join("packaging/templates")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(platform) = name.strip_prefix("orb-build.template.") {
                shipped.push(platform.to_owned());
            }
        }
        for entry in std::fs::read_dir(root.join("systemd")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            shipped.extend(text.lines().filter_map(|l| {
                Some(
                    l.strip_prefix("Environment=BUILDER_PLATFORM=")?
                        .trim()
                        .to_owned(),
                )
            }));
        }
        assert!(shipped.len() >= 2, "nothing found: {shipped:?}");
        for platform in &shipped {
            assert!(
                SHIPPED_PLATFORMS.contains(&platform.as_str()),
                "{platform} is shipped but not in SHIPPED_PLATFORMS"
            );
        }
    }
}
