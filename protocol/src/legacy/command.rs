//! The reference's wire commands: one DER value per frame.
//!
//! ```text
//! Command ::= CHOICE {
//!   [0] INTEGER, [1] INTEGER                        -- retired, refused
//!   [2] SEQUENCE { uuid, job ScriptJob }            -- job_schedule
//!   [3] SEQUENCE { uuid, result Result, data Data } -- job_finished
//!   [4] SEQUENCE { uuid, output UTF8String,
//!                  timestamp INTEGER OPTIONAL }     -- output(_timestamped)
//!   [5] SEQUENCE { period, job ScriptJob }          -- schedule
//!   [6] NULL                                        -- info
//!   [7] SEQUENCE { schedule, queues, running }      -- old info_reply (read)
//!   [8] NULL                                        -- retired, refused
//!   [9] UTF8String                                  -- unschedule
//!   [10] uuid                                       -- observe
//!   [11] UTF8String                                 -- old execute (read)
//!   [12] SEQUENCE { period, OrbBuildJob }           -- schedule_orb_build
//!   [13] SEQUENCE { name, next Time, period OPTIONAL } -- reschedule
//!   [14] SEQUENCE { CHOICE { [0] NULL, [1] NULL }, version INTEGER }
//!                                                   -- client_hello
//!   [15] NULL                                       -- server_hello
//!   [16] UTF8String                                 -- job_requested
//!   [17] UTF8String                                 -- drop_platform
//!   [18] NULL                                       -- success
//!   [19] UTF8String                                 -- failure
//!   [20] SEQUENCE { name, platform UTF8String OPTIONAL } -- execute
//!   [21] UTF8String                                 -- undrop_platform
//!   [22] SEQUENCE { schedule, queues, running,
//!                   dropped_platforms SEQUENCE OF UTF8String } -- info_reply
//! }
//! uuid ::= UTF8String -- the 16 raw bytes
//! ```

use uuid::Uuid;

use super::{
    done, explicit_header, orb_job_node, period_node, queue_node, read_orb_job, read_period,
    read_queue, read_schedule_item, read_time, schedule_item_node, time_node, Job, LegacyError,
    OrbJob, Period, Reader, ScheduleItem, Time,
};
use crate::record::der::{self, Node};
use crate::record::write::{artifacts_node, job_node, result_node};
use crate::record::{Artifact, ExecResult, RecordError, ScriptJob};

/// The client protocol version of the reference this crate speaks.
pub const CLIENT_VERSION: i64 = 13;
/// The worker protocol version of the reference this crate speaks.
pub const WORKER_VERSION: i64 = 5;

/// Who sends a `client_hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// `builder-client` (protocol [`CLIENT_VERSION`]).
    Client,
    /// `builder-worker` (protocol [`WORKER_VERSION`]).
    Worker,
}

/// A queue as an `info_reply` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's platform.
    pub platform: Vec<u8>,
    /// The queued jobs, head first.
    pub jobs: Vec<Job>,
}

/// A running build as an `info_reply` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// When it started.
    pub started: Time,
    /// The build's UUID.
    pub uuid: Uuid,
    /// The job.
    pub job: ScriptJob,
}

/// The reply to `info`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Info {
    /// The schedule.
    pub schedule: Vec<ScheduleItem>,
    /// The queues.
    pub queues: Vec<QueueInfo>,
    /// The running builds.
    pub running: Vec<Running>,
    /// The dropped platforms (empty in the old `[7]` form).
    pub dropped_platforms: Vec<Vec<u8>>,
}

