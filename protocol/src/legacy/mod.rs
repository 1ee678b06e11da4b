//! The reference implementation's own protocol and state file (robur's OCaml
//! builder, its `Builder.Asn` module), so that its `builder-worker` and
//! `builder-client` keep working against this server during a migration and
//! its `state` file can be imported.
//!
//! - [`command`]: the wire commands ([`Command`]), worker protocol
//!   [`WORKER_VERSION`] and client protocol [`CLIENT_VERSION`]. On the wire a
//!   command is one frame: the same 8-byte big-endian length as
//!   [`crate::codec`], then one DER value. [`dialect`] tells from the first
//!   frame's payload which protocol a peer speaks.
//! - [`state`]: the reference server's persistent `state` file ([`State`]).
//!
//! # One DER implementation
//!
//! Everything here is read with the build record's reader and written with
//! its writer ([`crate::record`], whose module docs say why it is a small
//! purpose-built codec): the same identifier, length, INTEGER and time rules,
//! and the same `ScriptJob`, `Result` and artifact list, which are the same
//! ASN.1 in the record and in the commands ([`ScriptJob`], [`ExecResult`],
//! [`Artifact`]).
//!
//! # As strict, and as lenient, as the reference
//!
//! Decoding accepts exactly what the reference decodes (checked against its
//! golden vectors in `fixtures/cmd`, `fixtures/state`, `fixtures/quirks` and
//! `fixtures/e2e`): explicit context tags, definite minimal lengths, no
//! trailing bytes, UTF8String never validated, times in either form with the
//! record's leniency, a uuid of at least 16 bytes (the first 16 are used),
//! artifact paths non-empty and without NUL. It also reads what the reference
//! reads for backward compatibility but never writes: the `[7]` info reply
//! without dropped platforms, the `[11]` execute without a platform, and in
//! the state file the `[1]` schedule entry of old servers. The commands the
//! reference refuses with an assertion (`[0]`, `[1]` and `[8]`) are refused
//! with [`LegacyError::Retired`]; the state items it skips with a warning
//! (`[0]` and `[2]`, jobs queued by old servers) are skipped here too and
//! reported as [`StateWarning`] values for the caller to log.
//!
//! Encoding writes what the reference writes: every vector the reference
//! wrote re-encodes to identical bytes. The time form that was read (UTCTime,
//! `.000`) is kept in [`Time`] so those re-encode identically as well; the
//! backward-compatible tags above re-encode in their current form (`[22]`,
//! `[20]`, `[3]`), as the reference itself would write them.
//!
//! # Periods and cron triggers
//!
//! The reference knows four periods ([`Period`]); this project adds cron
//! expressions ([`Trigger::Cron`]). [`Period::to_trigger`] and
//! [`Period::from_trigger`] map between them. An old client's `info` cannot
//! represent a cron expression. **Choice:** a cron job is shown, with the
//! period nearest to the expression's interval at the moment of the request
//! ([`Period::nearest`]): the job stays visible to operators still using the
//! old client (so nobody schedules it a second time believing it gone), and
//! its `next` time, which the old client prints, is exact. Only the period
//! label is approximate: an interval up to about 4.9 hours shows as
//! `hourly`, up to about 2.6 days as `daily`, anything longer as `weekly`,
//! and an expression that never fires again as `never`.

pub mod command;
pub mod state;

use chrono::{DateTime, Utc};

use crate::message::{JobKind, JobSpec};
use crate::record::der::{self, Node};
use crate::record::read::Parser;
use crate::record::write::job_node;
use crate::record::{RecordError, TimeForm};
use crate::trigger::Trigger;

pub use crate::record::{Artifact, ExecResult, ScriptJob};
pub use command::{Command, Info, PeerKind, QueueInfo, Running, CLIENT_VERSION, WORKER_VERSION};
pub use state::{DecodedState, State, StateItem, StateWarning};

/// How often a job of the reference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// Every hour.
    Hourly,
    /// Every day.
    Daily,
    /// Every week.
    Weekly,
    /// Only when scheduled and on `execute`.
    Never,
}

