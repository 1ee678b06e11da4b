//! Builds being run: their console so far and the observers following them.
//!
//! The worker's handler appends lines; observers replay the lines so far and
//! then follow a bounded broadcast channel. An observer that falls more than
//! [`OBSERVER_BUFFER`] batches behind loses lines (and is told how many); the
//! worker and the server never wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::message::{BuildHeader, JobOutcome, OutputLine, Timestamp};
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many console batches an observer may fall behind before it loses
/// lines.
pub const OBSERVER_BUFFER: usize = 256;

/// Something that happened to a live build after an observer subscribed.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Lines `first..first + lines.len()` of the console.
    Lines {
        /// Index of the first line in the build's console.
        first: u64,
        /// The lines.
        lines: Arc<[OutputLine]>,
    },
    /// The build is over.
    End {
        /// When.
        finished: Timestamp,
        /// How.
        outcome: JobOutcome,
    },
}

struct State {
    header: BuildHeader,
    lines: Vec<OutputLine>,
    end: Option<(Timestamp, JobOutcome)>,
    tx: broadcast::Sender<LiveEvent>,
}

/// One build being run.
pub struct LiveBuild {
    state: Mutex<State>,
}

/// What an observer gets when it subscribes.
pub struct Subscription {
    /// Which build.
    pub header: BuildHeader,
    /// Lines `0..backlog` are read with [`LiveBuild::lines`]; later ones
    /// arrive on `events`.
    pub backlog: u64,
    /// The end, if the build is already over.
    pub end: Option<(Timestamp, JobOutcome)>,
    /// Later lines and the end.
    pub events: broadcast::Receiver<LiveEvent>,
}

impl LiveBuild {
    /// A build that was just handed to a worker.
    pub fn new(header: BuildHeader) -> Arc<LiveBuild> {
        let (tx, _) = broadcast::channel(OBSERVER_BUFFER);
        Arc::new(LiveBuild {
            state: Mutex::new(State {
                header,
                lines: Vec::new(),
                end: None,
                tx,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker reported when the job really started.
    pub fn set_started(&self, at: Timestamp) {
        self.lock().header.started = at;
    }

    /// The build's header.
    pub fn header(&self) -> BuildHeader {
        self.lock().header.clone()
    }

    /// Appends console lines and passes them to observers.
    pub fn push(&self, lines: Vec<OutputLine>) {
        if lines.is_empty() {
            return;
        }
        let mut state = self.lock();
        let first = state.lines.len() as u64;
        let shared: Arc<[OutputLine]> = lines.into();
        state.lines.extend(shared.iter().cloned());
        // No receivers is fine: nobody is watching.
        let _ = state.tx.send(LiveEvent::Lines {
            first,
            lines: shared,
        });
    }

    /// Marks the build over and tells observers.
    pub fn finish(&self, finished: Timestamp, outcome: JobOutcome) {
        let mut state = self.lock();
        state.end = Some((finished, outcome.clone()));
        let _ = state.tx.send(LiveEvent::End { finished, outcome });
    }

    /// Subscribes an observer.
    pub fn subscribe(&self) -> Subscription {
        let state = self.lock();
        Subscription {
            header: state.header.clone(),
            backlog: state.lines.len() as u64,
            end: state.end.clone(),
            events: state.tx.subscribe(),
        }
    }

    /// Copies lines `from..to` (clamped), for replaying the backlog in pieces.
    pub fn lines(&self, from: u64, to: u64) -> Vec<OutputLine> {
        let state = self.lock();
        let to = (to as usize).min(state.lines.len());
        let from = (from as usize).min(to);
        state.lines[from..to].to_vec()
    }

    /// Takes the whole console out (oldest first), for the build record.
    /// Observers still following get the end through their channel.
    pub fn take_console(&self) -> Vec<OutputLine> {
        std::mem::take(&mut self.lock().lines)
    }

    /// How many lines so far.
    pub fn line_count(&self) -> u64 {
        self.lock().lines.len() as u64
    }
}

/// Every build being run, by UUID.
#[derive(Default)]
pub struct LiveBuilds {
    builds: Mutex<HashMap<Uuid, Arc<LiveBuild>>>,
}

impl LiveBuilds {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<LiveBuild>>> {
        self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a build.
    pub fn insert(&self, uuid: Uuid, build: Arc<LiveBuild>) {
        self.lock().insert(uuid, build);
    }

    /// Forgets a build.
    pub fn remove(&self, uuid: Uuid) {
        self.lock().remove(&uuid);
    }

    /// A build by UUID.
    pub fn get(&self, uuid: Uuid) -> Option<Arc<LiveBuild>> {
        self.lock().get(&uuid).cloned()
    }

    /// The most recently started build matching the filters.
    pub fn latest(&self, platform: Option<&str>, job: Option<&str>) -> Option<(Uuid, Timestamp)> {
        self.lock()
            .iter()
            .map(|(uuid, build)| (*uuid, build.header()))
            .filter(|(_, h)| {
                platform.is_none_or(|p| h.platform == p) && job.is_none_or(|j| h.job == j)
            })
            .max_by_key(|(_, h)| h.started)
            .map(|(uuid, h)| (uuid, h.started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u8) -> OutputLine {
        OutputLine {
            delta_ns: n.into(),
            data: vec![n],
        }
    }

    fn header() -> BuildHeader {
        BuildHeader {
            uuid: Uuid::nil(),
            job: "j".into(),
            platform: "p".into(),
            started: Timestamp(0),
        }
    }

    #[test]
    fn subscriber_sees_backlog_then_live_lines_without_gap_or_overlap() {
        let build = LiveBuild::new(header());
        build.push(vec![line(0), line(1)]);
        let mut sub = build.subscribe();
        build.push(vec![line(2)]);
        build.finish(Timestamp(9), JobOutcome::Exited(0));
        assert_eq!(sub.backlog, 2);
        assert_eq!(build.lines(0, sub.backlog), vec![line(0), line(1)]);
        match sub.events.try_recv().unwrap() {
            LiveEvent::Lines { first, lines } => {
                assert_eq!(first, 2);
                assert_eq!(&lines[..], &[line(2)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            sub.events.try_recv().unwrap(),
            LiveEvent::End { .. }
        ));
    }

    #[test]
    fn a_slow_subscriber_lags_instead_of_blocking() {
        let build = LiveBuild::new(header());
        let mut sub = build.subscribe();
        for i in 0..(OBSERVER_BUFFER + 10) {
            build.push(vec![line(i as u8)]);
        }
        assert!(matches!(
            sub.events.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
        assert_eq!(build.line_count(), OBSERVER_BUFFER as u64 + 10);
    }
}
