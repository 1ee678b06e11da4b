//! The one parser behind [`Exec::decode`] and [`read_record`]. It reads
//! forward through any [`Read`], so both are equally strict; artifact bodies
//! go to a callback.

use std::io::{self, BufReader, Read};
use std::mem::size_of;

use super::der::{self, parse_int, parse_time};
use super::{
    Artifact, ConsoleLine, Exec, ExecResult, RecordError, RecordHead, ScriptJob, TimeForm,
    TimeForms,
};
use chrono::{DateTime, Utc};

/// How much [`read_record`] keeps in memory at most: everything but artifact
/// bodies (job, script, console, paths, message). 1 GiB.
pub const DEFAULT_HEAD_LIMIT: u64 = 1 << 30;

/// Initial allocation for a string whose declared length cannot be checked
/// against the input's size; it grows with what actually arrives.
const CHUNK: u64 = 64 * 1024;

/// Longest time content considered (the longest lenient form is 24 bytes).
const MAX_TIME_LEN: u64 = 64;

/// Reads a record from `input` without holding its artifacts in memory.
///
/// Everything but the artifact bodies is parsed into the returned
/// [`RecordHead`] (at most [`DEFAULT_HEAD_LIMIT`] bytes of it). Each artifact
/// is handed, in record order, to `on_artifact(path, len, body)` where `body`
/// yields exactly the artifact's `len` bytes; what the callback leaves unread
/// is skipped. The input is read through an internal 64 KiB buffer.
///
/// As strict as [`Exec::decode`], trailing bytes included; but the callback
/// has already seen the artifacts when an error after them (such as trailing
/// bytes) is found, so treat its output as provisional until this returns
/// `Ok`.
///
/// # Errors
///
/// [`RecordError`] as for [`Exec::decode`]; [`RecordError::Artifact`] when the
/// callback fails, [`RecordError::TooLarge`] past the limit, and
/// [`RecordError::Io`] when `input` fails. A body read that hits the end of
/// the input returns an [`io::ErrorKind::UnexpectedEof`] error to the
/// callback and the record is reported [`RecordError::Truncated`].
pub fn read_record<R: Read>(
    input: R,
    on_artifact: impl FnMut(&[u8], u64, &mut dyn Read) -> io::Result<()>,
) -> Result<RecordHead, RecordError> {
    read_record_with_limit(input, DEFAULT_HEAD_LIMIT, on_artifact)
}

/// [`read_record`] keeping at most `limit` bytes in memory.
///
/// # Errors
///
/// As [`read_record`].
pub fn read_record_with_limit<R: Read>(
    input: R,
    limit: u64,
    mut on_artifact: impl FnMut(&[u8], u64, &mut dyn Read) -> io::Result<()>,
) -> Result<RecordHead, RecordError> {
    let mut parser = Parser {
        input: BufReader::with_capacity(CHUNK as usize, input),
        pos: 0,
        input_len: None,
        budget: limit,
        limit,
        index: None,
    };
    parser.record(&mut |path, _, len, body| on_artifact(path, len, body))
}

/// Reads a record as [`index_record`] does (its console located, not
/// kept), handing each artifact to `on_artifact(path, offset, len, body)`
/// where `offset` is where its `len` bytes start in the record: a reader
/// can later serve them straight from the file.
///
/// # Errors
///
/// As [`read_record`].
pub fn locate_artifacts<R: Read>(
    input: R,
    mut on_artifact: impl FnMut(&[u8], u64, u64, &mut dyn Read) -> io::Result<()>,
) -> Result<RecordHead, RecordError> {
    let mut parser = Parser {
        input: BufReader::with_capacity(CHUNK as usize, input),
        pos: 0,
        input_len: None,
        budget: DEFAULT_HEAD_LIMIT,
        limit: DEFAULT_HEAD_LIMIT,
        index: Some(ConsoleIndex {
            every: u64::MAX,
            checkpoints: Vec::new(),
            lines: 0,
        }),
    };
    parser.record(&mut on_artifact)
}

