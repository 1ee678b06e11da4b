//! The `exec` build record: one DER value per finished build, written to
//! `DIR/<job>/<uuid>/full` and POSTed as the body of builder-web's `/upload`
//! (SPEC section 4). It is byte-compatible with robur's OCaml builder, checked
//! against its golden vectors in `fixtures/`.
//!
//! # Why a small purpose-built DER codec
//!
//! General DER crates (`der`, `yasna`, `asn1`, `rasn`, `simple_asn1`) were
//! considered; none fits this record:
//!
//! - the record carries arbitrary binary artifacts *inside UTF8String*, and
//!   those crates validate UTF8String contents (or hand them out as `&str`);
//! - the reference writes times as GeneralizedTime with exactly three digits of
//!   *truncated* milliseconds (`.000` for a sub-millisecond remainder), which
//!   those crates either refuse as non-canonical or normalise away, so a decoded
//!   record would not re-encode to the same bytes;
//! - the reference reads times leniently (UTCTime, a missing `Z`, `+hhmm`
//!   offsets, absent minutes or seconds, `.5` meaning 5 ms, second 60) and
//!   INTEGERs into OCaml's 63-bit `int`; records it wrote or accepted must
//!   read here exactly as they read there;
//! - artifacts can be several GiB: the server writes a record straight from
//!   files on disk with every length computed up front ([`write_record`]), and
//!   `builder-inspect` reads one without loading its artifacts
//!   ([`read_record`]); tree-building decoders want the whole value in memory.
//!
//! The schema is small and fixed, so this module encodes and decodes exactly
//! it: `der` holds the one implementation of headers, lengths, INTEGER and
//! times; `write` lays the record out for both [`Exec::encode`] and
//! [`write_record`]; `read` is the one parser behind [`Exec::decode`] and
//! [`read_record`], which are therefore equally strict. The reference's wire
//! commands and state file ([`crate::legacy`]) are the same kind of DER with
//! the same job, result and artifact list: they are read with the same
//! parser and written with the same `der::Node` writer, not a second codec.
//!
//! # Decoding rules (as established by the fixtures)
//!
//! Explicit context tags; definite, minimal lengths only; no constructed
//! strings; no trailing bytes, neither after the record nor inside a SEQUENCE;
//! the `[1] NULL` alternative is refused; INTEGERs are minimal two's
//! complement of at most 8 bytes within -2^62..=2^62-1; the uuid is a
//! UTF8String of at least 16 bytes (the first 16 are used); UTF8String content
//! is never validated; artifact paths (in `output` and in the job's `files`)
//! must be non-empty and free of NUL, anything else (`..`, absolute) is
//! accepted as the reference accepts it.

pub(crate) mod der;
pub(crate) mod read;
pub(crate) mod write;

use std::borrow::Cow;
use std::fmt;
use std::io;

use chrono::{DateTime, Utc};

use crate::message::{write_outcome, JobOutcome, OutcomeText};
use crate::signal::Signal;

pub use der::{INT_MAX, INT_MIN};
pub use read::{
    index_record, locate_artifacts, read_console_lines, read_record, read_record_with_limit,
    ConsoleIndex, DEFAULT_HEAD_LIMIT,
};
pub use write::{
    console_line_len, encode_console_line, record_len, write_record, write_record_from_spools,
    ConsoleSource, FileArtifact,
};

/// The platform the reference reports for a record whose job has none.
pub const NO_PLATFORM: &[u8] = b"no-platform";

/// A finished build, as stored in a `full` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// The job that ran.
    pub job: ScriptJob,
    /// The build's UUID, raw.
    pub uuid: [u8; 16],
    /// Console output, one entry per line, **newest first**.
    pub console: Vec<ConsoleLine>,
    /// When the job started.
    pub started: DateTime<Utc>,
    /// When the job finished.
    pub finished: DateTime<Utc>,
    /// How `started` and `finished` are written; [`TimeForms::default`] is
    /// what the reference writes. Decoding records the form it read so that
    /// a record re-encodes to identical bytes.
    pub time_forms: TimeForms,
    /// How the job ended.
    pub result: ExecResult,
    /// The artifacts: every file the job left behind.
    pub output: Vec<Artifact>,
}