impl Period {
    /// The name the reference prints.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Never => "never",
        }
    }

    /// The same period as this project's trigger.
    pub fn to_trigger(self) -> Trigger {
        match self {
            Period::Hourly => Trigger::Hourly,
            Period::Daily => Trigger::Daily,
            Period::Weekly => Trigger::Weekly,
            Period::Never => Trigger::Never,
        }
    }

    /// The period a trigger is, or `None` for a cron expression (see
    /// [`Period::nearest`] for showing one to a reference client).
    pub fn from_trigger(trigger: &Trigger) -> Option<Period> {
        match trigger {
            Trigger::Hourly => Some(Period::Hourly),
            Trigger::Daily => Some(Period::Daily),
            Trigger::Weekly => Some(Period::Weekly),
            Trigger::Never => Some(Period::Never),
            Trigger::Cron(_) => None,
        }
    }

    /// The period to show a reference client for `trigger` at `now` (module
    /// docs, "Periods and cron triggers"): the trigger's own period, or for a
    /// cron expression the period nearest (on a logarithmic scale) to the gap
    /// between its next two runs after `now`; `never` when it has fewer than
    /// two runs left.
    pub fn nearest(trigger: &Trigger, now: DateTime<Utc>) -> Period {
        if let Some(period) = Period::from_trigger(trigger) {
            return period;
        }
        let Some(first) = trigger.next_after(now, now) else {
            return Period::Never;
        };
        let Some(second) = trigger.next_after(first, first) else {
            return Period::Never;
        };
        let gap = (second - first).num_seconds() as f64;
        // Geometric means of neighbouring periods: the boundaries where one
        // period stops being the nearest on a logarithmic scale.
        let hour = 3600.0_f64;
        let day = 24.0 * hour;
        let week = 7.0 * day;
        if gap <= (hour * day).sqrt() {
            Period::Hourly
        } else if gap <= (day * week).sqrt() {
            Period::Daily
        } else {
            Period::Weekly
        }
    }
}

impl From<Period> for Trigger {
    fn from(period: Period) -> Trigger {
        period.to_trigger()
    }
}

/// An orb build job of the reference: an opam package built on every
/// platform that has a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrbJob {
    /// The job's name.
    pub name: Vec<u8>,
    /// The opam package.
    pub opam_package: Vec<u8>,
}

/// A scheduled or queued job of the reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// A script for one platform.
    Script(ScriptJob),
    /// An orb build.
    Orb(OrbJob),
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &[u8] {
        match self {
            Job::Script(job) => &job.name,
            Job::Orb(job) => &job.name,
        }
    }
}

impl From<&JobSpec> for Job {
    /// How a job of this project looks to the reference's peers.
    fn from(spec: &JobSpec) -> Job {
        match &spec.kind {
            JobKind::Script { platform, script } => Job::Script(ScriptJob::new(
                spec.name.as_bytes(),
                script.as_bytes(),
                Some(platform.as_bytes().to_vec()),
            )),
            JobKind::Orb { opam_package } => Job::Orb(OrbJob {
                name: spec.name.as_bytes().to_vec(),
                opam_package: opam_package.as_bytes().to_vec(),
            }),
        }
    }
}

impl TryFrom<&Job> for JobSpec {
    type Error = NotUtf8;

    /// A reference job as this project schedules it. A script job without a
    /// platform gets the reference's default, `no-platform`.
    ///
    /// # Errors
    ///
    /// [`NotUtf8`] naming the field that is not UTF-8 (the reference never
    /// checks, this project's jobs are text).
    fn try_from(job: &Job) -> Result<JobSpec, NotUtf8> {
        let text = |field, value: &[u8]| {
            String::from_utf8(value.to_vec()).map_err(|_| NotUtf8 {
                field,
                value: value.to_vec(),
            })
        };
        let name = text("name", job.name())?;
        let kind = match job {
            Job::Script(job) => JobKind::Script {
                platform: text("platform", job.platform_or_default())?,
                script: text("script", &job.script)?,
            },
            Job::Orb(job) => JobKind::Orb {
                opam_package: text("opam package", &job.opam_package)?,
            },
        };
        Ok(JobSpec { name, kind })
    }
}

/// A field of a reference job that is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {field} is not UTF-8: \"{}\"", crate::record::escape_bytes(value))]
pub struct NotUtf8 {
    /// Which field.
    pub field: &'static str,
    /// Its bytes.
    pub value: Vec<u8>,
}