/// Where a record's console lines are, without the lines: the offset of
/// every [`ConsoleIndex::every`]-th line, so the console can be read back in
/// pieces (with [`read_console_lines`]) in either order and bounded memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleIndex {
    /// Lines per checkpoint.
    pub every: u64,
    /// Byte offsets in the record of lines `0, every, 2 * every, ...` in
    /// record order (the newest line first).
    pub checkpoints: Vec<u64>,
    /// Lines in all.
    pub lines: u64,
}

impl ConsoleIndex {
    /// The piece starting at checkpoint `k`: its offset and how many lines
    /// it holds (in record order: lines `k * every ..`).
    pub fn piece(&self, k: usize) -> Option<(u64, u64)> {
        let offset = *self.checkpoints.get(k)?;
        let first = k as u64 * self.every;
        Some((offset, self.every.min(self.lines - first)))
    }
}

/// Reads a record as [`read_record`] does (as strictly, skipping artifact
/// bodies), but locates its console instead of keeping it: the returned
/// head's console is empty, and memory stays within one line plus 8 bytes
/// per `every` lines.
///
/// # Errors
///
/// As [`read_record`].
pub fn index_record<R: Read>(
    input: R,
    every: u64,
) -> Result<(RecordHead, ConsoleIndex), RecordError> {
    let mut parser = Parser {
        input: BufReader::with_capacity(CHUNK as usize, input),
        pos: 0,
        input_len: None,
        budget: DEFAULT_HEAD_LIMIT,
        limit: DEFAULT_HEAD_LIMIT,
        index: Some(ConsoleIndex {
            every: every.max(1),
            checkpoints: Vec::new(),
            lines: 0,
        }),
    };
    let head = parser.record(&mut |_, _, _, _| Ok(()))?;
    let index = parser.index.take().expect("set above");
    Ok((head, index))
}

/// Reads `count` console lines, in record order, from `input` positioned at
/// `offset` in a record: a line's start, as found by [`index_record`].
///
/// # Errors
///
/// [`RecordError`] when the bytes there are not `count` console lines.
pub fn read_console_lines<R: Read>(
    input: R,
    offset: u64,
    count: u64,
) -> Result<Vec<ConsoleLine>, RecordError> {
    let mut parser = Parser {
        input: BufReader::with_capacity(CHUNK as usize, input),
        pos: offset,
        input_len: None,
        budget: DEFAULT_HEAD_LIMIT,
        limit: DEFAULT_HEAD_LIMIT,
        index: None,
    };
    let mut lines = Vec::with_capacity(usize::try_from(count.min(4096)).unwrap_or(0));
    for _ in 0..count {
        lines.push(parser.console_line(u64::MAX)?);
    }
    Ok(lines)
}

pub(super) fn decode_exec(bytes: &[u8]) -> Result<Exec, RecordError> {
    let mut parser = Parser::over_slice(bytes);
    let mut output = Vec::new();
    let head = parser.record(&mut |path, _, len, body| {
        // `len` was checked against the input's size: this allocation is
        // never larger than the input.
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        body.read_to_end(&mut data)?;
        output.push(Artifact {
            path: path.to_vec(),
            data,
        });
        Ok(())
    })?;
    Ok(Exec::from_parts(head, output))
}

/// `(path, offset of the body in the record, len, body)`.
type Callback<'c> = dyn FnMut(&[u8], u64, u64, &mut dyn Read) -> io::Result<()> + 'c;

/// The DER reader: the build record's parser, and the element readers the
/// reference's commands and state file (`crate::legacy`) are parsed with.
pub(crate) struct Parser<R> {
    input: R,
    /// Bytes consumed so far.
    pub(crate) pos: u64,
    /// The input's size when known (decoding a slice): declared lengths are
    /// checked against it before anything is allocated.
    input_len: Option<u64>,
    /// What may still be kept in memory.
    budget: u64,
    limit: u64,
    /// Set by [`index_record`]: console lines are located, not kept.
    index: Option<ConsoleIndex>,
}

impl<'a> Parser<&'a [u8]> {
    /// A parser over a whole value in memory: every declared length is checked
    /// against the slice before anything is allocated, and nothing is kept
    /// beyond what the slice holds.
    pub(crate) fn over_slice(bytes: &'a [u8]) -> Parser<&'a [u8]> {
        Parser {
            input: bytes,
            pos: 0,
            input_len: Some(bytes.len() as u64),
            budget: u64::MAX,
            limit: u64::MAX,
            index: None,
        }
    }

    /// The end offset of the whole input.
    pub(crate) fn input_end(&self) -> u64 {
        self.input_len.unwrap_or(u64::MAX)
    }

    /// The next identifier octet, if any, without consuming it.
    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.input.first().copied()
    }
}