/// One command of the reference's protocol. Strings are bytes: the reference
/// never validates its UTF8Strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Worker: "give me a job for this platform".
    JobRequested {
        /// The worker's platform.
        platform: Vec<u8>,
    },
    /// Server to worker: run this job.
    JobSchedule {
        /// The build's UUID.
        uuid: Uuid,
        /// The job.
        job: ScriptJob,
    },
    /// Worker: the job ended; its artifacts travel inline.
    JobFinished {
        /// The build's UUID.
        uuid: Uuid,
        /// How it ended (portable signal numbers).
        result: ExecResult,
        /// Every artifact, path and content.
        data: Vec<Artifact>,
    },
    /// Worker (and server to an observer): a console line.
    Output {
        /// The build's UUID.
        uuid: Uuid,
        /// The line, without its newline.
        output: Vec<u8>,
    },
    /// Worker: a console line with its time since the job started.
    OutputTimestamped {
        /// The build's UUID.
        uuid: Uuid,
        /// Nanoseconds since the job started.
        timestamp: i64,
        /// The line, without its newline.
        output: Vec<u8>,
    },
    /// Client: schedule a script job.
    Schedule {
        /// How often it runs.
        period: Period,
        /// The job.
        job: ScriptJob,
    },
    /// Client: remove a job from the schedule.
    Unschedule {
        /// The job's name.
        name: Vec<u8>,
    },
    /// Client: show the schedule, queues and running builds.
    Info,
    /// Server to client: the answer to [`Command::Info`].
    InfoReply(Info),
    /// Client: follow a running build's console.
    Observe {
        /// The build's UUID.
        uuid: Uuid,
    },
    /// Client: queue a job now, at the front.
    Execute {
        /// The job's name.
        name: Vec<u8>,
        /// Only this platform's queue (orb jobs); all when absent.
        platform: Option<Vec<u8>>,
    },
    /// Client: schedule an orb build job.
    ScheduleOrbBuild {
        /// How often it runs.
        period: Period,
        /// The job.
        job: OrbJob,
    },
    /// Client: change a job's next run (and period).
    Reschedule {
        /// The job's name.
        name: Vec<u8>,
        /// The new next run.
        next: Time,
        /// The new period, if it changes.
        period: Option<Period>,
    },
    /// Client: drop a platform.
    DropPlatform {
        /// The platform.
        platform: Vec<u8>,
    },
    /// Client: undrop a platform.
    UndropPlatform {
        /// The platform.
        platform: Vec<u8>,
    },
    /// The first command of every connection.
    ClientHello {
        /// Client or worker.
        kind: PeerKind,
        /// Its protocol version ([`CLIENT_VERSION`] or [`WORKER_VERSION`]
        /// for the versions this crate speaks).
        version: i64,
    },
    /// Server: hello accepted.
    ServerHello,
    /// Server to client: done.
    Success,
    /// Server to client: refused, with a message.
    Failure {
        /// Why.
        message: Vec<u8>,
    },
}

impl Command {
    /// The DER encoding, byte for byte what the reference writes.
    ///
    /// Infallible: integers and times outside the reference's range are
    /// clamped into it, as in [`crate::record::Exec::encode`].
    pub fn encode(&self) -> Vec<u8> {
        self.node().to_vec()
    }

    /// Decodes one command, as strictly as the reference (see the module
    /// docs of [`crate::legacy`]).
    ///
    /// # Errors
    ///
    /// [`LegacyError::Malformed`] says what is wrong and at which byte;
    /// [`LegacyError::Retired`] for the commands the reference refuses. No
    /// allocation is larger than the input.
    pub fn decode(bytes: &[u8]) -> Result<Command, LegacyError> {
        let mut r = Reader::over_slice(bytes);
        let end = r.input_end();
        let (at, tag, inner) = explicit_header(&mut r, end, "[0]..[22] (a command)", 0..=22)
            .map_err(LegacyError::command)?;
        let command = match tag {
            0 | 1 | 8 => return Err(LegacyError::Retired { offset: at, tag }),
            _ => read_body(&mut r, tag, inner).map_err(LegacyError::command)?,
        };
        r.finish(inner, "the command")
            .and_then(|()| done(&mut r))
            .map_err(LegacyError::command)?;
        Ok(command)
    }