/// A time as the reference's commands and state file carry it, with the
/// form it was read in so that it re-encodes to the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Time {
    /// The instant (millisecond precision once read).
    pub at: DateTime<Utc>,
    /// How it is written; [`TimeForm::default`] is what the reference writes.
    pub form: TimeForm,
}

impl From<DateTime<Utc>> for Time {
    /// A time written the reference's way.
    fn from(at: DateTime<Utc>) -> Time {
        Time {
            at,
            form: TimeForm::default(),
        }
    }
}

/// A schedule entry: a job, its next run and its period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleItem {
    /// When the job runs next.
    pub next: Time,
    /// How often it runs.
    pub period: Period,
    /// The job.
    pub job: Job,
}

/// Which protocol a connection speaks, told from its first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The reference's DER commands ([`Command`]).
    Reference,
    /// This project's bincode messages, starting with a
    /// [`Hello`](crate::message::Hello).
    Builder,
}

/// Tells from the payload of a connection's first frame (without its 8-byte
/// length) whether the peer speaks the reference's protocol or this
/// project's.
///
/// Every reference command is one DER value `[n] EXPLICIT ...` whose first
/// byte is a context-class constructed identifier (`0xa0..=0xbe`) and whose
/// length is at least 2, since the content is at least one whole element. A
/// [`Hello`](crate::message::Hello) starts with its protocol version as a
/// bincode varint (one byte below 251, else the marker 251 or 252), followed
/// for every version below 251 by the role's variant index, 0 or 1. So the
/// two differ in the first byte for every version outside `0xa0..=0xbe`, and
/// in the second byte for those inside: the answer is exact for every hello
/// this project can send. Anything else (garbage, an empty payload) is
/// [`Dialect::Builder`], whose decoder then refuses it with a clear message.
pub fn dialect(payload: &[u8]) -> Dialect {
    match payload {
        [first, second, ..] if (0xa0..=0xbe).contains(first) && *second >= 2 => Dialect::Reference,
        _ => Dialect::Builder,
    }
}

/// Why a reference command or state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The bytes are not a well-formed value of the schema.
    #[error("malformed {what}")]
    Malformed {
        /// `reference command` or `reference state file`.
        what: &'static str,
        /// What is wrong, and where.
        #[source]
        source: RecordError,
    },
    /// A command the reference no longer accepts (it fails an assertion on
    /// them): `[0]` and `[1]` (old job requests) and `[8]`.
    #[error("byte {offset}: command [{tag}] is retired; the reference refuses it too")]
    Retired {
        /// Offset of the identifier octet.
        offset: u64,
        /// The context tag number.
        tag: u8,
    },
}

impl LegacyError {
    fn command(source: RecordError) -> LegacyError {
        LegacyError::Malformed {
            what: "reference command",
            source,
        }
    }

    fn state(source: RecordError) -> LegacyError {
        LegacyError::Malformed {
            what: "reference state file",
            source,
        }
    }
}

type Reader<'a> = Parser<&'a [u8]>;

/// The tag number of a context-class constructed identifier.
fn context_number(tag: u8) -> Option<u8> {
    (tag & 0xe0 == 0xa0 && tag & 0x1f != 0x1f).then_some(tag & 0x1f)
}

/// `[n] EXPLICIT`: reads the identifier and length; returns the tag number and
/// the content's end.
fn explicit_header(
    r: &mut Reader<'_>,
    end: u64,
    expected: &'static str,
    numbers: std::ops::RangeInclusive<u8>,
) -> Result<(u64, u8, u64), RecordError> {
    let (at, tag) = r.tag_within(end, expected)?;
    match context_number(tag) {
        Some(n) if numbers.contains(&n) => Ok((at, n, r.length(end)?)),
        _ => Err(RecordError::UnexpectedTag {
            offset: at,
            expected,
            found: tag,
        }),
    }
}

