//! `results [--job NAME] [--limit N]`: recent builds with upload state.

use std::sync::Arc;

use protocol::message::ResultEntry;

use crate::db::DbError;
use crate::state::Shared;

/// The most a single `results` answer lists.
const MAX_LIMIT: u32 = 10_000;

/// Recent builds, newest first.
pub async fn results(
    shared: &Arc<Shared>,
    job: Option<&str>,
    limit: u32,
) -> Result<Vec<ResultEntry>, DbError> {
    shared.db.results(job, limit.min(MAX_LIMIT)).await
}
