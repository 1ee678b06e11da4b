//! `builder-server --import-state FILE`: takes over the reference server's
//! `state` file. Schedule entries (script and orb jobs) keep their next run
//! and period; queues keep their order (an orb job's script is rendered
//! from this server's template for the queue's platform, as the reference
//! renders it when a worker takes the job); dropped platforms stay dropped.
//! The items the reference skips with a warning (jobs queued by old
//! servers) are skipped with the same warning; anything this server cannot
//! represent (a name that is not UTF-8 or not a valid job name, an orb job
//! queued on a platform without a template) is skipped with a warning
//! naming it. Everything is written in one transaction ([`Db::import`]).

use std::path::Path;

use anyhow::Context;
use chrono::Datelike;
use protocol::legacy::{Job, State};
use protocol::message::{JobKind, JobSpec, ScheduleEntry, Timestamp};
use protocol::record::lossy;

use crate::db::{Db, Import, QueuedJob};
use crate::layout;
use crate::names::{check_job_name, check_platform};
use crate::templates::Templates;

/// Largest state file read (the reference's are kilobytes).
const MAX_STATE_FILE: u64 = 256 * 1024 * 1024;

/// Imports `file` into the state directory `dir`; returns the one-line
/// summary. `job_timeout` is the timeout of imported queue entries (the
/// reference has none per job).
///
/// # Errors
///
/// The file cannot be read or decoded, the directory is in use by a running
/// server, or it already holds jobs and `force` is not set.
pub async fn import_state(
    dir: &Path,
    config_dir: &Path,
    file: &Path,
    force: bool,
    job_timeout: u64,
) -> anyhow::Result<String> {
    let shown = file.display();
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {shown}"))?
        .len();
    if len > MAX_STATE_FILE {
        anyhow::bail!("{shown} is {len} bytes, more than a state file's {MAX_STATE_FILE}");
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {shown}"))?;
    let decoded =
        State::decode(&bytes).with_context(|| format!("{shown} is not a reference state file"))?;
    let mut skipped = decoded.warnings.len();
    for warning in &decoded.warnings {
        tracing::warn!(file = %shown, "{warning}");
    }
    let (import, more) = convert(&decoded.state, &Templates::new(config_dir), job_timeout);
    skipped += more;

    let _lock = layout::open(dir)?;
    let db = Db::open(&layout::db_path(dir))?;
    let done = match db.import(import, force).await? {
        Ok(done) => done,
        Err(jobs) => anyhow::bail!(
            "{} already holds {jobs} job{}; pass --force to import into it anyway (jobs and queue entries already there are kept, not duplicated)",
            dir.display(),
            if jobs == 1 { "" } else { "s" }
        ),
    };
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut summary = format!(
        "imported {}, {}, {} from {shown}",
        plural(done.jobs, "job"),
        plural(done.queued, "queue entry").replace("entrys", "entries"),
        plural(done.dropped, "dropped platform"),
    );
    if skipped > 0 {
        summary.push_str(&format!(
            " ({} skipped, see the warnings)",
            plural(skipped, "item")
        ));
    }
    Ok(summary)
}

/// The state as this server stores it, and how many items were skipped
/// (each logged).
fn convert(state: &State, templates: &Templates, job_timeout: u64) -> (Import, usize) {
    let mut import = Import::default();
    let mut skipped = 0;
    let mut skip = |what: String| {
        tracing::warn!("skipping {what}");
        skipped += 1;
    };
    for item in state.schedule() {
        let spec = match checked(&item.job) {
            Ok(spec) => spec,
            Err(reason) => {
                skip(format!(
                    "schedule entry \"{}\": {reason}",
                    lossy(item.job.name())
                ));
                continue;
            }
        };
        // The reference's "never again" is the end of year 9999.
        let next_run = (item.next.at.year() < 9999).then(|| Timestamp::from_datetime(item.next.at));
        import.jobs.push(ScheduleEntry {
            job: spec,
            trigger: item.period.to_trigger(),
            next_run,
            timeout_secs: None,
        });
    }
    for (platform, jobs) in state.queues() {
        let platform = match std::str::from_utf8(platform)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(|p| check_platform(p).map(|()| p))
        {
            Ok(p) => p,
            Err(reason) => {
                skip(format!(
                    "queue \"{}\" ({} jobs): {reason}",
                    lossy(platform),
                    jobs.len()
                ));
                continue;
            }
        };
        for job in jobs {
            let spec = match checked(job) {
                Ok(spec) => spec,
                Err(reason) => {
                    skip(format!(
                        "job \"{}\" queued on {platform}: {reason}",
                        lossy(job.name())
                    ));
                    continue;
                }
            };
            let script = match &spec.kind {
                JobKind::Script { script, .. } => script.clone(),
                JobKind::Orb { opam_package } => match templates.render(platform, opam_package) {
                    Some(script) => script,
                    None => {
                        skip(format!(
                            "orb job {} queued on {platform}: no orb-build template for {platform} in {}",
                            spec.name,
                            templates.dir().display()
                        ));
                        continue;
                    }
                },
            };
            import.queued.push(QueuedJob {
                job: spec.name,
                platform: platform.to_owned(),
                script,
                timeout_secs: job_timeout,
                lost: 0,
            });
        }
    }
    for platform in state.dropped_platforms() {
        match std::str::from_utf8(platform) {
            Ok(p) => import.dropped.push(p.to_owned()),
            Err(_) => skip(format!(
                "dropped platform \"{}\": not UTF-8",
                lossy(platform)
            )),
        }
    }
    (import, skipped)
}

/// A reference job as this server's, if it can hold it.
fn checked(job: &Job) -> Result<JobSpec, String> {
    let spec = JobSpec::try_from(job).map_err(|e| e.to_string())?;
    check_job_name(&spec.name)?;
    if let JobKind::Script { platform, .. } = &spec.kind {
        check_platform(platform)?;
    }
    Ok(spec)
}