impl<R: Read> Parser<R> {
    fn record(&mut self, on_artifact: &mut Callback<'_>) -> Result<RecordHead, RecordError> {
        let root = self.input_len.unwrap_or(u64::MAX);
        let (at, tag) = self.tag("the record")?;
        if tag == der::context(1) {
            return Err(RecordError::NullRecord { offset: at });
        }
        if tag != der::context(0) {
            return Err(RecordError::UnexpectedTag {
                offset: at,
                expected: "[0] (a build record)",
                found: tag,
            });
        }
        let end = self.length(root)?;
        let (_, seq_end) = self.element(der::SEQUENCE, "SEQUENCE (the build record)", end)?;
        let job = self.job(seq_end)?;
        let uuid = self.uuid(seq_end)?;
        let console = self.console(seq_end)?;
        let (started, finished, time_forms) = self.timestamps(seq_end)?;
        let result = self.result(seq_end)?;
        self.output(seq_end, on_artifact)?;
        self.finish(seq_end, "the build record")?;
        self.finish(end, "[0]")?;
        self.no_trailing_bytes()?;
        Ok(RecordHead {
            job,
            uuid,
            console,
            started,
            finished,
            time_forms,
            result,
        })
    }

    pub(crate) fn job(&mut self, end: u64) -> Result<ScriptJob, RecordError> {
        let (_, job_end) = self.element(der::SEQUENCE, "SEQUENCE (job)", end)?;
        let name = self.string(job_end, "UTF8String (job name)")?.1;
        let script = self.string(job_end, "UTF8String (job script)")?.1;
        let files = self.artifacts(job_end, "SEQUENCE OF (job files)")?;
        let platform = if self.pos < job_end {
            Some(self.string(job_end, "UTF8String (job platform)")?.1)
        } else {
            None
        };
        self.finish(job_end, "the job")?;
        Ok(ScriptJob {
            name,
            script,
            files,
            platform,
        })
    }

    pub(crate) fn uuid(&mut self, end: u64) -> Result<[u8; 16], RecordError> {
        let (at, uuid_end) = self.element(der::UTF8_STRING, "UTF8String (uuid)", end)?;
        let len = uuid_end - self.pos;
        if len < 16 {
            return Err(RecordError::Uuid { offset: at, len });
        }
        let mut uuid = [0; 16];
        self.fill(&mut uuid, "the uuid")?;
        // The reference uses the first 16 bytes and ignores the rest.
        self.skip(len - 16, "the uuid")?;
        Ok(uuid)
    }

    fn console(&mut self, end: u64) -> Result<Vec<ConsoleLine>, RecordError> {
        let (_, console_end) = self.element(der::SEQUENCE, "SEQUENCE OF (console)", end)?;
        let mut console = Vec::new();
        while self.pos < console_end {
            let start = self.pos;
            let line = self.console_line(console_end)?;
            match self.index.as_mut() {
                None => console.push(line),
                Some(index) => {
                    if index.lines % index.every == 0 {
                        index.checkpoints.push(start);
                    }
                    index.lines += 1;
                    // Located, not kept.
                    self.budget += (size_of::<ConsoleLine>() + line.data.len()) as u64;
                }
            }
        }
        Ok(console)
    }

    fn console_line(&mut self, end: u64) -> Result<ConsoleLine, RecordError> {
        let (at, line_end) = self.element(der::SEQUENCE, "SEQUENCE (console line)", end)?;
        self.charge(size_of::<ConsoleLine>() as u64, at, "the console")?;
        let delta_ns = self.integer(line_end, "INTEGER (console delta)")?;
        let data = self.string(line_end, "UTF8String (console line)")?.1;
        self.finish(line_end, "a console line")?;
        Ok(ConsoleLine { delta_ns, data })
    }

