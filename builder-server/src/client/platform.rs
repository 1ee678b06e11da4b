//! `drop-platform`, `undrop-platform`.

use std::sync::Arc;

use super::{check_platform, Reply};
use crate::db::DbError;
use crate::state::Shared;

/// Drops a platform: its queue and script jobs go; its waiting workers are
/// told and disconnected; new work for it is refused until undropped.
pub fn drop(shared: &Arc<Shared>, platform: &str) -> Result<Reply, DbError> {
    if let Err(reason) = check_platform(platform) {
        return Ok(Err(reason));
    }
    let removed = shared.db.drop_platform(platform)?;
    shared.wake_platform(platform);
    shared.schedule_changed.notify_one();
    tracing::info!(platform, removed_jobs = removed, "platform dropped");
    Ok(Ok(Some(format!(
        "dropped {platform} (removed {removed} script job{})",
        if removed == 1 { "" } else { "s" }
    ))))
}

/// Accepts a dropped platform again.
pub fn undrop(shared: &Arc<Shared>, platform: &str) -> Result<Reply, DbError> {
    if !shared.db.undrop_platform(platform)? {
        return Ok(Err(format!("platform {platform} is not dropped")));
    }
    tracing::info!(platform, "platform undropped");
    Ok(Ok(None))
}