    /// The command's name as the fixtures' dumps and the reference's logs
    /// call it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::JobRequested { .. } => "job_requested",
            Command::JobSchedule { .. } => "job_schedule",
            Command::JobFinished { .. } => "job_finished",
            Command::Output { .. } => "output",
            Command::OutputTimestamped { .. } => "output_timestamped",
            Command::Schedule { .. } => "schedule",
            Command::Unschedule { .. } => "unschedule",
            Command::Info => "info",
            Command::InfoReply(_) => "info_reply",
            Command::Observe { .. } => "observe",
            Command::Execute { .. } => "execute",
            Command::ScheduleOrbBuild { .. } => "schedule_orb_build",
            Command::Reschedule { .. } => "reschedule",
            Command::DropPlatform { .. } => "drop_platform",
            Command::UndropPlatform { .. } => "undrop_platform",
            Command::ClientHello { .. } => "client_hello",
            Command::ServerHello => "server_hello",
            Command::Success => "success",
            Command::Failure { .. } => "failure",
        }
    }

    fn node(&self) -> Node<'_> {
        let (tag, inner) = match self {
            Command::JobSchedule { uuid, job } => (
                2,
                Node::sequence(vec![Node::string(uuid.as_bytes()), job_node(job)]),
            ),
            Command::JobFinished { uuid, result, data } => (
                3,
                Node::sequence(vec![
                    Node::string(uuid.as_bytes()),
                    result_node(result),
                    artifacts_node(data),
                ]),
            ),
            Command::Output { uuid, output } => (
                4,
                Node::sequence(vec![Node::string(uuid.as_bytes()), Node::string(output)]),
            ),
            Command::OutputTimestamped {
                uuid,
                timestamp,
                output,
            } => (
                4,
                Node::sequence(vec![
                    Node::string(uuid.as_bytes()),
                    Node::string(output),
                    Node::integer(*timestamp),
                ]),
            ),
            Command::Schedule { period, job } => {
                (5, Node::sequence(vec![period_node(*period), job_node(job)]))
            }
            Command::Info => (6, Node::null()),
            Command::Unschedule { name } => (9, Node::string(name)),
            Command::Observe { uuid } => (10, Node::string(uuid.as_bytes())),
            Command::ScheduleOrbBuild { period, job } => (
                12,
                Node::sequence(vec![period_node(*period), orb_job_node(job)]),
            ),
            Command::Reschedule { name, next, period } => {
                let mut fields = vec![Node::string(name), time_node(next)];
                fields.extend(period.map(period_node));
                (13, Node::sequence(fields))
            }
            Command::ClientHello { kind, version } => {
                let kind = match kind {
                    PeerKind::Client => 0,
                    PeerKind::Worker => 1,
                };
                (
                    14,
                    Node::sequence(vec![
                        Node::explicit(kind, Node::null()),
                        Node::integer(*version),
                    ]),
                )
            }
            Command::ServerHello => (15, Node::null()),
            Command::JobRequested { platform } => (16, Node::string(platform)),
            Command::DropPlatform { platform } => (17, Node::string(platform)),
            Command::Success => (18, Node::null()),
            Command::Failure { message } => (19, Node::string(message)),
            Command::Execute { name, platform } => {
                let mut fields = vec![Node::string(name)];
                fields.extend(platform.as_deref().map(Node::string));
                (20, Node::sequence(fields))
            }
            Command::UndropPlatform { platform } => (21, Node::string(platform)),
            Command::InfoReply(info) => (22, info_node(info)),
        };
        Node::explicit(tag, inner)
    }
}

fn info_node(info: &Info) -> Node<'_> {
    Node::sequence(vec![
        Node::sequence(info.schedule.iter().map(schedule_item_node).collect()),
        Node::sequence(
            info.queues
                .iter()
                .map(|q| queue_node(&q.platform, &q.jobs))
                .collect(),
        ),
        Node::sequence(
            info.running
                .iter()
                .map(|run| {
                    Node::sequence(vec![
                        time_node(&run.started),
                        Node::string(run.uuid.as_bytes()),
                        job_node(&run.job),
                    ])
                })
                .collect(),
        ),
        Node::sequence(
            info.dropped_platforms
                .iter()
                .map(|p| Node::string(p))
                .collect(),
        ),
    ])
}