/// A job as recorded in a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptJob {
    /// The job's name.
    pub name: Vec<u8>,
    /// The shell script that ran.
    pub script: Vec<u8>,
    /// The reference's job `files` list. It is always written empty, but the
    /// reference reads a non-empty one, so decoding keeps whatever it finds
    /// (paths validated like artifact paths) and encoding writes it back.
    pub files: Vec<Artifact>,
    /// The platform; `None` when the record has none (the reference then
    /// reports [`NO_PLATFORM`], see [`ScriptJob::platform_or_default`]).
    /// Always written when present.
    pub platform: Option<Vec<u8>>,
}

impl ScriptJob {
    /// A job with an empty `files` list, as builder writes them.
    pub fn new(
        name: impl Into<Vec<u8>>,
        script: impl Into<Vec<u8>>,
        platform: Option<Vec<u8>>,
    ) -> ScriptJob {
        ScriptJob {
            name: name.into(),
            script: script.into(),
            files: Vec::new(),
            platform,
        }
    }

    /// The platform as the reference reports it: [`NO_PLATFORM`] when absent.
    pub fn platform_or_default(&self) -> &[u8] {
        self.platform.as_deref().unwrap_or(NO_PLATFORM)
    }
}

/// One line of console output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLine {
    /// Nanoseconds since the job started.
    pub delta_ns: i64,
    /// The line, without its newline; any bytes.
    pub data: Vec<u8>,
}

/// How a job ended. Signal numbers are the reference's portable numbers (see
/// [`Signal::portable`]), not the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecResult {
    /// Exited with this code.
    Exited(i64),
    /// Killed by this (portable) signal.
    Signalled(i64),
    /// Stopped by this (portable) signal.
    Stopped(i64),
    /// Aborted, with a message (e.g. `timeout`).
    Msg(Vec<u8>),
}

impl ExecResult {
    /// The signal of a `Signalled` or `Stopped` result.
    pub fn signal(&self) -> Option<Signal> {
        match self {
            ExecResult::Signalled(n) | ExecResult::Stopped(n) => Some(Signal::from_portable(*n)),
            ExecResult::Exited(_) | ExecResult::Msg(_) => None,
        }
    }

    /// Whether the job exited with code 0.
    pub fn is_success(&self) -> bool {
        matches!(self, ExecResult::Exited(0))
    }
}

impl From<&JobOutcome> for ExecResult {
    /// How a build's outcome is recorded.
    fn from(outcome: &JobOutcome) -> ExecResult {
        match outcome {
            JobOutcome::Exited(code) => ExecResult::Exited(i64::from(*code)),
            JobOutcome::Signalled(sig) => ExecResult::Signalled(sig.portable()),
            JobOutcome::Stopped(sig) => ExecResult::Stopped(sig.portable()),
            JobOutcome::Aborted(msg) => ExecResult::Msg(msg.as_bytes().to_vec()),
        }
    }
}

impl From<&ExecResult> for JobOutcome {
    /// A recorded result as it crosses the wire (an exit code beyond `i32`
    /// saturates; a non-UTF-8 message is shown lossily).
    fn from(result: &ExecResult) -> JobOutcome {
        match result {
            ExecResult::Exited(code) => {
                JobOutcome::Exited(i32::try_from(*code).unwrap_or(if *code < 0 {
                    i32::MIN
                } else {
                    i32::MAX
                }))
            }
            ExecResult::Signalled(n) => JobOutcome::Signalled(Signal::from_portable(*n)),
            ExecResult::Stopped(n) => JobOutcome::Stopped(Signal::from_portable(*n)),
            ExecResult::Msg(msg) => JobOutcome::Aborted(lossy(msg).into_owned()),
        }
    }
}

impl fmt::Display for ExecResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecResult::Exited(code) => write_outcome(f, OutcomeText::Exited(code)),
            ExecResult::Signalled(n) => {
                write_outcome(f, OutcomeText::Signalled(&Signal::from_portable(*n)))
            }
            ExecResult::Stopped(n) => {
                write_outcome(f, OutcomeText::Stopped(&Signal::from_portable(*n)))
            }
            ExecResult::Msg(msg) => write_outcome(f, OutcomeText::Aborted(&lossy(msg))),
        }
    }
}