    fn timestamps(
        &mut self,
        end: u64,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>, TimeForms), RecordError> {
        let (_, ts_end) = self.element(der::SEQUENCE, "SEQUENCE (timestamps)", end)?;
        let (started, started_form) = self.time(ts_end, "UTCTime or GeneralizedTime (started)")?;
        let (finished, finished_form) =
            self.time(ts_end, "UTCTime or GeneralizedTime (finished)")?;
        self.finish(ts_end, "the timestamps")?;
        let forms = TimeForms {
            started: started_form,
            finished: finished_form,
        };
        Ok((started, finished, forms))
    }

    pub(crate) fn time(
        &mut self,
        end: u64,
        expected: &'static str,
    ) -> Result<(DateTime<Utc>, TimeForm), RecordError> {
        let (at, tag) = self.tag_within(end, expected)?;
        let kind = match tag {
            der::UTC_TIME => "UTCTime",
            der::GENERALIZED_TIME => "GeneralizedTime",
            found => {
                return Err(RecordError::UnexpectedTag {
                    offset: at,
                    expected,
                    found,
                })
            }
        };
        let time_end = self.length(end)?;
        let len = time_end - self.pos;
        if len > MAX_TIME_LEN {
            return Err(RecordError::Time {
                offset: at,
                kind,
                text: format!("<{len} bytes>"),
            });
        }
        let content = self.content(len, expected)?;
        parse_time(tag, &content).ok_or_else(|| RecordError::Time {
            offset: at,
            kind,
            text: super::escape_bytes(&content),
        })
    }

    pub(crate) fn result(&mut self, end: u64) -> Result<ExecResult, RecordError> {
        let (at, tag) = self.tag_within(end, "the result")?;
        if !(der::context(0)..=der::context(3)).contains(&tag) {
            return Err(RecordError::UnexpectedTag {
                offset: at,
                expected: "[0]..[3] (result)",
                found: tag,
            });
        }
        let inner_end = self.length(end)?;
        let result = match tag & 0x1f {
            0 => ExecResult::Exited(self.integer(inner_end, "INTEGER (exit code)")?),
            1 => ExecResult::Signalled(self.integer(inner_end, "INTEGER (signal)")?),
            2 => ExecResult::Stopped(self.integer(inner_end, "INTEGER (signal)")?),
            _ => ExecResult::Msg(self.string(inner_end, "UTF8String (result message)")?.1),
        };
        self.finish(inner_end, "the result")?;
        Ok(result)
    }

    fn output(&mut self, end: u64, on_artifact: &mut Callback<'_>) -> Result<(), RecordError> {
        let (_, output_end) = self.element(der::SEQUENCE, "SEQUENCE OF (output)", end)?;
        while self.pos < output_end {
            let (_, item_end) = self.element(der::SEQUENCE, "SEQUENCE (artifact)", output_end)?;
            let path = self.path(item_end, "UTF8String (artifact path)")?;
            let (_, data_end) =
                self.element(der::UTF8_STRING, "UTF8String (artifact data)", item_end)?;
            self.body(&path, data_end - self.pos, on_artifact)?;
            // The path is not kept: give its share of the budget back.
            self.budget += path.len() as u64;
            self.finish(item_end, "an artifact")?;
        }
        Ok(())
    }

    /// A `SEQUENCE OF SEQUENCE { path UTF8String, data UTF8String }` held in
    /// memory: the job's `files` of a record and the artifacts of the
    /// reference's `job_finished` command. Paths are checked as artifact paths.
    pub(crate) fn artifacts(
        &mut self,
        end: u64,
        expected: &'static str,
    ) -> Result<Vec<Artifact>, RecordError> {
        let (_, list_end) = self.element(der::SEQUENCE, expected, end)?;
        let mut list = Vec::new();
        while self.pos < list_end {
            let (at, item_end) =
                self.element(der::SEQUENCE, "SEQUENCE (path and data)", list_end)?;
            self.charge(size_of::<Artifact>() as u64, at, expected)?;
            let path = self.path(item_end, "UTF8String (path)")?;
            let data = self.string(item_end, "UTF8String (data)")?.1;
            self.finish(item_end, "a path and its data")?;
            list.push(Artifact { path, data });
        }
        Ok(list)
    }

