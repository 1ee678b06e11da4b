//! Waiting for a job: one loop for both worker protocols. A worker asks
//! for its platform's queue and gets its head, or waits for a wake-up
//! (something queued, the platform dropped or undropped), serving its
//! connection meanwhile through [`Waiting`].

use std::future::Future;
use std::sync::Arc;

use protocol::message::Timestamp;
use tokio::time::Instant;

use crate::db::Running;
use crate::state::Shared;

/// What a worker protocol does while its worker waits for a job.
pub trait Waiting {
    /// Serves the connection until something happens on it (a heartbeat
    /// came or is due): `Ok(true)` to keep waiting, `Ok(false)` when the
    /// worker left. Dropped when a job arrives, so it must be cancel-safe.
    fn idle(&mut self) -> impl Future<Output = anyhow::Result<bool>> + Send;

    /// The platform is dropped: `Ok(true)` to wait until it is undropped,
    /// `Ok(false)` to end (the worker has been told).
    fn dropped(&mut self, platform: &str) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// Claims the head of `platform`'s queue for the worker `name`, waiting
/// for one. `None` when the worker left, the platform was dropped (and the
/// protocol ends then) or the server stops.
pub async fn wait_for_job(
    shared: &Arc<Shared>,
    platform: &str,
    name: &str,
    worker: &mut impl Waiting,
) -> anyhow::Result<Option<Running>> {
    let wakeup = shared.platform_wakeup(platform);
    loop {
        let notified = wakeup.notified();
        tokio::pin!(notified);
        // Register before looking, so an enqueue in between is not missed.
        notified.as_mut().enable();
        let dropped = shared
            .db
            .is_dropped(platform)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?;
        let retry = if dropped {
            if !worker.dropped(platform).await? {
                return Ok(None);
            }
            None
        } else {
            match claim(shared, platform, name).await? {
                Ok(Some(running)) => return Ok(Some(running)),
                Ok(None) => None,
                Err(retry) => Some(retry),
            }
        };
        loop {
            tokio::select! {
                _ = &mut notified => break,
                _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => break,
                alive = worker.idle() => if !alive? {
                    return Ok(None);
                },
                _ = shared.shutdown.cancelled() => return Ok(None),
            }
        }
    }
}

/// Claims the head of `platform`'s queue for `worker`. `Ok(Err(when))`
/// when the disk is full: no build can start, look again at `when`. Fails
/// when the state database is broken.
async fn claim(
    shared: &Arc<Shared>,
    platform: &str,
    worker: &str,
) -> anyhow::Result<Result<Option<Running>, Instant>> {
    // Draining for shutdown: hand out nothing, wait for the end.
    if shared.draining.is_cancelled() {
        return Ok(Ok(None));
    }
    let claimed = shared
        .db
        .claim(platform, worker, Timestamp::now())
        .await
        .map_err(|e| shared.refuse_or_stop(e));
    match claimed {
        Ok(running) => Ok(Ok(running)),
        Err(e) if e.is_disk_full() => Ok(Err(Instant::now() + shared.config.heartbeat)),
        Err(e) => Err(e.into()),
    }
}