/// A file a job left behind: its path relative to the job directory and its
/// raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Relative path as the job produced it; any bytes but NUL, never empty.
    /// Records from elsewhere may hold `..` or absolute paths: never write
    /// one without checking it.
    pub path: Vec<u8>,
    /// The file's content.
    pub data: Vec<u8>,
}

/// How one time of the record is written. Only a decoded record has anything
/// but the default; builder itself always writes [`TimeForm::Generalized`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimeForm {
    /// GeneralizedTime `YYYYMMDDhhmmss[.fff]Z`, three digits of truncated
    /// milliseconds present iff the sub-second part is non-zero: what the
    /// reference writes.
    #[default]
    Generalized,
    /// GeneralizedTime that always carries `.fff`, even `.000`. The reference
    /// writes `.000` for a time whose sub-second part is below a millisecond;
    /// that reads back as a whole second, and this form writes it back.
    GeneralizedMillis,
    /// UTCTime `YYMMDDhhmmssZ`, which the reference reads but never writes.
    /// Used only where it is exact (years 1950..=2049, whole seconds);
    /// otherwise the time is written as [`TimeForm::Generalized`].
    UtcTime,
}

/// The forms of the two times of a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TimeForms {
    /// How `started` is written.
    pub started: TimeForm,
    /// How `finished` is written.
    pub finished: TimeForm,
}

/// Everything in a record except the artifacts: what [`write_record`] takes
/// alongside artifacts on disk and what [`read_record`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHead {
    /// The job that ran.
    pub job: ScriptJob,
    /// The build's UUID, raw.
    pub uuid: [u8; 16],
    /// Console output, **newest first**.
    pub console: Vec<ConsoleLine>,
    /// When the job started.
    pub started: DateTime<Utc>,
    /// When the job finished.
    pub finished: DateTime<Utc>,
    /// How the times are written ([`TimeForms::default`] for new records).
    pub time_forms: TimeForms,
    /// How the job ended.
    pub result: ExecResult,
}

impl RecordHead {
    /// The build's UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }
}

impl Exec {
    /// The DER encoding, byte-compatible with the reference.
    ///
    /// Infallible: INTEGERs outside -2^62..=2^62-1 are clamped into that range
    /// and times outside years 0000..=9999 into those years (the reference
    /// cannot read anything else), so every encoded record can be decoded.
    pub fn encode(&self) -> Vec<u8> {
        write::encode_exec(self)
    }

    /// Length in bytes of [`Exec::encode`]'s result, without encoding.
    pub fn encoded_len(&self) -> u64 {
        write::exec_len(self)
    }

    /// Decodes a record, as strictly as the reference (see the module docs).
    ///
    /// # Errors
    ///
    /// [`RecordError`] says what is wrong and at which byte offset. No
    /// allocation is ever larger than the input.
    pub fn decode(bytes: &[u8]) -> Result<Exec, RecordError> {
        read::decode_exec(bytes)
    }

    /// The build's UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }

    /// Splits the record into its head and its artifacts.
    pub fn into_parts(self) -> (RecordHead, Vec<Artifact>) {
        let head = RecordHead {
            job: self.job,
            uuid: self.uuid,
            console: self.console,
            started: self.started,
            finished: self.finished,
            time_forms: self.time_forms,
            result: self.result,
        };
        (head, self.output)
    }

    /// Joins a head and its artifacts.
    pub fn from_parts(head: RecordHead, output: Vec<Artifact>) -> Exec {
        Exec {
            job: head.job,
            uuid: head.uuid,
            console: head.console,
            started: head.started,
            finished: head.finished,
            time_forms: head.time_forms,
            result: head.result,
            output,
        }
    }

    /// The console in the order it was produced (oldest first).
    pub fn console_in_order(&self) -> impl Iterator<Item = &ConsoleLine> {
        self.console.iter().rev()
    }
}

