//! The messages servers, workers and clients exchange.
//!
//! Every message is one frame (see [`crate::codec`]) whose payload is the
//! message encoded with bincode 2 (serde integration, standard configuration).
//!
//! A conversation:
//!
//! 1. The connecting side sends a [`Hello`] naming its role, the protocol
//!    version and an optional token. The server answers with
//!    [`HelloReply::Welcome`] or [`HelloReply::Refused`] (and closes).
//! 2. A client then sends [`ClientRequest`]s and reads [`ServerToClient`]
//!    answers; a worker sends [`WorkerMessage`]s and reads
//!    [`ServerToWorker`]s.
//!
//! Compatibility rules: [`Hello`] keeps `version` as its first field forever,
//! so a server can name the version of a peer it cannot understand. Enum
//! variants are only ever appended, and every change to any message bumps
//! [`PROTOCOL_VERSION`]. Byte-exact sample frames are checked in under
//! `protocol/tests/frames/` and must keep decoding.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::signal::Signal;
use crate::trigger::Trigger;

/// The wire protocol version. Bumped on every message change.
///
/// - 1: the first version.
/// - 2: `info` leaves scripts out and is streamed in parts
///   ([`ServerToClient::InfoPart`] .. [`ServerToClient::InfoEnd`]);
///   [`ClientRequest::Show`] answers one job with its script
///   ([`ServerToClient::Job`]).
///   Also [`ClientRequest::Update`], [`ClientRequest::ExecuteObserve`],
///   [`ClientRequest::ObserveNext`], [`ClientRequest::Fetch`] with
///   [`ServerToClient::Notice`], [`ServerToClient::RecordStart`] and
///   [`ServerToClient::RecordChunk`]; a build's UUID is given when it is
///   queued, and results count attempts.
pub const PROTOCOL_VERSION: u32 = 2;

/// A point in time: nanoseconds since the Unix epoch, UTC.
///
/// Covers 1677..2262, which is plenty for a build farm's clock.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// Converts to a chrono time (for display and the build record).
    pub fn to_datetime(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_nanos(self.0)
    }

    /// Converts from a chrono time, saturating outside the representable range.
    pub fn from_datetime(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
        Timestamp(t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        }))
    }

    /// Whole seconds since the epoch.
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let ns = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ns))
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            self.to_datetime()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

// ---------------------------------------------------------------------------
// Hello

/// The first frame on every connection, from the connecting side.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender. Always the first field.
    pub version: u32,
    /// Who is connecting.
    pub role: Role,
    /// The shared secret for this role, if the server requires one.
    pub token: Option<String>,
    /// Free-form software name and version, for logs (`builder-worker 0.1.0`).
    pub software: String,
}

/// Who is connecting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `builder-client`: changes and observes the schedule.
    Client,
    /// `builder-worker`: runs jobs of one platform.
    Worker {
        /// The platform whose queue this worker serves.
        platform: String,
        /// The worker's host name, for `info` and logs.
        host: String,
    },
}

/// The server's answer to a [`Hello`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum HelloReply {
    /// Accepted; the conversation goes on.
    Welcome(ServerHello),
    /// Refused (unknown version, bad token, dropped platform, ...); the
    /// server closes the connection after sending this.
    Refused {
        /// One line saying why.
        reason: String,
    },
}

/// What the server tells a peer it accepted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The server's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Free-form software name and version.
    pub software: String,
    /// How often each side sends [`WorkerMessage::Heartbeat`] /
    /// [`ServerToWorker::Heartbeat`] on a worker connection, in milliseconds.
    /// A side silent for three intervals is considered lost.
    pub heartbeat_ms: u64,
}

// ---------------------------------------------------------------------------
// Jobs

/// A job as it is scheduled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// Unique name of the job.
    pub name: String,
    /// What it runs.
    pub kind: JobKind,
}

/// What a job runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A shell script for one platform.
    Script {
        /// The platform whose workers run it.
        platform: String,
        /// The script (`script.sh` on the worker).
        script: String,
    },
    /// An opam package built with orb on every platform that has a template
    /// (`orb-build.template.<platform>` in the server's config directory).
    Orb {
        /// The opam package name.
        opam_package: String,
    },
}

