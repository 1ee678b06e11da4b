//! Gives memory back to the system after large frames.
//!
//! glibc keeps the memory a program frees for its next allocations: after
//! a few 15 MiB scripts were scheduled, the server stayed at 140 MB where
//! it idles at 9 MB. So once frames of [`protocol::codec::LARGE_FRAME`] or
//! more have been read or written ([`protocol::codec::large_frames`]), and
//! the work they came with is likely done, [`trim_after_large_frames`]
//! asks glibc to return its free pages (`malloc_trim(0)`).
//!
//! Rate-limited ([`Trimmer`]): at most once per [`CHECK_EVERY`], after
//! a quiet check with no new large frame; under a steady flood of large
//! frames, at most once per [`TRIM_AT_MOST_EVERY`]. Other allocators and
//! systems: nothing to do.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the large-frame count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The least time between two trims while large frames keep coming.
pub const TRIM_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// When to trim, given the large-frame count at each check.
#[derive(Debug)]
pub struct Trimmer {
    seen: u64,
    /// Since when large frames came without a trim after them.
    pending_since: Option<Instant>,
    last_trim: Option<Instant>,
}

impl Trimmer {
    /// Starts from the count now: what came before is not this one's.
    pub fn new(count: u64) -> Trimmer {
        Trimmer {
            seen: count,
            pending_since: None,
            last_trim: None,
        }
    }

    /// One check: `count` is [`protocol::codec::large_frames`] now. `true`:
    /// trim now.
    pub fn check(&mut self, count: u64, now: Instant) -> bool {
        let busy = count != self.seen;
        self.seen = count;
        if busy && self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
        let Some(since) = self.pending_since else {
            return false;
        };
        if !busy {
            // A quiet check after large frames: their work is done.
            self.pending_since = None;
            self.last_trim = Some(now);
            return true;
        }
        // Large frames keep coming: now and then all the same.
        let from = self.last_trim.map_or(since, |t| t.max(since));
        if now.duration_since(from) >= TRIM_AT_MOST_EVERY {
            self.last_trim = Some(now);
            return true;
        }
        false
    }
}

/// Trims the allocator's free memory after large frames (see the module
/// documentation) until `stop` is cancelled.
pub async fn trim_after_large_frames(stop: CancellationToken) {
    if !CAN_TRIM {
        return;
    }
    let mut trimmer = Trimmer::new(protocol::codec::large_frames());
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if trimmer.check(protocol::codec::large_frames(), Instant::now()) {
            // It walks every arena, holding its lock: off the runtime's
            // threads.
            let started = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::debug!(took = ?started.elapsed(), "gave free memory back after large frames");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const CAN_TRIM: bool = true;

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const CAN_TRIM: bool = false;

/// Returns the allocator's free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases memory malloc holds free; it is
    // thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_large_frames_stop_and_seldom_during_a_flood() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut t = Trimmer::new(5);
        // Nothing large since the start: nothing to do.
        assert!(!t.check(5, at(1)));
        // A large frame: not while its work may go on, but after a quiet
        // second, once.
        assert!(!t.check(6, at(2)));
        assert!(t.check(6, at(3)));
        assert!(!t.check(6, at(4)));
        assert!(!t.check(6, at(5)));
        // A flood: a new large frame at every check; one trim per 10 s.
        let trims: Vec<u64> = (6..60).filter(|s| t.check(100 + s, at(*s))).collect();
        assert_eq!(trims, [16, 26, 36, 46, 56]);
        // And one more once it stops.
        assert!(t.check(159, at(61)));
        assert!(!t.check(159, at(62)));
    }
}