/// Why a record could not be read. Offsets count bytes from the start of the
/// record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The input ends before the record does.
    #[error("truncated: input ends at byte {offset} while reading {context}")]
    Truncated {
        /// Where the input ended (or the read that found the end began).
        offset: u64,
        /// What was being read.
        context: &'static str,
    },
    /// An element has the wrong identifier octet (including primitive versus
    /// constructed, e.g. a constructed UTF8String).
    #[error("byte {offset}: expected {expected}, found identifier 0x{found:02x}")]
    UnexpectedTag {
        /// Offset of the identifier octet.
        offset: u64,
        /// What the schema wants there.
        expected: &'static str,
        /// The identifier octet found.
        found: u8,
    },
    /// The `[1] NULL` alternative of the record, which the reference never
    /// writes and cannot read.
    #[error("byte {offset}: the [1] NULL alternative is not a build record")]
    NullRecord {
        /// Offset of the identifier octet.
        offset: u64,
    },
    /// A SEQUENCE or explicit tag ends before all its fields.
    #[error("byte {offset}: missing {expected}: the element containing it ends here")]
    Missing {
        /// Where the element containing it ends.
        offset: u64,
        /// What the schema wants there.
        expected: &'static str,
    },
    /// An indefinite, non-minimal, oversized or overlong length.
    #[error("byte {offset}: bad length: {reason}")]
    Length {
        /// Offset of the length octets.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An INTEGER that is empty, not minimal or out of range.
    #[error("byte {offset}: bad INTEGER: {reason}")]
    Integer {
        /// Offset of the INTEGER's identifier octet.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A time the reference would not read.
    #[error("byte {offset}: bad {kind} \"{text}\"")]
    Time {
        /// Offset of the time's identifier octet.
        offset: u64,
        /// `UTCTime` or `GeneralizedTime`.
        kind: &'static str,
        /// The time's content, escaped.
        text: String,
    },
    /// A uuid shorter than 16 bytes.
    #[error("byte {offset}: uuid has {len} bytes, at least 16 are needed")]
    Uuid {
        /// Offset of the uuid's identifier octet.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// An empty artifact path or one containing NUL.
    #[error(
        "byte {offset}: invalid path \"{}\" (empty or containing NUL)",
        escape_bytes(path)
    )]
    Path {
        /// Offset of the path's identifier octet.
        offset: u64,
        /// The path (its first 256 bytes).
        path: Vec<u8>,
    },
    /// Something after the last field of a SEQUENCE or explicit tag.
    #[error("byte {offset}: unexpected element after the last field of {context}")]
    ExtraElement {
        /// Offset of the unexpected element.
        offset: u64,
        /// The element it was found in.
        context: &'static str,
    },
    /// Bytes after the record.
    #[error("byte {offset}: trailing bytes after the record")]
    TrailingBytes {
        /// Offset of the first trailing byte.
        offset: u64,
    },
    /// The parts of the record kept in memory exceed the reader's limit.
    #[error("byte {offset}: {context} exceeds the in-memory limit of {limit} bytes")]
    TooLarge {
        /// Offset of the element that crossed the limit.
        offset: u64,
        /// What was being read.
        context: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The input could not be read.
    #[error("reading the record at byte {offset}")]
    Io {
        /// Where the failed read began.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The artifact callback of [`read_record`] failed.
    #[error(
        "handling artifact \"{}\" (content at byte {offset})",
        escape_bytes(path)
    )]
    Artifact {
        /// Offset of the artifact's content.
        offset: u64,
        /// The artifact's path.
        path: Vec<u8>,
        /// The callback's error.
        #[source]
        source: io::Error,
    },
}

impl RecordError {
    /// The byte offset the error refers to.
    pub fn offset(&self) -> u64 {
        match self {
            RecordError::Truncated { offset, .. }
            | RecordError::UnexpectedTag { offset, .. }
            | RecordError::NullRecord { offset }
            | RecordError::Missing { offset, .. }
            | RecordError::Length { offset, .. }
            | RecordError::Integer { offset, .. }
            | RecordError::Time { offset, .. }
            | RecordError::Uuid { offset, .. }
            | RecordError::Path { offset, .. }
            | RecordError::ExtraElement { offset, .. }
            | RecordError::TrailingBytes { offset }
            | RecordError::TooLarge { offset, .. }
            | RecordError::Io { offset, .. }
            | RecordError::Artifact { offset, .. } => *offset,
        }
    }
}