/// A job handed to a worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobAssignment {
    /// Identifies this run (and its record, `DIR/<name>/<uuid>/full`).
    pub uuid: Uuid,
    /// The job's name.
    pub name: String,
    /// The platform it runs on.
    pub platform: String,
    /// The script to run.
    pub script: String,
    /// The worker kills the job after this many seconds (outcome `timeout`).
    pub timeout_secs: u64,
}

/// The longest console line a worker sends, in bytes: a longer line is
/// split into pieces of this size by the worker, and cut here by the server
/// if a worker does not.
pub const MAX_CONSOLE_LINE: usize = 64 * 1024;

/// One line of console output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    /// Nanoseconds since the job started.
    pub delta_ns: i64,
    /// The line's bytes without its newline; not necessarily UTF-8.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// How a job ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The script exited with this code.
    Exited(i32),
    /// The script was killed by this signal.
    Signalled(Signal),
    /// The script was stopped by this signal.
    Stopped(Signal),
    /// The job did not run to its end: `timeout`, `cancelled`,
    /// `worker lost 3 times`, or why the worker could not run it.
    Aborted(String),
}

impl JobOutcome {
    /// True only for `Exited(0)`.
    pub fn is_success(&self) -> bool {
        matches!(self, JobOutcome::Exited(0))
    }

    /// The exit status a command-line tool uses to report this outcome: the
    /// job's own exit code when it fits in one (0..=255), otherwise 1; a
    /// signal or an abort is always 1, never 0.
    pub fn exit_status(&self) -> u8 {
        match self {
            JobOutcome::Exited(code) => u8::try_from(*code).unwrap_or(1),
            JobOutcome::Signalled(_) | JobOutcome::Stopped(_) | JobOutcome::Aborted(_) => 1,
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobOutcome::Exited(code) => write_outcome(f, OutcomeText::Exited(code)),
            JobOutcome::Signalled(sig) => write_outcome(f, OutcomeText::Signalled(sig)),
            JobOutcome::Stopped(sig) => write_outcome(f, OutcomeText::Stopped(sig)),
            JobOutcome::Aborted(msg) => write_outcome(f, OutcomeText::Aborted(msg)),
        }
    }
}

