//! `cancel UUID`: a running build's worker kills it, and it is recorded as
//! aborted; a queued build leaves its queue and is recorded cancelled (an
//! index entry without a record, see [`crate::db::ends`]).

use std::sync::Arc;

use uuid::Uuid;

use super::Reply;
use crate::db::DbError;
use crate::state::Shared;

/// Stops the build `uuid`, running or queued.
pub async fn cancel(shared: &Arc<Shared>, uuid: Uuid) -> Result<Reply, DbError> {
    if shared.workers.cancel(uuid, "cancelled") {
        return Ok(Ok(Some(format!("cancelling {uuid}"))));
    }
    match shared.db.cancel_queued(uuid, "cancelled").await? {
        Some(c) => {
            tracing::info!(job = c.job, %uuid, platform = c.platform, "queued build cancelled");
            crate::build::finish::remove_empty_job_dir(shared, &c.job).await;
            Ok(Ok(Some(format!(
                "cancelled {uuid} (it was queued on {})",
                c.platform
            ))))
        }
        None => Ok(Err(format!("no running or queued build {uuid}"))),
    }
}