/// The content of `[tag]`, which ends at `end`.
fn read_body(r: &mut Reader<'_>, tag: u8, end: u64) -> Result<Command, RecordError> {
    Ok(match tag {
        2 => {
            let seq = sequence(r, end, "SEQUENCE (job_schedule)")?;
            let uuid = read_uuid(r, seq)?;
            let job = r.job(seq)?;
            r.finish(seq, "job_schedule")?;
            Command::JobSchedule { uuid, job }
        }
        3 => {
            let seq = sequence(r, end, "SEQUENCE (job_finished)")?;
            let uuid = read_uuid(r, seq)?;
            let result = r.result(seq)?;
            let data = r.artifacts(seq, "SEQUENCE OF (job data)")?;
            r.finish(seq, "job_finished")?;
            Command::JobFinished { uuid, result, data }
        }
        4 => {
            let seq = sequence(r, end, "SEQUENCE (output)")?;
            let uuid = read_uuid(r, seq)?;
            let output = r.string(seq, "UTF8String (output)")?.1;
            let command = if r.pos < seq {
                let timestamp = r.integer(seq, "INTEGER (output timestamp)")?;
                Command::OutputTimestamped {
                    uuid,
                    timestamp,
                    output,
                }
            } else {
                Command::Output { uuid, output }
            };
            r.finish(seq, "output")?;
            command
        }
        5 => {
            let seq = sequence(r, end, "SEQUENCE (schedule)")?;
            let period = read_period(r, seq)?;
            let job = r.job(seq)?;
            r.finish(seq, "schedule")?;
            Command::Schedule { period, job }
        }
        6 => {
            r.null(end, "NULL (info)")?;
            Command::Info
        }
        7 | 22 => Command::InfoReply(read_info(r, end, tag == 22)?),
        9 => Command::Unschedule {
            name: r.string(end, "UTF8String (job name)")?.1,
        },
        10 => Command::Observe {
            uuid: read_uuid(r, end)?,
        },
        11 => Command::Execute {
            name: r.string(end, "UTF8String (job name)")?.1,
            platform: None,
        },
        12 => {
            let seq = sequence(r, end, "SEQUENCE (schedule_orb_build)")?;
            let period = read_period(r, seq)?;
            let job = read_orb_job(r, seq)?;
            r.finish(seq, "schedule_orb_build")?;
            Command::ScheduleOrbBuild { period, job }
        }
        13 => {
            let seq = sequence(r, end, "SEQUENCE (reschedule)")?;
            let name = r.string(seq, "UTF8String (job name)")?.1;
            let next = read_time(r, seq, "UTCTime or GeneralizedTime (next run)")?;
            let period = if r.pos < seq {
                Some(read_period(r, seq)?)
            } else {
                None
            };
            r.finish(seq, "reschedule")?;
            Command::Reschedule { name, next, period }
        }
        14 => {
            let seq = sequence(r, end, "SEQUENCE (client_hello)")?;
            let (_, n, inner) = explicit_header(r, seq, "[0] or [1] (client or worker)", 0..=1)?;
            r.null(inner, "NULL (client or worker)")?;
            r.finish(inner, "client or worker")?;
            let version = r.integer(seq, "INTEGER (protocol version)")?;
            r.finish(seq, "client_hello")?;
            let kind = if n == 0 {
                PeerKind::Client
            } else {
                PeerKind::Worker
            };
            Command::ClientHello { kind, version }
        }
        15 => {
            r.null(end, "NULL (server_hello)")?;
            Command::ServerHello
        }
        16 => Command::JobRequested {
            platform: r.string(end, "UTF8String (platform)")?.1,
        },
        17 => Command::DropPlatform {
            platform: r.string(end, "UTF8String (platform)")?.1,
        },
        18 => {
            r.null(end, "NULL (success)")?;
            Command::Success
        }
        19 => Command::Failure {
            message: r.string(end, "UTF8String (failure message)")?.1,
        },
        20 => {
            let seq = sequence(r, end, "SEQUENCE (execute)")?;
            let name = r.string(seq, "UTF8String (job name)")?.1;
            let platform = if r.pos < seq {
                Some(r.string(seq, "UTF8String (platform)")?.1)
            } else {
                None
            };
            r.finish(seq, "execute")?;
            Command::Execute { name, platform }
        }
        21 => Command::UndropPlatform {
            platform: r.string(end, "UTF8String (platform)")?.1,
        },
        _ => unreachable!("tags 0..=22 only, retired ones handled by the caller"),
    })
}

fn sequence(r: &mut Reader<'_>, end: u64, expected: &'static str) -> Result<u64, RecordError> {
    Ok(r.element(der::SEQUENCE, expected, end)?.1)
}

/// A uuid: a UTF8String of at least 16 bytes, the first 16 used.
fn read_uuid(r: &mut Reader<'_>, end: u64) -> Result<Uuid, RecordError> {
    Ok(Uuid::from_bytes(r.uuid(end)?))
}