/// The parts of an outcome's text, so that [`JobOutcome`] and the build
/// record's `ExecResult` (whose exit code is wider) share one wording.
pub(crate) enum OutcomeText<'a> {
    Exited(&'a dyn fmt::Display),
    Signalled(&'a dyn fmt::Display),
    Stopped(&'a dyn fmt::Display),
    Aborted(&'a dyn fmt::Display),
}

/// The one wording of how a build ended, shown by every program:
/// `exited 0`, `killed by SIGKILL`, `stopped by SIGSTOP`, `aborted: timeout`
/// (the reference client's words).
pub(crate) fn write_outcome(f: &mut fmt::Formatter<'_>, o: OutcomeText<'_>) -> fmt::Result {
    match o {
        OutcomeText::Exited(code) => write!(f, "exited {code}"),
        OutcomeText::Signalled(sig) => write!(f, "killed by {sig}"),
        OutcomeText::Stopped(sig) => write!(f, "stopped by {sig}"),
        OutcomeText::Aborted(msg) => write!(f, "aborted: {msg}"),
    }
}

// ---------------------------------------------------------------------------
// Worker <-> server

/// From a worker to the server, after the hello.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WorkerMessage {
    /// Ready for a job of the hello's platform; the server answers with
    /// [`ServerToWorker::Job`] when one is queued.
    RequestJob,
    /// Sent every heartbeat interval whatever else happens.
    Heartbeat,
    /// The job's process started at this time (console deltas count from it).
    Started {
        /// Which job.
        uuid: Uuid,
        /// When the script was started.
        at: Timestamp,
    },
    /// Console lines, in order of arrival (oldest first).
    Console {
        /// Which job.
        uuid: Uuid,
        /// The lines.
        lines: Vec<OutputLine>,
    },
    /// An artifact follows as [`WorkerMessage::ArtifactChunk`]s whose sizes
    /// add up to exactly `len`.
    ArtifactStart {
        /// Which job.
        uuid: Uuid,
        /// Path relative to the job directory, `/`-separated, never `..`.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        /// Total size in bytes.
        len: u64,
    },
    /// Part of the current artifact.
    ArtifactChunk {
        /// Which job.
        uuid: Uuid,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The job is over; every artifact has been sent.
    Finished {
        /// Which job.
        uuid: Uuid,
        /// When the job ended.
        finished: Timestamp,
        /// How it ended.
        outcome: JobOutcome,
    },
}

impl WorkerMessage {
    /// What the message is, in words, for logs and failure reasons
    /// (`unexpected console output before a job request`).
    pub fn name(&self) -> &'static str {
        match self {
            WorkerMessage::RequestJob => "job request",
            WorkerMessage::Heartbeat => "heartbeat",
            WorkerMessage::Started { .. } => "start report",
            WorkerMessage::Console { .. } => "console output",
            WorkerMessage::ArtifactStart { .. } => "artifact",
            WorkerMessage::ArtifactChunk { .. } => "artifact chunk",
            WorkerMessage::Finished { .. } => "result",
        }
    }
}

/// From the server to a worker, after the hello.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ServerToWorker {
    /// Run this job.
    Job(JobAssignment),
    /// Sent every heartbeat interval.
    Heartbeat,
    /// Stop the job now (an operator's `cancel`); report it as aborted.
    Cancel {
        /// Which job.
        uuid: Uuid,
        /// Recorded as the abort message.
        reason: String,
    },
    /// The build record is durably stored; the worker may go.
    Stored {
        /// Which job.
        uuid: Uuid,
    },
    /// The server refuses what the worker sent (and closes the connection).
    Failure {
        /// One line saying why.
        reason: String,
    },
}

// ---------------------------------------------------------------------------
// Client <-> server

/// A command from `builder-client`, after the hello. One request per
/// connection is the norm, but a client may send several in sequence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Add a job to the schedule (and queue it at once).
    Schedule {
        /// The job.
        job: JobSpec,
        /// When it runs again.
        trigger: Trigger,
        /// Per-job timeout; the server's default when absent.
        timeout_secs: Option<u64>,
    },
    /// Remove a job from the schedule and every queue.
    Unschedule {
        /// The job's name.
        name: String,
    },
    /// Set a job's next run to exactly `next`, and optionally its trigger.
    Reschedule {
        /// The job's name.
        name: String,
        /// Its next run.
        next: Timestamp,
        /// Its new trigger, if it changes.
        trigger: Option<Trigger>,
    },
    /// Put a job at the front of its queue(s) now; the schedule is untouched.
    Execute {
        /// The job's name.
        name: String,
        /// Only this platform (orb-build jobs run on every platform otherwise).
        platform: Option<String>,
    },
    /// The schedule, queues, running jobs, dropped platforms and workers.
    Info,
    /// Stream a build's console and result.
    Observe {
        /// The build.
        uuid: Uuid,
    },
    /// Observe the newest build (running or finished) matching the filters.
    ObserveLatest {
        /// Only builds of this platform.
        platform: Option<String>,
        /// Only builds of this job.
        job: Option<String>,
    },
    /// Remove a platform's queue and script jobs; refuse new ones.
    DropPlatform {
        /// The platform.
        platform: String,
    },
    /// Accept a dropped platform again.
    UndropPlatform {
        /// The platform.
        platform: String,
    },
    /// Stop a running build; it is recorded as aborted (`cancelled`).
    Cancel {
        /// The build.
        uuid: Uuid,
    },
    /// Recent builds with their status and upload state, newest first.
    Results {
        /// Only this job's builds.
        job: Option<String>,
        /// At most this many.
        limit: u32,
    },
    /// One scheduled job with its script (since version 2); answered with
    /// [`ServerToClient::Job`].
    Show {
        /// The job's name.
        name: String,
    },
    /// Change a scheduled job in place: it keeps its name, its history and,
    /// unless the trigger changes, its next run. Absent fields stay as they
    /// are; queued runs take the new script, timeout and platform.
    Update {
        /// The job's name.
        name: String,
        /// A new script (script jobs only).
        script: Option<String>,
        /// A new platform (script jobs only).
        platform: Option<String>,
        /// A new trigger; its phase starts now.
        trigger: Option<Trigger>,
        /// A new per-job timeout.
        timeout_secs: Option<u64>,
    },
    /// [`ClientRequest::Execute`], then observe the build it queued, from
    /// its first line (the answer is an observe stream).
    ExecuteObserve {
        /// The job's name.
        name: String,
        /// The platform (needed for an orb-build job on several platforms).
        platform: Option<String>,
    },
    /// Wait for the next build matching the filters to start, then observe
    /// it from its first line.
    ObserveNext {
        /// Only builds of this platform.
        platform: Option<String>,
        /// Only builds of this job.
        job: Option<String>,
    },
    /// Send a stored build's record (`full` file): answered with
    /// [`ServerToClient::RecordStart`] and [`ServerToClient::RecordChunk`]s.
    Fetch {
        /// The build.
        uuid: Uuid,
    },
}

