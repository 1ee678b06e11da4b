//! `info`: schedule (without scripts), queues, running builds, dropped
//! platforms, workers; streamed in parts that each fit the frame limit.
//! `show NAME`: one job with its script.

use std::sync::Arc;

use protocol::info::{InfoSummary, INFO_PART_BYTES};
use protocol::message::{JobSummary, QueueInfo, ServerToClient};

use crate::db::DbError;
use crate::state::Shared;

/// The server's state as `info` shows it, as the messages of the answer:
/// parts of at most [`INFO_PART_BYTES`] (or the frame limit, if smaller),
/// then the end marker.
pub async fn info(shared: &Arc<Shared>) -> Result<Vec<ServerToClient>, DbError> {
    let workers = shared.workers.list();
    let mut queues = shared.db.queues().await?;
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
    let summary = InfoSummary {
        schedule: shared
            .db
            .jobs()
            .await?
            .iter()
            .map(JobSummary::from)
            .collect(),
        queues,
        running: shared.db.running_info().await?,
        dropped_platforms: shared.db.dropped_platforms().await?,
        workers,
    };
    let budget = INFO_PART_BYTES.min(shared.config.max_frame);
    Ok(summary.into_answer(budget))
}

/// One job with its script, or why not.
pub async fn show(shared: &Arc<Shared>, name: &str) -> Result<ServerToClient, DbError> {
    Ok(match shared.db.job(name).await? {
        Some(entry) => ServerToClient::Job(entry),
        None => ServerToClient::Failure {
            reason: format!("no job named {name}"),
        },
    })
}
