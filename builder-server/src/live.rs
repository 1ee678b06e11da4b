//! Builds being run: their console so far and the observers following them.
//!
//! The worker's handler appends console batches; the spool's writers
//! put them on disk ([`crate::spool`]). The newest lines also stay in
//! memory, at least those not on disk yet and at most about
//! [`RECENT_BYTES`] more, so the server's memory stays the same whatever
//! the console's size.
//!
//! Observers pull: each keeps its place in the console and reads the next
//! lines from memory when they are still there, from the spool otherwise,
//! and waits on a [`watch`] channel when it is up to date. So an observer
//! never slows the worker or the server, and a slow one catches up instead
//! of losing lines; it skips (and is told how many) only lines that
//! `--max-console-bytes` dropped from the spool.
//!
//! When the build is over, its record is written from the spool: observers
//! that are behind then replay the rest from the record.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::message::{BuildHeader, JobOutcome, OutputLine, Timestamp};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::spool::SharedMap;

/// Bytes of console lines that are on disk already and are still kept in
/// memory, for observers that follow closely.
pub const RECENT_BYTES: usize = 1024 * 1024;

/// Why and how a build went back to its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeue {
    /// The attempt that comes next (2 after the first lost worker).
    pub attempt: u32,
    /// Why the worker was lost.
    pub reason: String,
}

struct State {
    header: BuildHeader,
    /// Lines received in all.
    total: u64,
    /// The newest batches, each with the index of its first line.
    recent: VecDeque<(u64, Arc<[OutputLine]>)>,
    recent_bytes: usize,
    /// The console was handed over to be written into the record.
    taken: bool,
    end: Option<(Timestamp, JobOutcome)>,
    requeued: Option<Requeue>,
}

/// One build being run.
pub struct LiveBuild {
    state: Mutex<State>,
    spool: SharedMap,
    /// Bumped at every change observers wait for.
    changed: watch::Sender<u64>,
}

/// What an observer at line `from` does next ([`LiveBuild::next`]).
#[derive(Debug)]
pub enum Next {
    /// Send these lines (from memory), which start at `from`.
    Lines(Vec<OutputLine>),
    /// Line `from` is no longer in memory: read it from the spool; lines
    /// from `recent` on are in memory.
    Spool {
        /// The first line in memory.
        recent: u64,
    },
    /// Up to date: wait for a change.
    Wait,
    /// The build is over, and every line was seen.
    End(Timestamp, JobOutcome),
    /// This attempt is over: the build went back to its queue.
    Requeued(Requeue),
    /// The console went into the record, which holds line `from` on once
    /// the build is over.
    Taken,
}

fn batch_bytes(lines: &[OutputLine]) -> usize {
    lines
        .iter()
        .map(|l| l.data.len() + std::mem::size_of::<OutputLine>())
        .sum()
}

