//! Builds being run: their console so far and the observers following them.
//!
//! The worker's handler appends lines; observers replay the lines so far and
//! then follow a bounded broadcast channel. An observer that falls more than
//! [`OBSERVER_BUFFER`] batches behind loses lines (and is told how many); the
//! worker and the server never wait for it.
//!
//! A build's console is held in memory until its record is written, within a
//! limit (`--max-console-bytes`): the first half of the limit is kept from
//! the start of the console and the second half from its end; lines in
//! between are dropped and the record says how many, in a line where they
//! were. Build logs fail at their end, so the end is what is kept. When the
//! build is over, the console moves into its record (it is not copied):
//! observers that come while the record is written wait for it and replay it.

use std::collections::{HashMap, VecDeque};
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
    /// The build lost its worker and went back to its queue, under the same
    /// UUID; its next attempt is a new [`LiveBuild`].
    Requeued(Requeue),
}

/// Why and how a build went back to its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeue {
    /// The attempt that comes next (2 after the first lost worker).
    pub attempt: u32,
    /// Why the worker was lost.
    pub reason: String,
}

/// Bytes a line costs in memory beyond its data.
const LINE_OVERHEAD: usize = 48;

struct State {
    header: BuildHeader,
    /// Lines from the start of the console, up to half the limit; observers
    /// replay these.
    head: Vec<OutputLine>,
    head_bytes: usize,
    /// The newest lines once the head is full, up to half the limit.
    tail: VecDeque<OutputLine>,
    tail_bytes: usize,
    /// Lines received in all.
    total: u64,
    /// Lines dropped between head and tail, and their bytes.
    dropped: (u64, u64),
    limit: usize,
    /// The console was moved out to be written into the record.
    taken: bool,
    end: Option<(Timestamp, JobOutcome)>,
    requeued: Option<Requeue>,
    tx: broadcast::Sender<LiveEvent>,
}

impl State {
    /// Keeps one more line: in the head while it has room, else in the
    /// tail, dropping the tail's oldest lines beyond half the limit.
    fn keep(&mut self, line: OutputLine) {
        self.total += 1;
        let half = self.limit / 2;
        let cost = line.data.len() + LINE_OVERHEAD;
        if self.tail.is_empty() && self.head_bytes + cost <= half {
            self.head_bytes += cost;
            self.head.push(line);
            return;
        }
        self.tail_bytes += cost;
        self.tail.push_back(line);
        while self.tail_bytes > half {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.data.len() + LINE_OVERHEAD;
            self.dropped.0 += 1;
            self.dropped.1 += old.data.len() as u64;
        }
    }
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
    /// arrive on `events` (lines between `backlog` and the first event's
    /// index were dropped by the console limit).
    pub backlog: u64,
    /// The end, if the build is already over.
    pub end: Option<(Timestamp, JobOutcome)>,
    /// Set if this attempt is over because its worker was lost.
    pub requeued: Option<Requeue>,
    /// The console is being written into the record: there is no backlog
    /// to replay; the record holds it once `events` says the build is over.
    pub taken: bool,
    /// Later lines and the end.
    pub events: broadcast::Receiver<LiveEvent>,
}

