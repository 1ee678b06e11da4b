//! `execute NAME [--platform P]`: to the front of the queue(s) now; the
//! schedule is untouched.

use std::sync::Arc;

use protocol::message::JobKind;

use super::Reply;
use crate::db::DbError;
use crate::state::Shared;

/// Queues a job at the front of its queue(s).
pub fn execute(shared: &Arc<Shared>, name: &str, platform: Option<&str>) -> Result<Reply, DbError> {
    let Some(entry) = shared.db.job(name)? else {
        return Ok(Err(format!("no job named {name}")));
    };
    let scripts = match (&entry.job.kind, platform) {
        (JobKind::Script { platform: own, .. }, Some(p)) if own != p => {
            return Ok(Err(format!("job {name} runs on {own}, not {p}")));
        }
        (JobKind::Script { platform, script }, _) => vec![(platform.clone(), script.clone())],
        (JobKind::Orb { opam_package }, Some(p)) => {
            match shared.templates.render(p, opam_package) {
                Some(script) => vec![(p.to_owned(), script)],
                None => {
                    return Ok(Err(format!(
                        "no orb-build template for platform {p} in {}",
                        shared.templates.dir().display()
                    )))
                }
            }
        }
        (JobKind::Orb { opam_package }, None) => {
            let scripts = shared.templates.render_all(opam_package);
            if scripts.is_empty() {
                return Ok(Err(format!(
                    "no orb-build templates in {}",
                    shared.templates.dir().display()
                )));
            }
            scripts
        }
    };
    let timeout = entry
        .timeout_secs
        .unwrap_or(shared.config.job_timeout.as_secs());
    let mut queued = Vec::new();
    let mut dropped = Vec::new();
    for (platform, script) in scripts {
        if shared.db.is_dropped(&platform)? {
            dropped.push(platform);
            continue;
        }
        shared.db.enqueue(&platform, name, &script, timeout, true)?;
        shared.wake_platform(&platform);
        queued.push(platform);
    }
    if queued.is_empty() {
        return Ok(Err(format!("platform {} is dropped", dropped.join(", "))));
    }
    tracing::info!(job = name, platforms = ?queued, "job queued at the front");
    Ok(Ok(Some(format!("queued on {}", queued.join(", ")))))
}