/// Bytes as text, invalid UTF-8 replaced: for logs and terminals.
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Bytes as exact ASCII, the way the fixtures' dumps quote strings: every byte
/// outside 0x20..=0x7e as `\xHH`, and `\\ \" \n \r \t`. Without the quotes.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::TimeZone;

    fn sample() -> Exec {
        Exec {
            job: ScriptJob::new("job", "echo hi\n", Some(b"linux".to_vec())),
            uuid: *uuid::Uuid::parse_str("5c4b3a29-1807-46f5-a4b3-c2d1e0f9a8b7")
                .unwrap()
                .as_bytes(),
            console: vec![
                ConsoleLine {
                    delta_ns: 2_000_000,
                    data: b"second".to_vec(),
                },
                ConsoleLine {
                    delta_ns: 1_000,
                    data: b"first".to_vec(),
                },
            ],
            started: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            finished: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 1).unwrap()
                + chrono::TimeDelta::microseconds(1500),
            time_forms: TimeForms::default(),
            result: ExecResult::Signalled(Signal::Kill.portable()),
            output: vec![Artifact {
                path: b"bin/x".to_vec(),
                data: (0..=255).collect(),
            }],
        }
    }

    #[test]
    fn located_artifacts_point_at_their_bytes_in_the_record() {
        let mut exec = sample();
        exec.output.push(Artifact {
            path: b"doc/readme".to_vec(),
            data: vec![7; 300],
        });
        let bytes = exec.encode();
        let mut found = Vec::new();
        let head = locate_artifacts(&bytes[..], |path, offset, len, body| {
            let mut data = Vec::new();
            body.read_to_end(&mut data)?;
            found.push((path.to_vec(), offset, len, data));
            Ok(())
        })
        .unwrap();
        assert_eq!(head.uuid, exec.uuid);
        assert!(head.console.is_empty(), "the console is located, not kept");
        assert_eq!(found.len(), 2);
        for ((path, offset, len, data), artifact) in found.iter().zip(&exec.output) {
            assert_eq!(path, &artifact.path);
            assert_eq!(data, &artifact.data);
            let (start, end) = (*offset as usize, (*offset + *len) as usize);
            assert_eq!(&bytes[start..end], &artifact.data[..]);
        }
    }

    #[test]
    fn a_record_round_trips_except_for_sub_millisecond_time() {
        let exec = sample();
        let bytes = exec.encode();
        assert_eq!(bytes.len() as u64, exec.encoded_len());
        let back = Exec::decode(&bytes).unwrap();
        assert_eq!(
            back.finished,
            Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 1).unwrap() + chrono::TimeDelta::milliseconds(1)
        );
        assert_eq!(
            Exec {
                finished: back.finished,
                ..exec
            },
            back
        );
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.result.signal(), Some(Signal::Kill));
        assert_eq!(back.result.to_string(), "killed by SIGKILL");
    }

    #[test]
    fn an_indexed_console_reads_back_in_pieces_exactly() {
        let mut exec = sample();
        exec.console = (0..10)
            .map(|i| ConsoleLine {
                delta_ns: i,
                data: format!("line {i}").repeat(i as usize).into_bytes(),
            })
            .collect();
        let bytes = exec.encode();
        let whole = read_record(&bytes[..], |_, _, _| Ok(())).unwrap();
        for every in [1, 3, 10, 64] {
            let (head, index) = index_record(&bytes[..], every).unwrap();
            assert!(head.console.is_empty());
            assert_eq!(
                RecordHead {
                    console: whole.console.clone(),
                    ..head
                },
                whole
            );
            assert_eq!((index.every, index.lines), (every, 10));
            let mut console = Vec::new();
            for k in 0..index.checkpoints.len() {
                let (offset, count) = index.piece(k).unwrap();
                let rest = &bytes[offset as usize..];
                console.extend(read_console_lines(rest, offset, count).unwrap());
            }
            assert_eq!(console, exec.console, "every {every}");
            assert_eq!(index.piece(index.checkpoints.len()), None);
        }
        // Not at a line's start: an error naming the offset, not garbage.
        let (_, index) = index_record(&bytes[..], 1).unwrap();
        let wrong = index.checkpoints[1] + 1;
        let err = read_console_lines(&bytes[wrong as usize..], wrong, 1).unwrap_err();
        assert!(
            matches!(err, RecordError::UnexpectedTag { offset, .. } if offset == wrong),
            "{err}"
        );
        // The index is as strict as the reader.
        assert!(index_record(&bytes[..bytes.len() - 1], 4).is_err());
    }

    #[test]
    fn every_prefix_and_every_extension_is_refused() {
        let bytes = sample().encode();
        for end in 0..bytes.len() {
            assert!(
                Exec::decode(&bytes[..end]).is_err(),
                "prefix of {end} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Exec::decode(&longer),
            Err(RecordError::TrailingBytes { offset }) if offset == bytes.len() as u64
        ));
    }

    #[test]
    fn absurd_declared_lengths_are_refused_before_allocating() {
        // [0] with an 8-byte length of 2^62: nothing is allocated, the length
        // is checked against the input first.
        let bytes = [0xa0, 0x88, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x30, 0x81, 0x80];
        let err = Exec::decode(&bytes).unwrap_err();
        assert!(
            matches!(err, RecordError::Length { offset: 1, .. }),
            "{err}"
        );
        // The same through the streaming reader ends at the input's end.
        let err = read_record(&bytes[..], |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(err, RecordError::Truncated { .. }), "{err}");
        // A job name declaring 2^62 bytes inside a record that claims to be
        // as long: the streaming reader reads incrementally, never allocating
        // more than the input provides, and fails at its end.
        let mut hostile = vec![0xa0, 0x88, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        hostile.extend([0x30, 0x88, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0]);
        hostile.extend([0x30, 0x88, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xe0]);
        hostile.extend([0x0c, 0x88, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        hostile.extend(b"abc");
        let err = read_record(&hostile[..], |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(err, RecordError::TooLarge { offset: 30, .. }),
            "{err}"
        );
        let err = read_record_with_limit(&hostile[..], u64::MAX, |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(err, RecordError::Truncated { offset: 43, .. }),
            "{err}"
        );
        let err = Exec::decode(&hostile).unwrap_err();
        assert!(
            matches!(err, RecordError::Length { offset: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_streaming_reader_caps_what_it_keeps_in_memory() {
        let mut exec = sample();
        exec.console = (0..1000)
            .map(|i| ConsoleLine {
                delta_ns: i,
                data: vec![b'x'; 100],
            })
            .collect();
        let bytes = exec.encode();
        let err = read_record_with_limit(&bytes[..], 10_000, |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(err, RecordError::TooLarge { limit: 10_000, .. }),
            "{err}"
        );
        let head = read_record_with_limit(&bytes[..], 1 << 20, |_, _, _| Ok(())).unwrap();
        assert_eq!(head.console.len(), 1000);
    }

    #[test]
    fn errors_name_the_offset() {
        let mut bytes = sample().encode();
        // The first UTF8String is the job name; make it a PrintableString.
        let at = bytes.iter().position(|&b| b == 0x0c).unwrap();
        bytes[at] = 0x13;
        let err = Exec::decode(&bytes).unwrap_err();
        assert_eq!(err.offset(), at as u64);
        assert_eq!(
            err.to_string(),
            format!("byte {at}: expected UTF8String (job name), found identifier 0x13")
        );
    }

    #[test]
    fn a_sequence_ending_before_its_fields_is_reported_as_missing_them() {
        // A record whose job is an empty SEQUENCE: the job name is missing,
        // although the bytes after the job (the uuid) would read as one.
        let mut content = vec![0x30, 0x00, 0x0c, 0x10];
        content.extend([0x11; 16]);
        content.extend([0x30, 0x00, 0x30, 0x22, 0x18, 0x0f]);
        content.extend(b"20240101000000Z");
        content.extend([0x18, 0x0f]);
        content.extend(b"20240101000001Z");
        content.extend([0xa0, 0x03, 0x02, 0x01, 0x00, 0x30, 0x00]);
        let mut bytes = vec![0xa0, content.len() as u8 + 2, 0x30, content.len() as u8];
        bytes.extend(content);
        let err = Exec::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Missing {
                    offset: 6,
                    expected: "UTF8String (job name)"
                }
            ),
            "{err}"
        );
        let err = read_record(&bytes[..], |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(err, RecordError::Missing { offset: 6, .. }),
            "{err}"
        );
    }

    #[test]
    fn escaping_matches_the_fixture_dumps() {
        assert_eq!(
            escape_bytes(b"a \"q\" \\ \n\r\t\x00\x7f\xff~"),
            "a \\\"q\\\" \\\\ \\n\\r\\t\\x00\\x7f\\xff~"
        );
    }

    #[test]
    fn absent_platform_reads_as_the_references_default() {
        let job = ScriptJob::new("j", "true", None);
        assert_eq!(job.platform_or_default(), b"no-platform");
    }
}