    /// A NULL, which must have no content.
    pub(crate) fn null(&mut self, end: u64, expected: &'static str) -> Result<(), RecordError> {
        let (_, null_end) = self.element(der::NULL, expected, end)?;
        self.finish(null_end, "NULL")
    }

    /// Hands `len` bytes of artifact content to the callback, then skips what
    /// it left unread.
    fn body(
        &mut self,
        path: &[u8],
        len: u64,
        on_artifact: &mut Callback<'_>,
    ) -> Result<(), RecordError> {
        let start = self.pos;
        let mut body = Body {
            input: &mut self.input,
            remaining: len,
            failure: None,
        };
        let handled = on_artifact(path, start, len, &mut body);
        let drained = match handled {
            Ok(()) => io::copy(&mut body, &mut io::sink()).map(drop),
            Err(_) => Ok(()),
        };
        let Body {
            remaining, failure, ..
        } = body;
        self.pos = start + (len - remaining);
        match failure {
            Some(BodyFailure::Eof) => Err(RecordError::Truncated {
                offset: self.pos,
                context: "artifact data",
            }),
            Some(BodyFailure::Io(source)) => Err(RecordError::Io {
                offset: self.pos,
                source,
            }),
            None => match (handled, drained) {
                (Err(source), _) => Err(RecordError::Artifact {
                    offset: start,
                    path: path.to_vec(),
                    source,
                }),
                (Ok(()), Err(source)) => Err(RecordError::Io {
                    offset: self.pos,
                    source,
                }),
                (Ok(()), Ok(())) => Ok(()),
            },
        }
    }

