//! `execute NAME [--platform P] [--observe]`: to the front of the queue(s)
//! now; the schedule is untouched. Each queued build has its UUID from the
//! moment it is queued, so `--observe` follows exactly the build this
//! request queued.

use std::sync::Arc;

use protocol::codec::Connection;
use protocol::message::{JobKind, ServerToClient};
use uuid::Uuid;

use super::{observe, Reply};
use crate::db::DbError;
use crate::state::Shared;

/// Queues a job at the front of its queue(s).
pub async fn execute(
    shared: &Arc<Shared>,
    name: &str,
    platform: Option<&str>,
) -> Result<Reply, DbError> {
    Ok(queue_front(shared, name, platform, false)
        .await?
        .map(|queued| Some(queued_text(&queued))))
}

/// Queues a job on one platform at the front and streams the build it
/// queued, from its first line to its end.
pub async fn execute_observe(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    name: &str,
    platform: Option<&str>,
) -> anyhow::Result<()> {
    let queued = queue_front(shared, name, platform, true)
        .await
        .map_err(|e| shared.refuse_or_stop(e))?;
    match queued.as_deref() {
        Ok([(_, uuid)]) => {
            let uuid = *uuid;
            let message = queued_text(queued.as_ref().expect("matched Ok"));
            conn.send(&ServerToClient::Notice { message }).await?;
            observe::observe(shared, conn, uuid).await
        }
        Ok(_) => unreachable!("queue_front queues one platform when asked to"),
        Err(reason) => {
            conn.send(&ServerToClient::Failure {
                reason: reason.clone(),
            })
            .await?;
            Ok(())
        }
    }
}

/// `queued on linux as 5c4b...; freebsd as ...`.
fn queued_text(queued: &[(String, Uuid)]) -> String {
    let each: Vec<String> = queued
        .iter()
        .map(|(platform, uuid)| format!("{platform} as {uuid}"))
        .collect();
    format!("queued on {}", each.join(", "))
}

/// Puts a job at the front of its queue(s); returns each platform with the
/// UUID of the build queued there. With `one`, a job that would be queued
/// on several platforms is refused before anything is queued.
pub(crate) async fn queue_front(
    shared: &Arc<Shared>,
    name: &str,
    platform: Option<&str>,
    one: bool,
) -> Result<Result<Vec<(String, Uuid)>, String>, DbError> {
    let Some(entry) = shared.db.job(name).await? else {
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
    if one && scripts.len() > 1 {
        let platforms: Vec<&str> = scripts.iter().map(|(p, _)| p.as_str()).collect();
        return Ok(Err(format!(
            "job {name} runs on {} platforms ({}); add --platform P to observe one",
            platforms.len(),
            platforms.join(", ")
        )));
    }
    let timeout = entry
        .timeout_secs
        .unwrap_or(shared.config.job_timeout.as_secs());
    let mut queued = Vec::new();
    let mut dropped = Vec::new();
    for (platform, script) in scripts {
        match shared
            .db
            .enqueue_front(&platform, name, &script, timeout)
            .await?
        {
            Some(uuid) => {
                shared.wake_platform(&platform);
                shared.events.build_queued(uuid, name, &platform);
                queued.push((platform, uuid));
            }
            None => dropped.push(platform),
        }
    }
    if queued.is_empty() {
        return Ok(Err(format!("platform {} is dropped", dropped.join(", "))));
    }
    tracing::info!(job = name, queued = ?queued, "job queued at the front");
    Ok(Ok(queued))
}
