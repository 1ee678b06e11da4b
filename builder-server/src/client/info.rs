//! `info`: schedule, queues, running builds, dropped platforms, workers.

use std::sync::Arc;

use protocol::message::{Info, QueueInfo};

use crate::db::DbError;
use crate::state::Shared;

/// The server's state as `info` shows it.
pub fn info(shared: &Arc<Shared>) -> Result<Info, DbError> {
    let workers = shared.workers.list();
    let mut queues = shared.db.queues()?;
    // A platform with workers but nothing queued still gets a (empty) line.
    for w in &workers {
        if !queues.iter().any(|q| q.platform == w.platform) {
            queues.push(QueueInfo {
                platform: w.platform.clone(),
                jobs: Vec::new(),
            });
        }
    }
    queues.sort_by(|a, b| a.platform.cmp(&b.platform));
    Ok(Info {
        schedule: shared.db.jobs()?,
        queues,
        running: shared.db.running_info()?,
        dropped_platforms: shared.db.dropped_platforms()?,
        workers,
    })
}