/// `[n] EXPLICIT NULL` with `n` in `0..=3`: a period.
fn read_period(r: &mut Reader<'_>, end: u64) -> Result<Period, RecordError> {
    let (_, n, inner) = explicit_header(r, end, "[0]..[3] (period)", 0..=3)?;
    r.null(inner, "NULL (period)")?;
    r.finish(inner, "the period")?;
    Ok(match n {
        0 => Period::Hourly,
        1 => Period::Daily,
        2 => Period::Weekly,
        _ => Period::Never,
    })
}

fn period_node<'a>(period: Period) -> Node<'a> {
    let n = match period {
        Period::Hourly => 0,
        Period::Daily => 1,
        Period::Weekly => 2,
        Period::Never => 3,
    };
    Node::explicit(n, Node::null())
}

/// `SEQUENCE { name UTF8String, opam_package UTF8String }`.
fn read_orb_job(r: &mut Reader<'_>, end: u64) -> Result<OrbJob, RecordError> {
    let (_, seq) = r.element(der::SEQUENCE, "SEQUENCE (orb build job)", end)?;
    let name = r.string(seq, "UTF8String (job name)")?.1;
    let opam_package = r.string(seq, "UTF8String (opam package)")?.1;
    r.finish(seq, "the orb build job")?;
    Ok(OrbJob { name, opam_package })
}

fn orb_job_node(job: &OrbJob) -> Node<'_> {
    Node::sequence(vec![
        Node::string(&job.name),
        Node::string(&job.opam_package),
    ])
}

/// `CHOICE { [0] ScriptJob, [1] OrbBuildJob }`.
fn read_job(r: &mut Reader<'_>, end: u64) -> Result<Job, RecordError> {
    let (_, n, inner) = explicit_header(r, end, "[0] or [1] (job)", 0..=1)?;
    let job = if n == 0 {
        Job::Script(r.job(inner)?)
    } else {
        Job::Orb(read_orb_job(r, inner)?)
    };
    r.finish(inner, "the job")?;
    Ok(job)
}

fn any_job_node(job: &Job) -> Node<'_> {
    match job {
        Job::Script(job) => Node::explicit(0, job_node(job)),
        Job::Orb(job) => Node::explicit(1, orb_job_node(job)),
    }
}

/// `CHOICE { UTCTime, GeneralizedTime }`.
fn read_time(r: &mut Reader<'_>, end: u64, expected: &'static str) -> Result<Time, RecordError> {
    let (at, form) = r.time(end, expected)?;
    Ok(Time { at, form })
}

fn time_node<'a>(time: &Time) -> Node<'a> {
    Node::time(&time.at, time.form)
}

/// `SEQUENCE { next CHOICE { UTCTime, GeneralizedTime }, period, job }`; the
/// state file's old form has a bare `ScriptJob` as its job.
fn read_schedule_item(
    r: &mut Reader<'_>,
    end: u64,
    old_form: bool,
) -> Result<ScheduleItem, RecordError> {
    let (_, seq) = r.element(der::SEQUENCE, "SEQUENCE (schedule entry)", end)?;
    let next = if old_form {
        // The old entry's `next` is UTCTime only.
        match r.peek_tag() {
            Some(der::UTC_TIME) | None => read_time(r, seq, "UTCTime (next run)")?,
            Some(found) => {
                return Err(RecordError::UnexpectedTag {
                    offset: r.pos,
                    expected: "UTCTime (next run)",
                    found,
                })
            }
        }
    } else {
        read_time(r, seq, "UTCTime or GeneralizedTime (next run)")?
    };
    let period = read_period(r, seq)?;
    let job = if old_form {
        Job::Script(r.job(seq)?)
    } else {
        read_job(r, seq)?
    };
    r.finish(seq, "the schedule entry")?;
    Ok(ScheduleItem { next, period, job })
}

fn schedule_item_node(item: &ScheduleItem) -> Node<'_> {
    Node::sequence(vec![
        time_node(&item.next),
        period_node(item.period),
        any_job_node(&item.job),
    ])
}

/// `SEQUENCE { platform UTF8String, jobs SEQUENCE OF Job }`.
fn read_queue(r: &mut Reader<'_>, end: u64) -> Result<(Vec<u8>, Vec<Job>), RecordError> {
    let (_, seq) = r.element(der::SEQUENCE, "SEQUENCE (queue)", end)?;
    let platform = r.string(seq, "UTF8String (queue platform)")?.1;
    let (_, jobs_end) = r.element(der::SEQUENCE, "SEQUENCE OF (queued jobs)", seq)?;
    let mut jobs = Vec::new();
    while r.pos < jobs_end {
        jobs.push(read_job(r, jobs_end)?);
    }
    r.finish(seq, "the queue")?;
    Ok((platform, jobs))
}

