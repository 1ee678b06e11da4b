//! The JSON model: what `builder-client --json` prints and what the
//! server's HTTP API (`/api/v1/...`) serves, from the same types.
//!
//! These are views built from the wire types, not the wire types
//! themselves, so their shape is a stable interface of its own: times are
//! RFC 3339 strings (UTC, `Z`, as many fraction digits as needed), UUIDs are
//! hyphenated, enums are tagged with a lowercase `kind`. New fields may
//! appear; readers ignore fields they do not know.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::info::InfoSummary;
use crate::message::{
    JobKind, JobOutcome, JobSummary, JobSummaryKind, QueueInfo, ResultEntry, RunningBuild,
    ScheduleEntry, Timestamp, UploadState, WorkerInfo,
};
use crate::trigger::Trigger;

/// RFC 3339 with as many fraction digits as needed.
pub fn time(t: Timestamp) -> String {
    t.to_datetime()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// How long a build took, the one duration every command and the API
/// show (`results`, `observe`, builder-inspect, `/api/v1/builds`):
/// `finished - started`, each truncated to whole milliseconds first, as a
/// stored record keeps them, so a live build, a replayed one and the
/// results list agree to the millisecond. A finish before the start (a
/// clock set back) is zero.
pub fn build_duration(started: Timestamp, finished: Timestamp) -> Duration {
    let millis = |t: Timestamp| t.0.div_euclid(1_000_000);
    Duration::from_millis(u64::try_from(millis(finished) - millis(started)).unwrap_or(0))
}

/// Seconds rounded to milliseconds (`12.345`, not `12.345678901`).
pub fn secs_millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `info --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InfoView {
    /// Scheduled jobs.
    pub schedule: Vec<ScheduleView>,
    /// Queues, front first.
    pub queues: Vec<QueueView>,
    /// Builds running now.
    pub running: Vec<RunningView>,
    /// Platforms refusing work.
    pub dropped_platforms: Vec<String>,
    /// Connected workers.
    pub workers: Vec<WorkerView>,
}

/// One scheduled job (`info --json`, `GET /api/v1/jobs`; `show --json` and
/// `GET /api/v1/jobs/{name}` with its script).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ScheduleView {
    /// Job name.
    pub name: String,
    /// `script` or `orb-build`.
    pub kind: String,
    /// Platform of a script job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The script of a script job (`show` only; `info` leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The size of a script job's script in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_bytes: Option<u64>,
    /// Package of an orb-build job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opam_package: Option<String>,
    /// `hourly`, `daily`, `weekly`, `never` or `cron`.
    pub trigger: String,
    /// The cron expression when `trigger` is `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Next run (RFC 3339), null if none.
    pub next_run: Option<String>,
    /// The job's own timeout, null for the server's default.
    pub timeout_secs: Option<u64>,
}

/// One platform's queue.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QueueView {
    /// Platform.
    pub platform: String,
    /// Job names, front first.
    pub jobs: Vec<String>,
}

/// A running build.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunningView {
    /// Hyphenated UUID.
    pub uuid: String,
    /// Job name.
    pub job: String,
    /// Platform.
    pub platform: String,
    /// RFC 3339.
    pub started: String,
    /// The worker running it.
    pub worker: String,
}

/// A connected worker (`info --json`, `GET /api/v1/workers`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// Platform it serves.
    pub platform: String,
    /// Host name.
    pub host: String,
    /// Address as the server sees it.
    pub peer: String,
    /// The build it runs, null when idle.
    pub running: Option<String>,
}

/// How a build ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutcomeView {
    /// Exit code.
    Exited {
        /// The code.
        code: i32,
    },
    /// Killed by a signal.
    Signalled {
        /// `SIGKILL`.
        signal: String,
    },
    /// Stopped by a signal.
    Stopped {
        /// `SIGSTOP`.
        signal: String,
    },
    /// Did not run to its end.
    Aborted {
        /// `timeout`, `cancelled`, ...
        message: String,
    },
}

