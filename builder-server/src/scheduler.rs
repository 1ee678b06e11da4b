//! Queues scheduled jobs when they are due.
//!
//! One task sleeps until the earliest next run in the schedule (re-armed
//! whenever the schedule changes, and at least once a minute in case the
//! wall clock jumps), then queues every due job once — however many runs it
//! missed while the server was down — and moves its next run to the next
//! slot in phase (see [`protocol::trigger::Trigger::next_after`]).

use std::sync::Arc;
use std::time::Duration;

use protocol::message::{JobKind, JobSpec, Timestamp};
use protocol::trigger::Trigger;

use crate::db::DbError;
use crate::state::Shared;

/// The longest the scheduler sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The scheduler task.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let changed = shared.schedule_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if queue_due(&shared, Timestamp::now()).is_err() {
            return; // fatal, already reported
        }
        let next = match shared.db.earliest_next_run() {
            Ok(next) => next,
            Err(e) => {
                shared.fatal(e);
                return;
            }
        };
        let sleep = next.map_or(MAX_SLEEP, |t| t.since(Timestamp::now()).min(MAX_SLEEP));
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Queues every job due at `now` and wakes the workers of the platforms that
/// got work.
pub fn queue_due(shared: &Shared, now: Timestamp) -> Result<(), DbError> {
    let platforms = shared
        .db
        .queue_due(
            now,
            next_run,
            |job| scripts(shared, job),
            shared.config.job_timeout.as_secs(),
        )
        .map_err(|e| shared.fatal(e))?;
    for platform in platforms {
        shared.wake_platform(&platform);
    }
    Ok(())
}

/// The next run after `now` of a job whose last scheduled run was
/// `scheduled`.
pub fn next_run(trigger: &Trigger, scheduled: Timestamp, now: Timestamp) -> Option<Timestamp> {
    trigger
        .next_after(scheduled.to_datetime(), now.to_datetime())
        .map(Timestamp::from_datetime)
}

/// The `(platform, script)` pairs a job is queued as: a script job on its
/// platform, an orb-build job on every platform with a template.
pub fn scripts(shared: &Shared, job: &JobSpec) -> Vec<(String, String)> {
    match &job.kind {
        JobKind::Script { platform, script } => vec![(platform.clone(), script.clone())],
        JobKind::Orb { opam_package } => shared.templates.render_all(opam_package),
    }
}
