//! `drop-platform`, `undrop-platform`.
//!
//! Both treat "already so" alike: the request succeeds and the answer says
//! nothing changed (`platform P is already dropped`, `platform P is not
//! dropped`), so scripts can run either twice safely.

use std::sync::Arc;

use protocol::message::ServerToClient;

use super::Reply;
use crate::db::DbError;
use crate::names::check_platform;
use crate::state::Shared;

/// Drops a platform: its queue and script jobs go; its waiting workers are
/// told and disconnected; new work for it is refused until undropped.
/// `notices` gets a warning when nothing ever used the platform (a typo?).
pub async fn drop(
    shared: &Arc<Shared>,
    platform: &str,
    notices: &mut Vec<ServerToClient>,
) -> Result<Reply, DbError> {
    if let Err(reason) = check_platform(platform) {
        return Ok(Err(reason));
    }
    let known = shared.db.platform_in_use(platform).await?
        || shared.templates.render(platform, "").is_some();
    let Some(removed) = shared.db.drop_platform(platform).await? else {
        return Ok(Ok(Some(format!(
            "platform {platform} is already dropped; nothing changed"
        ))));
    };
    if !known {
        notices.push(ServerToClient::Notice {
            message: format!(
                "warning: platform {platform} was unknown: no worker ever asked for it and no job or template uses it (a typo?)"
            ),
        });
    }
    shared.wake_platform(platform);
    shared.schedule_changed.notify_one();
    tracing::info!(platform, removed_jobs = ?removed, "platform dropped");
    for job in &removed {
        crate::build::finish::remove_empty_job_dir(shared, job).await;
    }
    let jobs = match removed.as_slice() {
        [] => "no script jobs removed".to_owned(),
        [one] => format!("removed script job {one}"),
        many => format!("removed {} script jobs: {}", many.len(), many.join(", ")),
    };
    Ok(Ok(Some(format!("dropped platform {platform}; {jobs}"))))
}

/// Accepts a dropped platform again.
pub async fn undrop(shared: &Arc<Shared>, platform: &str) -> Result<Reply, DbError> {
    if !shared.db.undrop_platform(platform).await? {
        return Ok(Ok(Some(format!(
            "platform {platform} is not dropped; nothing changed"
        ))));
    }
    shared.wake_platform(platform);
    tracing::info!(platform, "platform undropped");
    Ok(Ok(Some(format!(
        "undropped platform {platform}: it accepts jobs and workers again"
    ))))
}