impl From<&JobOutcome> for OutcomeView {
    fn from(o: &JobOutcome) -> OutcomeView {
        match o {
            JobOutcome::Exited(code) => OutcomeView::Exited { code: *code },
            JobOutcome::Signalled(sig) => OutcomeView::Signalled {
                signal: sig.name().to_string(),
            },
            JobOutcome::Stopped(sig) => OutcomeView::Stopped {
                signal: sig.name().to_string(),
            },
            JobOutcome::Aborted(msg) => OutcomeView::Aborted {
                message: msg.clone(),
            },
        }
    }
}

/// Upload state of a result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UploadView {
    /// No upload configured on the server.
    NotConfigured,
    /// Not yet delivered.
    Pending {
        /// Failed attempts so far.
        attempts: u32,
        /// Last failure.
        last_error: Option<String>,
    },
    /// Delivered.
    Delivered {
        /// RFC 3339.
        at: String,
    },
}

impl From<&UploadState> for UploadView {
    fn from(u: &UploadState) -> UploadView {
        match u {
            UploadState::NotConfigured => UploadView::NotConfigured,
            UploadState::Pending {
                attempts,
                last_error,
            } => UploadView::Pending {
                attempts: *attempts,
                last_error: last_error.clone(),
            },
            UploadState::Delivered { at } => UploadView::Delivered { at: time(*at) },
        }
    }
}

/// One line of `results --json`: a finished build.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResultView {
    /// Hyphenated UUID.
    pub uuid: String,
    /// Job name.
    pub job: String,
    /// Platform.
    pub platform: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339.
    pub finished: String,
    /// Seconds, rounded to milliseconds.
    pub duration_secs: f64,
    /// Which attempt produced it (more than 1 after lost workers).
    pub attempts: u32,
    /// Structured outcome.
    pub outcome: OutcomeView,
    /// The outcome as text (`killed by SIGKILL`).
    pub result: String,
    /// Upload state.
    pub upload: UploadView,
}

/// `("hourly", None)` ... `("cron", Some(expr))`.
fn trigger_view(t: &Trigger) -> (&'static str, Option<String>) {
    match t {
        Trigger::Hourly => ("hourly", None),
        Trigger::Daily => ("daily", None),
        Trigger::Weekly => ("weekly", None),
        Trigger::Never => ("never", None),
        Trigger::Cron(expr) => ("cron", Some(expr.clone())),
    }
}

impl ScheduleView {
    /// A job as `info` lists it: without its script.
    pub fn summary(e: &JobSummary) -> ScheduleView {
        let (kind, platform, script_bytes, opam_package) = match &e.kind {
            JobSummaryKind::Script {
                platform,
                script_bytes,
            } => ("script", Some(platform.clone()), Some(*script_bytes), None),
            JobSummaryKind::Orb { opam_package } => {
                ("orb-build", None, None, Some(opam_package.clone()))
            }
        };
        let (trigger, cron) = trigger_view(&e.trigger);
        ScheduleView {
            name: e.name.clone(),
            kind: kind.to_owned(),
            platform,
            script: None,
            script_bytes,
            opam_package,
            trigger: trigger.to_owned(),
            cron,
            next_run: e.next_run.map(time),
            timeout_secs: e.timeout_secs,
        }
    }

    /// A job as `show` prints it: with its script.
    pub fn new(e: &ScheduleEntry) -> ScheduleView {
        let mut view = ScheduleView::summary(&JobSummary::from(e));
        if let JobKind::Script { script, .. } = &e.job.kind {
            view.script = Some(script.clone());
        }
        view
    }
}

impl From<&QueueInfo> for QueueView {
    fn from(q: &QueueInfo) -> QueueView {
        QueueView {
            platform: q.platform.clone(),
            jobs: q.jobs.clone(),
        }
    }
}