/// From the server to a client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ServerToClient {
    /// The request was carried out (and is durable).
    Success {
        /// Anything worth telling the user (`queued on 2 platforms`).
        detail: Option<String>,
    },
    /// The request was refused.
    Failure {
        /// One line saying why.
        reason: String,
    },
    /// Protocol version 1's answer to [`ClientRequest::Info`], which held
    /// every script and could outgrow the frame limit. Never sent since
    /// version 2 ([`ServerToClient::InfoPart`] instead); kept so that the
    /// variants after it keep their indices.
    Info(Info),
    /// The answer to [`ClientRequest::Results`] in version 1 only; since
    /// version 2 it is [`ServerToClient::ResultList`]. Kept so that the
    /// variants after it keep their indices.
    Results(Vec<ResultSummary>),
    /// First answer to an observe request: which build is shown.
    ObserveStart(BuildHeader),
    /// Console lines, oldest first.
    Console(Vec<OutputLine>),
    /// This many lines were not sent to this observer because it read too
    /// slowly; the stored record has them.
    Dropped {
        /// How many lines were skipped.
        lines: u64,
    },
    /// The build is over; last message of an observe stream.
    ObserveEnd {
        /// When it ended.
        finished: Timestamp,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// Part of the answer to [`ClientRequest::Info`] (since version 2): the
    /// answer is a sequence of parts, each within the frame limit, ended by
    /// [`ServerToClient::InfoEnd`]. See [`crate::info`] for how parts are
    /// cut and put together again.
    InfoPart(Vec<InfoItem>),
    /// The last message of an `info` answer.
    InfoEnd {
        /// How many items the parts held, so a client can tell the answer
        /// is complete.
        items: u64,
    },
    /// The answer to [`ClientRequest::Show`]: the job with its script.
    Job(ScheduleEntry),
    /// A line for the operator's stderr, printed as it is, before or within
    /// an answer: a warning about the request (`warning: no worker has ever
    /// asked for platform ...`) or news of an observed build (`queued on
    /// linux as UUID`, `worker lost (...); requeued (attempt 2)`). The
    /// answer goes on after it.
    Notice {
        /// One line.
        message: String,
    },
    /// A record follows as [`ServerToClient::RecordChunk`]s whose sizes add
    /// up to exactly `len`.
    RecordStart {
        /// The build.
        uuid: Uuid,
        /// Its job (the record lives under `<job>/<uuid>/full`).
        job: String,
        /// The record's size in bytes.
        len: u64,
    },
    /// Part of the record announced by [`ServerToClient::RecordStart`].
    RecordChunk {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The answer to [`ClientRequest::Results`] since version 2, with each
    /// build's attempts ([`ServerToClient::Results`] is version 1's).
    ResultList(Vec<ResultEntry>),
}

/// One item of an `info` answer (since version 2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum InfoItem {
    /// A scheduled job, without its script. Jobs come in name order.
    Job(JobSummary),
    /// A platform's queue, or a piece of it: consecutive items of one
    /// platform continue its queue, front first.
    Queue(QueueInfo),
    /// A build being run.
    Running(RunningBuild),
    /// A platform that refuses work.
    DroppedPlatform(String),
    /// A connected worker.
    Worker(WorkerInfo),
}

/// A scheduled job as `info` lists it: everything but the script.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job's name.
    pub name: String,
    /// What it runs.
    pub kind: JobSummaryKind,
    /// When it runs again.
    pub trigger: Trigger,
    /// Its next run; `None` for `never` after its first run.
    pub next_run: Option<Timestamp>,
    /// Its timeout, if it has its own.
    pub timeout_secs: Option<u64>,
}

/// What a listed job runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum JobSummaryKind {
    /// A shell script for one platform (`show NAME` prints it).
    Script {
        /// The platform whose workers run it.
        platform: String,
        /// The script's size in bytes.
        script_bytes: u64,
    },
    /// An opam package built with orb.
    Orb {
        /// The opam package name.
        opam_package: String,
    },
}