fn queue_node<'a>(platform: &'a [u8], jobs: &'a [Job]) -> Node<'a> {
    Node::sequence(vec![
        Node::string(platform),
        Node::sequence(jobs.iter().map(any_job_node).collect()),
    ])
}

/// The end of the whole input; fails on trailing bytes.
fn done(r: &mut Reader<'_>) -> Result<(), RecordError> {
    r.no_trailing_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn periods_map_to_triggers_and_back() {
        for period in [Period::Hourly, Period::Daily, Period::Weekly, Period::Never] {
            let trigger = Trigger::from(period);
            assert_eq!(Period::from_trigger(&trigger), Some(period));
            assert_eq!(trigger.to_string(), period.name());
        }
        assert_eq!(
            Period::from_trigger(&Trigger::cron("0 3 * * *").unwrap()),
            None
        );
    }

    #[test]
    fn a_cron_trigger_shows_as_the_nearest_period() {
        let now = Utc.with_ymd_and_hms(2024, 1, 1, 12, 30, 0).unwrap();
        let nearest = |expr: &str| Period::nearest(&Trigger::cron(expr).unwrap(), now);
        assert_eq!(nearest("*/5 * * * *"), Period::Hourly);
        assert_eq!(nearest("0 */4 * * *"), Period::Hourly);
        assert_eq!(nearest("0 */6 * * *"), Period::Daily);
        assert_eq!(nearest("0 3 * * *"), Period::Daily);
        assert_eq!(nearest("0 3 */2 * *"), Period::Daily);
        assert_eq!(nearest("0 3 * * 1"), Period::Weekly);
        assert_eq!(nearest("0 0 1 * *"), Period::Weekly);
        // The native form with a year: no run after 2023, so none left.
        assert_eq!(nearest("0 0 0 1 1 * 2023"), Period::Never);
        assert_eq!(Period::nearest(&Trigger::Weekly, now), Period::Weekly);
    }

    #[test]
    fn jobs_convert_to_and_from_this_projects_jobs() {
        for kind in [
            JobKind::Script {
                platform: "linux".into(),
                script: "echo\n".into(),
            },
            JobKind::Orb {
                opam_package: "pkg".into(),
            },
        ] {
            let spec = JobSpec {
                name: "j".into(),
                kind,
            };
            assert_eq!(JobSpec::try_from(&Job::from(&spec)), Ok(spec));
        }
        let no_platform = Job::Script(ScriptJob::new("j", "true", None));
        assert_eq!(
            JobSpec::try_from(&no_platform).unwrap().kind,
            JobKind::Script {
                platform: "no-platform".into(),
                script: "true".into()
            }
        );
        let binary = Job::Script(ScriptJob::new("j", b"\xff".to_vec(), None));
        let err = JobSpec::try_from(&binary).unwrap_err();
        assert_eq!(err.to_string(), "job script is not UTF-8: \"\\xff\"");
    }

    #[test]
    fn the_first_frame_tells_the_dialects_apart() {
        use crate::message::{encode, Hello, Role};
        for version in [
            0,
            1,
            2,
            0x9f,
            0xa0,
            0xb6,
            0xbe,
            0xbf,
            250,
            251,
            65535,
            1 << 20,
            u32::MAX,
        ] {
            for role in [
                Role::Client,
                Role::Worker {
                    platform: "p".into(),
                    host: "h".into(),
                },
            ] {
                let hello = Hello {
                    version,
                    role,
                    token: Some("t".into()),
                    software: "s".into(),
                };
                assert_eq!(
                    dialect(&encode(&hello).unwrap()),
                    Dialect::Builder,
                    "{hello:?}"
                );
            }
        }
        assert_eq!(dialect(&Command::Info.encode()), Dialect::Reference);
        assert_eq!(dialect(&[]), Dialect::Builder);
        assert_eq!(dialect(&[0xa6]), Dialect::Builder);
    }
}