/// The content of `[22]` (with dropped platforms) or `[7]` (without).
fn read_info(r: &mut Reader<'_>, end: u64, with_dropped: bool) -> Result<Info, RecordError> {
    let seq = sequence(r, end, "SEQUENCE (info_reply)")?;
    let mut info = Info::default();
    let schedule_end = sequence(r, seq, "SEQUENCE OF (schedule)")?;
    while r.pos < schedule_end {
        info.schedule
            .push(read_schedule_item(r, schedule_end, false)?);
    }
    let queues_end = sequence(r, seq, "SEQUENCE OF (queues)")?;
    while r.pos < queues_end {
        let (platform, jobs) = read_queue(r, queues_end)?;
        info.queues.push(QueueInfo { platform, jobs });
    }
    let running_end = sequence(r, seq, "SEQUENCE OF (running)")?;
    while r.pos < running_end {
        let item = sequence(r, running_end, "SEQUENCE (running build)")?;
        let started = read_time(r, item, "UTCTime or GeneralizedTime (started)")?;
        let uuid = read_uuid(r, item)?;
        let job = r.job(item)?;
        r.finish(item, "a running build")?;
        info.running.push(Running { started, uuid, job });
    }
    if with_dropped {
        let dropped_end = sequence(r, seq, "SEQUENCE OF (dropped platforms)")?;
        while r.pos < dropped_end {
            let platform = r.string(dropped_end, "UTF8String (dropped platform)")?.1;
            info.dropped_platforms.push(platform);
        }
    }
    r.finish(seq, "info_reply")?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn uuid() -> Uuid {
        Uuid::parse_str("5c4b3a29-1807-46f5-a4b3-c2d1e0f9a8b7").unwrap()
    }

    fn samples() -> Vec<Command> {
        let job = ScriptJob::new("hello", "echo\n", Some(b"linux".to_vec()));
        let next = Time::from(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap());
        vec![
            Command::ClientHello {
                kind: PeerKind::Worker,
                version: WORKER_VERSION,
            },
            Command::JobFinished {
                uuid: uuid(),
                result: ExecResult::Signalled(-7),
                data: vec![Artifact {
                    path: b"bin/x".to_vec(),
                    data: (0..=255).collect(),
                }],
            },
            Command::OutputTimestamped {
                uuid: uuid(),
                timestamp: i64::from(i32::MAX) * 10,
                output: b"line".to_vec(),
            },
            Command::Reschedule {
                name: b"hello".to_vec(),
                next,
                period: Some(Period::Weekly),
            },
            Command::InfoReply(Info {
                schedule: vec![ScheduleItem {
                    next,
                    period: Period::Hourly,
                    job: Job::Orb(OrbJob {
                        name: b"o".to_vec(),
                        opam_package: b"p".to_vec(),
                    }),
                }],
                queues: vec![QueueInfo {
                    platform: b"linux".to_vec(),
                    jobs: vec![Job::Script(job.clone())],
                }],
                running: vec![Running {
                    started: next,
                    uuid: uuid(),
                    job,
                }],
                dropped_platforms: vec![b"old".to_vec()],
            }),
        ]
    }

    #[test]
    fn commands_round_trip() {
        for command in samples() {
            let bytes = command.encode();
            assert_eq!(Command::decode(&bytes).unwrap(), command);
        }
    }

    #[test]
    fn every_prefix_and_every_extension_is_refused() {
        for command in samples() {
            let bytes = command.encode();
            for end in 0..bytes.len() {
                assert!(
                    Command::decode(&bytes[..end]).is_err(),
                    "{}: prefix of {end} bytes decoded",
                    command.name()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let err = Command::decode(&longer).unwrap_err();
            assert!(
                matches!(
                    err,
                    LegacyError::Malformed {
                        source: RecordError::TrailingBytes { .. },
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn retired_commands_are_refused_with_their_tag() {
        let err = Command::decode(&[0xa8, 0x02, 0x05, 0x00]).unwrap_err();
        assert!(
            matches!(err, LegacyError::Retired { offset: 0, tag: 8 }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "byte 0: command [8] is retired; the reference refuses it too"
        );
    }

    #[test]
    fn a_null_with_content_is_refused() {
        assert!(Command::decode(&[0xa6, 0x03, 0x05, 0x01, 0x00]).is_err());
        assert_eq!(
            Command::decode(&[0xa6, 0x02, 0x05, 0x00]).unwrap(),
            Command::Info
        );
    }
}