impl From<&ScheduleEntry> for JobSummary {
    fn from(e: &ScheduleEntry) -> JobSummary {
        JobSummary {
            name: e.job.name.clone(),
            kind: match &e.job.kind {
                JobKind::Script { platform, script } => JobSummaryKind::Script {
                    platform: platform.clone(),
                    script_bytes: script.len() as u64,
                },
                JobKind::Orb { opam_package } => JobSummaryKind::Orb {
                    opam_package: opam_package.clone(),
                },
            },
            trigger: e.trigger.clone(),
            next_run: e.next_run,
            timeout_secs: e.timeout_secs,
        }
    }
}

/// Which build an observer is watching.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BuildHeader {
    /// The build.
    pub uuid: Uuid,
    /// Its job.
    pub job: String,
    /// Its platform.
    pub platform: String,
    /// When it started (assignment time until the worker reports the start).
    pub started: Timestamp,
}

/// Protocol version 1's answer to `info` (see [`ServerToClient::Info`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// Every scheduled job, by name.
    pub schedule: Vec<ScheduleEntry>,
    /// Every platform's queue, front first.
    pub queues: Vec<QueueInfo>,
    /// Builds being run now.
    pub running: Vec<RunningBuild>,
    /// Platforms that refuse work.
    pub dropped_platforms: Vec<String>,
    /// Workers connected now.
    pub workers: Vec<WorkerInfo>,
}

/// A job in the schedule, with its script (the answer to
/// [`ClientRequest::Show`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScheduleEntry {
    /// The job.
    pub job: JobSpec,
    /// When it runs again.
    pub trigger: Trigger,
    /// Its next run; `None` for `never` after its first run.
    pub next_run: Option<Timestamp>,
    /// Its timeout, if it has its own.
    pub timeout_secs: Option<u64>,
}

/// One platform's queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The platform.
    pub platform: String,
    /// Names of the queued jobs, front first.
    pub jobs: Vec<String>,
}

/// A build being run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunningBuild {
    /// The build.
    pub uuid: Uuid,
    /// Its job.
    pub job: String,
    /// Its platform.
    pub platform: String,
    /// When it was handed to its worker.
    pub started: Timestamp,
    /// The worker's host name and address.
    pub worker: String,
}

/// A connected worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The platform it serves.
    pub platform: String,
    /// Its host name (from its hello).
    pub host: String,
    /// Its address as the server sees it.
    pub peer: String,
    /// The build it runs, if any.
    pub running: Option<Uuid>,
}

/// A finished build, as listed by `results`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultSummary {
    /// The build.
    pub uuid: Uuid,
    /// Its job.
    pub job: String,
    /// Its platform.
    pub platform: String,
    /// When it started.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Timestamp,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Whether it reached builder-web.
    pub upload: UploadState,
}

/// A finished build as `results` lists it since version 2.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultEntry {
    /// The build.
    pub summary: ResultSummary,
    /// Which attempt this was: 1, or more when workers were lost before
    /// (the build keeps its UUID across requeues).
    pub attempts: u32,
}

/// Whether a build record reached builder-web.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum UploadState {
    /// The server has no `--upload` URL.
    NotConfigured,
    /// Not yet delivered.
    Pending {
        /// Failed attempts so far.
        attempts: u32,
        /// The last failure, if any.
        last_error: Option<String>,
    },
    /// Accepted by builder-web (2xx or 409 Conflict).
    Delivered {
        /// When.
        at: Timestamp,
    },
}

// ---------------------------------------------------------------------------
// Encoding

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The payload is not a valid message of the expected type. The
    /// Display names the type and what bincode found wrong, so a log line
    /// "bad frame: ..." says what was malformed.
    #[error("malformed {expected}: {}", describe(cause))]
    Decode {
        /// The type that was expected (`WorkerMessage`, `Hello`, ...).
        expected: String,
        /// What bincode found wrong.
        cause: bincode::error::DecodeError,
    },
    /// The payload holds a message followed by garbage.
    #[error("malformed message: {extra} trailing bytes after the message")]
    Trailing {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[from] bincode::error::EncodeError),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a message as a frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, MessageError> {
    Ok(bincode::serde::encode_to_vec(msg, config())?)
}