impl From<&RunningBuild> for RunningView {
    fn from(r: &RunningBuild) -> RunningView {
        RunningView {
            uuid: r.uuid.hyphenated().to_string(),
            job: r.job.clone(),
            platform: r.platform.clone(),
            started: time(r.started),
            worker: r.worker.clone(),
        }
    }
}

impl From<&WorkerInfo> for WorkerView {
    fn from(w: &WorkerInfo) -> WorkerView {
        WorkerView {
            platform: w.platform.clone(),
            host: w.host.clone(),
            peer: w.peer.clone(),
            running: w.running.map(|u| u.hyphenated().to_string()),
        }
    }
}

impl InfoView {
    /// Builds the view of an `info` answer.
    pub fn new(info: &InfoSummary) -> InfoView {
        InfoView {
            schedule: info.schedule.iter().map(ScheduleView::summary).collect(),
            queues: info.queues.iter().map(QueueView::from).collect(),
            running: info.running.iter().map(RunningView::from).collect(),
            dropped_platforms: info.dropped_platforms.clone(),
            workers: info.workers.iter().map(WorkerView::from).collect(),
        }
    }
}

impl ResultView {
    /// Builds the view of one result.
    pub fn new(entry: &ResultEntry) -> ResultView {
        let r = &entry.summary;
        ResultView {
            uuid: r.uuid.hyphenated().to_string(),
            job: r.job.clone(),
            platform: r.platform.clone(),
            started: time(r.started),
            finished: time(r.finished),
            duration_secs: secs_millis(build_duration(r.started, r.finished)),
            attempts: entry.attempts,
            outcome: OutcomeView::from(&r.outcome),
            result: r.outcome.to_string(),
            upload: UploadView::from(&r.upload),
        }
    }
}

// ---------------------------------------------------------------------------
// The HTTP API's own documents.

/// `GET /api/v1/builds` and `GET /api/v1/builds/{uuid}`: a build, running
/// or finished. A finished build has every field of [`ResultView`], with
/// the same names.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BuildView {
    /// Hyphenated UUID.
    pub uuid: String,
    /// Job name.
    pub job: String,
    /// Platform.
    pub platform: String,
    /// `queued`, `running` or `finished`.
    pub state: String,
    /// RFC 3339; for a running build, when it was handed to its worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// RFC 3339, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Seconds, rounded to milliseconds, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Which attempt produced it, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Structured outcome, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeView>,
    /// The outcome as text, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Upload state, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadView>,
    /// The worker running it, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Its artifacts (one build's page only, once stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<ArtifactView>>,
}

impl BuildView {
    /// A finished build.
    pub fn finished(entry: &ResultEntry) -> BuildView {
        let r = ResultView::new(entry);
        BuildView {
            uuid: r.uuid,
            job: r.job,
            platform: r.platform,
            state: "finished".to_owned(),
            started: Some(r.started),
            finished: Some(r.finished),
            duration_secs: Some(r.duration_secs),
            attempts: Some(r.attempts),
            outcome: Some(r.outcome),
            result: Some(r.result),
            upload: Some(r.upload),
            worker: None,
            artifacts: None,
        }
    }

    /// A running build.
    pub fn running(r: &RunningBuild) -> BuildView {
        BuildView {
            uuid: r.uuid.hyphenated().to_string(),
            job: r.job.clone(),
            platform: r.platform.clone(),
            state: "running".to_owned(),
            started: Some(time(r.started)),
            finished: None,
            duration_secs: None,
            attempts: None,
            outcome: None,
            result: None,
            upload: None,
            worker: Some(r.worker.clone()),
            artifacts: None,
        }
    }