impl LiveBuild {
    /// A build that was just handed to a worker; its console is kept within
    /// `limit` bytes.
    pub fn new(header: BuildHeader, limit: usize) -> Arc<LiveBuild> {
        let (tx, _) = broadcast::channel(OBSERVER_BUFFER);
        Arc::new(LiveBuild {
            state: Mutex::new(State {
                header,
                head: Vec::new(),
                head_bytes: 0,
                tail: VecDeque::new(),
                tail_bytes: 0,
                total: 0,
                dropped: (0, 0),
                limit,
                taken: false,
                end: None,
                requeued: None,
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
        // (Subscribing takes the lock too: no observer comes in between.)
        if state.tx.receiver_count() == 0 {
            // Nobody is watching: the lines move in, nothing is copied.
            for line in lines {
                state.keep(line);
            }
            return;
        }
        let first = state.total;
        let shared: Arc<[OutputLine]> = lines.into();
        for line in shared.iter() {
            state.keep(line.clone());
        }
        // Observers that left meanwhile are fine to miss it.
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

    /// Marks this attempt over: the build went back to its queue.
    pub fn requeued(&self, requeue: Requeue) {
        let mut state = self.lock();
        state.requeued = Some(requeue.clone());
        let _ = state.tx.send(LiveEvent::Requeued(requeue));
    }

    /// Subscribes an observer.
    pub fn subscribe(&self) -> Subscription {
        let state = self.lock();
        Subscription {
            header: state.header.clone(),
            backlog: state.head.len() as u64,
            end: state.end.clone(),
            requeued: state.requeued.clone(),
            taken: state.taken,
            events: state.tx.subscribe(),
        }
    }

    /// Copies lines `from..to` of the console's start (clamped), for
    /// replaying the backlog in pieces.
    pub fn lines(&self, from: u64, to: u64) -> Vec<OutputLine> {
        let state = self.lock();
        let to = (to as usize).min(state.head.len());
        let from = (from as usize).min(to);
        state.head[from..to].to_vec()
    }

    /// Moves the console out for the record, oldest first: the start, a
    /// line saying how much was dropped (if anything was), the end. Later
    /// calls, and observers that subscribe from now on, get no lines.
    pub fn take_console(&self) -> Vec<OutputLine> {
        let mut state = self.lock();
        let state = &mut *state;
        state.taken = true;
        let mut console = std::mem::take(&mut state.head);
        state.head_bytes = 0;
        console.reserve_exact(state.tail.len() + 1);
        if state.dropped.0 > 0 {
            let (lines, bytes) = std::mem::take(&mut state.dropped);
            let delta_ns = state.tail.front().map_or(0, |l| l.delta_ns);
            console.push(OutputLine {
                delta_ns,
                data: format!(
                    "[builder: {lines} console lines ({bytes} bytes) dropped here: the console exceeded the server's limit of {} bytes]",
                    state.limit
                )
                .into_bytes(),
            });
        }
        console.extend(state.tail.drain(..));
        state.tail_bytes = 0;
        console
    }

    /// How many observers follow the build.
    pub fn observers(&self) -> usize {
        self.lock().tx.receiver_count()
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
        let build = LiveBuild::new(header(), usize::MAX);
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
        let build = LiveBuild::new(header(), usize::MAX);
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

    #[test]
    fn the_console_keeps_its_start_and_end_within_the_limit() {
        let big = |i: u32| OutputLine {
            delta_ns: i.into(),
            data: format!("{i:052}").into_bytes(), // 52 + 48 = 100 bytes each
        };
        let build = LiveBuild::new(header(), 1000);
        for i in 0..20 {
            build.push(vec![big(i)]);
        }
        assert_eq!(build.line_count(), 20);
        let console = build.take_console();
        let texts: Vec<String> = console
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect();
        assert_eq!(texts.len(), 11);
        assert_eq!(
            &texts[..5],
            (0..5).map(|i| format!("{i:052}")).collect::<Vec<_>>()
        );
        assert!(
            texts[5].contains("10 console lines (520 bytes) dropped"),
            "{}",
            texts[5]
        );
        assert_eq!(
            &texts[6..],
            (15..20).map(|i| format!("{i:052}")).collect::<Vec<_>>()
        );

        // The console moved out: nothing is left to copy or replay.
        let sub = build.subscribe();
        assert!(sub.taken);
        assert_eq!(sub.backlog, 0);
        assert!(build.take_console().is_empty());
    }

    #[test]
    fn a_late_observer_replays_the_start_and_learns_of_the_gap() {
        let build = LiveBuild::new(header(), 2 * (1 + LINE_OVERHEAD) * 3);
        for i in 0..10 {
            build.push(vec![line(i)]);
        }
        let sub = build.subscribe();
        assert!(!sub.taken);
        assert_eq!(sub.backlog, 3);
        assert_eq!(build.lines(0, 100), vec![line(0), line(1), line(2)]);
        assert_eq!(build.line_count(), 10);
    }
}