/// Decodes a frame payload; the whole payload must be one message.
///
/// bincode allocates a string or list as long as its length prefix claims
/// before reading it, so a hostile 20-byte payload could ask for exabytes.
/// Decoding is therefore limited to a budget that grows with the payload:
/// at most 64 KiB or four times the payload's size, whichever is larger.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, MessageError> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    let decoded = match payload.len() {
        n if n <= 16 * KIB => decode_limited::<T, { 64 * KIB }>(payload),
        n if n <= 256 * KIB => decode_limited::<T, { MIB }>(payload),
        n if n <= 4 * MIB => decode_limited::<T, { 16 * MIB }>(payload),
        n if n <= 64 * MIB => decode_limited::<T, { 256 * MIB }>(payload),
        _ => decode_limited::<T, { 1024 * MIB }>(payload),
    };
    let (msg, used) = decoded.map_err(|cause| MessageError::Decode {
        expected: short_type_name(std::any::type_name::<T>()),
        cause,
    })?;
    if used != payload.len() {
        return Err(MessageError::Trailing {
            extra: payload.len() - used,
        });
    }
    Ok(msg)
}

/// `protocol::message::WorkerMessage` as `WorkerMessage`,
/// `alloc::vec::Vec<u8>` as `Vec<u8>`: the module paths are dropped.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c == ':' {
            segment.clear();
        } else if c.is_alphanumeric() || c == '_' {
            segment.push(c);
        } else {
            out.push_str(&segment);
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(&segment);
    out
}

/// bincode's decode error in words (its own Display is its Debug).
fn describe(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { additional } => {
            format!("it ends early ({additional} more bytes needed)")
        }
        E::LimitExceeded => "a length in it claims more memory than its size allows".into(),
        E::UnexpectedVariant {
            type_name, found, ..
        } => format!("unexpected variant {found} of {type_name}"),
        E::Utf8 { inner } => format!("a string is not UTF-8 ({inner})"),
        E::InvalidBooleanValue(v) => format!("invalid boolean {v}"),
        E::InvalidCharEncoding(bytes) => format!("invalid character encoding {bytes:?}"),
        E::OutsideUsizeRange(n) => format!("length {n} is out of range"),
        // serde's own messages, e.g. "invalid value: integer `9`, expected
        // variant index 0 <= i < 7".
        E::OtherString(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    payload: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(payload, config().with_limit::<LIMIT>())
}

/// Reads just the protocol version at the start of a [`Hello`] payload, so a
/// server can tell a peer of another version what it speaks even when the
/// rest of its hello does not decode.
pub fn peek_hello_version(payload: &[u8]) -> Option<u32> {
    bincode::decode_from_slice::<u32, _>(payload, config())
        .ok()
        .map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ExecResult;

    #[test]
    fn a_decode_error_names_the_type_and_what_was_wrong() {
        // Variant 9 of WorkerMessage does not exist.
        let err = decode::<WorkerMessage>(&[9]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("malformed WorkerMessage: "), "{text}");
        assert!(text.contains("9"), "{text}");
        assert!(!text.contains("malformed message"), "{text}");
        // A payload that stops in the middle says so.
        let hello = encode(&Hello::client(None, "test")).unwrap();
        let text = decode::<Hello>(&hello[..hello.len() - 2])
            .unwrap_err()
            .to_string();
        assert!(text.starts_with("malformed Hello: it ends early"), "{text}");
        // Generic types keep their parameters, without module paths.
        assert_eq!(
            short_type_name(std::any::type_name::<Vec<Option<u8>>>()),
            "Vec<Option<u8>>"
        );
    }

    #[test]
    fn outcome_text_is_the_same_everywhere() {
        let cases = [
            (JobOutcome::Exited(0), "exited 0"),
            (JobOutcome::Exited(-3), "exited -3"),
            (JobOutcome::Signalled(Signal::Kill), "killed by SIGKILL"),
            (JobOutcome::Stopped(Signal::Stop), "stopped by SIGSTOP"),
            (JobOutcome::Aborted("timeout".into()), "aborted: timeout"),
        ];
        for (outcome, text) in cases {
            assert_eq!(outcome.to_string(), text);
            assert_eq!(ExecResult::from(&outcome).to_string(), text);
        }
        // The record's wider exit codes are shown exactly.
        assert_eq!(
            ExecResult::Exited(1 << 40).to_string(),
            "exited 1099511627776"
        );
    }
}