    /// A queued build.
    pub fn queued(uuid: Uuid, job: &str, platform: &str) -> BuildView {
        BuildView {
            uuid: uuid.hyphenated().to_string(),
            job: job.to_owned(),
            platform: platform.to_owned(),
            state: "queued".to_owned(),
            started: None,
            finished: None,
            duration_secs: None,
            attempts: None,
            outcome: None,
            result: None,
            upload: None,
            worker: None,
            artifacts: None,
        }
    }
}

/// One artifact of a stored build.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArtifactView {
    /// Its path in the build (lossy UTF-8).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of its bytes.
    pub sha256: String,
}

/// A queued build as a platform lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueuedView {
    /// Job name.
    pub job: String,
    /// Hyphenated UUID (null for a queue entry from before UUIDs were
    /// assigned at queueing).
    pub uuid: Option<String>,
}

/// `GET /api/v1/platforms`: one platform.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlatformView {
    /// Platform.
    pub platform: String,
    /// Whether it refuses work.
    pub dropped: bool,
    /// Its queue, front first.
    pub queued: Vec<QueuedView>,
    /// Its connected workers.
    pub workers: Vec<WorkerView>,
}

/// One build queued by `POST /api/v1/jobs/{name}/execute`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueuedBuild {
    /// Platform.
    pub platform: String,
    /// Hyphenated UUID.
    pub uuid: String,
}

/// The answer to `POST /api/v1/jobs/{name}/execute` (202).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecuteAnswer {
    /// The builds queued, one per platform.
    pub queued: Vec<QueuedBuild>,
}

/// Every error the HTTP API answers, with its status code.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorView {
    /// One line saying what is wrong and, where it helps, what to do.
    pub error: String,
}

/// The `finished` event of a console stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FinishedView {
    /// RFC 3339.
    pub finished: String,
    /// Structured outcome.
    pub outcome: OutcomeView,
    /// The outcome as text.
    pub result: String,
}

impl FinishedView {
    /// The end of a build.
    pub fn new(finished: Timestamp, outcome: &JobOutcome) -> FinishedView {
        FinishedView {
            finished: time(finished),
            outcome: OutcomeView::from(outcome),
            result: outcome.to_string(),
        }
    }
}

/// A farm event (`GET /api/v1/events`): the SSE event name is `event`, its
/// data the rest of this object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventView {
    /// A build joined a queue.
    BuildQueued {
        /// Hyphenated UUID.
        uuid: String,
        /// Job name.
        job: String,
        /// Platform.
        platform: String,
    },
    /// A build was handed to a worker.
    BuildStarted {
        /// Hyphenated UUID.
        uuid: String,
        /// Job name.
        job: String,
        /// Platform.
        platform: String,
        /// RFC 3339.
        started: String,
        /// The worker.
        worker: String,
    },
    /// A build ended and was indexed.
    BuildFinished {
        /// Hyphenated UUID.
        uuid: String,
        /// Job name.
        job: String,
        /// Platform.
        platform: String,
        /// RFC 3339.
        finished: String,
        /// Structured outcome.
        outcome: OutcomeView,
        /// The outcome as text.
        result: String,
    },
    /// A worker said hello.
    WorkerConnected {
        /// Platform.
        platform: String,
        /// Host name.
        host: String,
        /// Address.
        peer: String,
    },
    /// A worker left.
    WorkerDisconnected {
        /// Platform.
        platform: String,
        /// Host name.
        host: String,
        /// Address.
        peer: String,
    },
    /// A job was scheduled, changed or removed.
    JobChanged {
        /// Job name.
        job: String,
    },
}

impl EventView {
    /// The SSE event name: `build_queued`, ...
    pub fn name(&self) -> &'static str {
        match self {
            EventView::BuildQueued { .. } => "build_queued",
            EventView::BuildStarted { .. } => "build_started",
            EventView::BuildFinished { .. } => "build_finished",
            EventView::WorkerConnected { .. } => "worker_connected",
            EventView::WorkerDisconnected { .. } => "worker_disconnected",
            EventView::JobChanged { .. } => "job_changed",
        }
    }
}