    pub(crate) fn no_trailing_bytes(&mut self) -> Result<(), RecordError> {
        if let Some(len) = self.input_len {
            return if self.pos < len {
                Err(RecordError::TrailingBytes { offset: self.pos })
            } else {
                Ok(())
            };
        }
        let mut byte = [0; 1];
        loop {
            return match self.input.read(&mut byte) {
                Ok(0) => Ok(()),
                Ok(_) => Err(RecordError::TrailingBytes { offset: self.pos }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => Err(RecordError::Io {
                    offset: self.pos,
                    source,
                }),
            };
        }
    }

    // --- elements ---

    /// An element with identifier `tag`: returns the identifier's offset and
    /// the content's end, checked to lie within `end`.
    pub(crate) fn element(
        &mut self,
        tag: u8,
        expected: &'static str,
        end: u64,
    ) -> Result<(u64, u64), RecordError> {
        let (at, found) = self.tag_within(end, expected)?;
        if found != tag {
            return Err(RecordError::UnexpectedTag {
                offset: at,
                expected,
                found,
            });
        }
        Ok((at, self.length(end)?))
    }

    /// A UTF8String, kept in memory (and charged to the budget).
    pub(crate) fn string(
        &mut self,
        end: u64,
        expected: &'static str,
    ) -> Result<(u64, Vec<u8>), RecordError> {
        let (at, string_end) = self.element(der::UTF8_STRING, expected, end)?;
        let len = string_end - self.pos;
        self.charge(len, at, expected)?;
        Ok((at, self.content(len, expected)?))
    }

    /// A path: a UTF8String that is not empty and has no NUL.
    pub(crate) fn path(
        &mut self,
        end: u64,
        expected: &'static str,
    ) -> Result<Vec<u8>, RecordError> {
        let (at, path) = self.string(end, expected)?;
        if path.is_empty() || path.contains(&0) {
            return Err(RecordError::Path {
                offset: at,
                path: path[..path.len().min(256)].to_vec(),
            });
        }
        Ok(path)
    }

    pub(crate) fn integer(&mut self, end: u64, expected: &'static str) -> Result<i64, RecordError> {
        let (at, int_end) = self.element(der::INTEGER, expected, end)?;
        let len = int_end - self.pos;
        let invalid = |reason| RecordError::Integer { offset: at, reason };
        if len > 8 {
            return Err(invalid("more than 8 octets (out of range)"));
        }
        let mut buf = [0; 8];
        self.fill(&mut buf[..len as usize], expected)?;
        parse_int(&buf[..len as usize]).map_err(invalid)
    }

    /// Fails unless the element ending at `end` has been read completely.
    pub(crate) fn finish(&mut self, end: u64, context: &'static str) -> Result<(), RecordError> {
        if self.pos == end {
            Ok(())
        } else {
            Err(RecordError::ExtraElement {
                offset: self.pos,
                context,
            })
        }
    }

    // --- octets ---

    /// An identifier octet that must lie within the element ending at `end`.
    pub(crate) fn tag_within(
        &mut self,
        end: u64,
        expected: &'static str,
    ) -> Result<(u64, u8), RecordError> {
        if self.pos >= end {
            return Err(RecordError::Missing {
                offset: self.pos,
                expected,
            });
        }
        self.tag(expected)
    }

    fn tag(&mut self, context: &'static str) -> Result<(u64, u8), RecordError> {
        let at = self.pos;
        let mut byte = [0; 1];
        self.fill(&mut byte, context)?;
        Ok((at, byte[0]))
    }

    /// Definite, minimal length octets; returns the content's end offset,
    /// which must not pass `end`.
    pub(crate) fn length(&mut self, end: u64) -> Result<u64, RecordError> {
        let at = self.pos;
        let bad = |reason| RecordError::Length { offset: at, reason };
        let mut first = [0; 1];
        self.fill(&mut first, "a length")?;
        let len = match first[0] {
            short @ 0..=0x7f => u64::from(short),
            0x80 => return Err(bad("indefinite length (not DER)")),
            long => {
                let n = usize::from(long & 0x7f);
                if n > 8 {
                    return Err(bad("length of more than 8 octets"));
                }
                let mut buf = [0; 8];
                self.fill(&mut buf[8 - n..], "a length")?;
                let len = u64::from_be_bytes(buf);
                if buf[8 - n] == 0 || len < 0x80 {
                    return Err(bad("length not in minimal form (not DER)"));
                }
                len
            }
        };
        if self.pos > end || len > end - self.pos {
            return Err(bad(if Some(end) == self.input_len {
                "longer than the rest of the input"
            } else {
                "longer than the element containing it"
            }));
        }
        Ok(self.pos + len)
    }

    fn charge(&mut self, n: u64, at: u64, context: &'static str) -> Result<(), RecordError> {
        if n > self.budget {
            return Err(RecordError::TooLarge {
                offset: at,
                context,
                limit: self.limit,
            });
        }
        self.budget -= n;
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], context: &'static str) -> Result<(), RecordError> {
        let mut done = 0;
        while done < buf.len() {
            match self.input.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(RecordError::Truncated {
                        offset: self.pos,
                        context,
                    })
                }
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(RecordError::Io {
                        offset: self.pos,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// `len` bytes into memory. The allocation grows with what arrives unless
    /// `len` was checked against the input's size.
    fn content(&mut self, len: u64, context: &'static str) -> Result<Vec<u8>, RecordError> {
        let capacity = if self.input_len.is_some() {
            len
        } else {
            len.min(CHUNK)
        };
        let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let read = (&mut self.input).take(len).read_to_end(&mut out);
        self.pos += out.len() as u64;
        if let Err(source) = read {
            return Err(RecordError::Io {
                offset: self.pos,
                source,
            });
        }
        if (out.len() as u64) < len {
            return Err(RecordError::Truncated {
                offset: self.pos,
                context,
            });
        }
        Ok(out)
    }

    fn skip(&mut self, len: u64, context: &'static str) -> Result<(), RecordError> {
        let copied = io::copy(&mut (&mut self.input).take(len), &mut io::sink());
        let copied = copied.map_err(|source| RecordError::Io {
            offset: self.pos,
            source,
        })?;
        self.pos += copied;
        if copied < len {
            return Err(RecordError::Truncated {
                offset: self.pos,
                context,
            });
        }
        Ok(())
    }
}

/// An artifact's content as the callback sees it: exactly its length, and an
/// error (never a silent end) if the input ends first.
struct Body<'a, R> {
    input: &'a mut R,
    remaining: u64,
    failure: Option<BodyFailure>,
}

enum BodyFailure {
    Eof,
    Io(io::Error),
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the record could not be read"));
        }
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                self.failure = Some(BodyFailure::Eof);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the record ends inside an artifact",
                ))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(BodyFailure::Io(e));
                Err(io::Error::new(kind, "the record could not be read"))
            }
        }
    }
}