impl LiveBuild {
    /// A build that was just handed to a worker; its console's spool is
    /// found through `spool`.
    pub fn new(header: BuildHeader, spool: SharedMap) -> Arc<LiveBuild> {
        Arc::new(LiveBuild {
            state: Mutex::new(State {
                header,
                total: 0,
                recent: VecDeque::new(),
                recent_bytes: 0,
                taken: false,
                end: None,
                requeued: None,
            }),
            spool,
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Where the console's spool is, for observers reading from it.
    pub fn spool(&self) -> &SharedMap {
        &self.spool
    }

    /// The build's header.
    pub fn header(&self) -> BuildHeader {
        self.lock().header.clone()
    }

    /// Appends console lines for observers; returns them shared, for the
    /// spool (`None` when there are none).
    pub fn push(&self, lines: Vec<OutputLine>) -> Option<Arc<[OutputLine]>> {
        if lines.is_empty() {
            return None;
        }
        let batch: Arc<[OutputLine]> = lines.into();
        // What the writer has on disk: only that may leave memory.
        let readable = self
            .spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .readable();
        {
            let mut state = self.lock();
            let first = state.total;
            state.total += batch.len() as u64;
            state.recent_bytes += batch_bytes(&batch);
            state.recent.push_back((first, batch.clone()));
            while state.recent_bytes > RECENT_BYTES {
                let Some((first, old)) = state.recent.front() else {
                    break;
                };
                if first + old.len() as u64 > readable {
                    break;
                }
                let bytes = batch_bytes(old);
                state.recent.pop_front();
                state.recent_bytes -= bytes;
            }
        }
        self.bump();
        Some(batch)
    }

    /// Marks the build over and tells observers.
    pub fn finish(&self, finished: Timestamp, outcome: JobOutcome) {
        self.lock().end = Some((finished, outcome));
        self.bump();
    }

    /// Marks this attempt over: the build went back to its queue.
    pub fn requeued(&self, requeue: Requeue) {
        self.lock().requeued = Some(requeue);
        self.bump();
    }

    /// The console goes into the record: observers that are behind read
    /// the rest from there. Its memory goes.
    pub fn take_console(&self) {
        let mut state = self.lock();
        state.taken = true;
        state.recent.clear();
        state.recent_bytes = 0;
        drop(state);
        self.bump();
    }

    /// Changes from now on, for an observer; subscribe before calling
    /// [`LiveBuild::next`], so no change in between is missed.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What an observer whose next line is `from` does next; at most `max`
    /// lines at a time.
    pub fn next(&self, from: u64, max: usize) -> Next {
        let state = self.lock();
        if from < state.total {
            if state.taken {
                return Next::Taken;
            }
            let recent = state
                .recent
                .front()
                .map_or(state.total, |(first, _)| *first);
            if from < recent {
                return Next::Spool { recent };
            }
            let mut lines = Vec::new();
            for (first, batch) in &state.recent {
                let end = first + batch.len() as u64;
                if end <= from {
                    continue;
                }
                let skip = from.saturating_sub(*first) as usize;
                let room = max - lines.len();
                lines.extend(batch[skip..].iter().take(room).cloned());
                if lines.len() >= max {
                    break;
                }
            }
            return Next::Lines(lines);
        }
        if let Some(requeue) = &state.requeued {
            return Next::Requeued(requeue.clone());
        }
        match &state.end {
            Some((finished, outcome)) => Next::End(*finished, outcome.clone()),
            None => Next::Wait,
        }
    }

    /// How many observers follow the build.
    pub fn observers(&self) -> usize {
        self.changed.receiver_count()
    }

    /// How many lines so far.
    pub fn line_count(&self) -> u64 {
        self.lock().total
    }
}

/// How many build starts a waiting observer may fall behind (it then
/// looks again rather than missing one).
const STARTS_BUFFER: usize = 64;

/// Every build being run, by UUID.
pub struct LiveBuilds {
    builds: Mutex<HashMap<Uuid, Arc<LiveBuild>>>,
    starts: broadcast::Sender<BuildHeader>,
}

impl Default for LiveBuilds {
    fn default() -> LiveBuilds {
        LiveBuilds {
            builds: Mutex::default(),
            starts: broadcast::channel(STARTS_BUFFER).0,
        }
    }
}

impl LiveBuilds {
    /// Builds starting from now on (each attempt of a requeued build too),
    /// for observers waiting for one.
    pub fn subscribe_starts(&self) -> broadcast::Receiver<BuildHeader> {
        self.starts.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<LiveBuild>>> {
        self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a build and tells those waiting for it.
    pub fn insert(&self, uuid: Uuid, build: Arc<LiveBuild>) {
        let header = build.header();
        self.lock().insert(uuid, build);
        let _ = self.starts.send(header);
    }

    /// Forgets an attempt of a build, unless a later attempt (same UUID)
    /// has replaced it already.
    pub fn remove(&self, uuid: Uuid, build: &Arc<LiveBuild>) {
        let mut builds = self.lock();
        if builds.get(&uuid).is_some_and(|b| Arc::ptr_eq(b, build)) {
            builds.remove(&uuid);
        }
    }

    /// How many observers follow the running builds.
    pub fn observers(&self) -> usize {
        self.lock().values().map(|b| b.observers()).sum()
    }

    /// How many builds are running.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no build is running.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
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

    fn line(n: u64) -> OutputLine {
        OutputLine {
            delta_ns: n as i64,
            data: vec![n as u8; 1000],
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
    fn an_observer_gets_lines_from_memory_then_waits_then_the_end() {
        let build = LiveBuild::new(header(), SharedMap::default());
        build.push(vec![line(0), line(1)]);
        let mut changes = build.watch();
        assert!(matches!(build.next(0, 10), Next::Lines(l) if l == vec![line(0), line(1)]));
        assert!(matches!(build.next(1, 10), Next::Lines(l) if l == vec![line(1)]));
        assert!(matches!(build.next(2, 10), Next::Wait));
        build.push(vec![line(2)]);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(matches!(build.next(2, 10), Next::Lines(l) if l == vec![line(2)]));
        build.finish(Timestamp(9), JobOutcome::Exited(0));
        assert!(changes.has_changed().unwrap());
        assert!(matches!(
            build.next(3, 10),
            Next::End(Timestamp(9), JobOutcome::Exited(0))
        ));
    }

    #[test]
    fn memory_keeps_every_line_not_on_disk_and_a_bounded_window_of_the_rest() {
        let map = SharedMap::default();
        let build = LiveBuild::new(header(), map.clone());
        let n = 3 * RECENT_BYTES as u64 / 1000;
        for i in 0..n {
            build.push(vec![line(i)]);
        }
        // Nothing is on disk (no writer): everything stays.
        assert!(matches!(build.next(0, 1), Next::Lines(_)));
        // Now a writer has it all on disk: the oldest leave memory.
        let dir = tempfile::tempdir().unwrap();
        let mut writer =
            crate::spool::ConsoleWriter::new(dir.path().join("c"), usize::MAX, map.clone());
        writer
            .append(&(0..n).map(line).collect::<Vec<_>>())
            .unwrap();
        writer.publish().unwrap();
        build.push(vec![line(n)]);
        match build.next(0, 1) {
            Next::Spool { recent } => {
                assert!(recent > n / 2, "{recent}");
                assert!(matches!(build.next(recent, 1), Next::Lines(l) if l == vec![line(recent)]));
                assert!(matches!(
                    crate::spool::read_lines(&map, 0, 2).unwrap(),
                    crate::spool::SpoolRead::Lines(l) if l == vec![line(0), line(1)]
                ));
            }
            other => panic!("{other:?}"),
        }
        build.take_console();
        assert!(matches!(build.next(0, 1), Next::Taken));
    }
}
