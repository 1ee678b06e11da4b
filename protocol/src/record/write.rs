//! Lays the record out: one walk over the schema that computes every length up
//! front and emits headers and contents to a [`Sink`]. [`Exec::encode`] emits
//! into a `Vec`; [`write_record`] into a writer, copying artifact bodies from
//! files; [`write_record_from_spools`] takes the console from a
//! [`ConsoleSource`] (the server's console spool) instead of the head.
//!
//! Artifact bodies go with [`io::copy`] from the file to the output, the
//! output's buffer flushed first: between two files on Linux that is
//! `copy_file_range`, so the kernel copies (and XFS or btrfs may share the
//! extents) instead of a trip through user space.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::der::{self, header, int_content, time_content, tlv_len, Node, Small};
use super::{Artifact, ConsoleLine, Exec, ExecResult, RecordHead, ScriptJob, TimeForms};
use chrono::{DateTime, Utc};

/// Size of the buffer [`write_record`] writes headers and console through.
const COPY_BUFFER: usize = 64 * 1024;

/// A record's console kept outside its [`RecordHead`]: the server spools a
/// running build's console to files and streams it into the record from
/// there, never holding it whole in memory.
pub trait ConsoleSource {
    /// Bytes the console's lines take in the record: the sum of
    /// [`console_line_len`] over them.
    fn encoded_len(&self) -> u64;
    /// Writes every line, **newest first**, each as
    /// [`encode_console_line`] encodes it; exactly
    /// [`encoded_len`](ConsoleSource::encoded_len) bytes.
    fn write_newest_first(&mut self, out: &mut dyn Write) -> io::Result<()>;
}

/// Bytes one console line takes in a record.
pub fn console_line_len(delta_ns: i64, data_len: usize) -> u64 {
    tlv_len(raw_line_len(delta_ns, data_len as u64))
}

/// Writes one console line as a record holds it:
/// `SEQUENCE { delta INTEGER, data UTF8String }`.
pub fn encode_console_line<W: Write + ?Sized>(
    delta_ns: i64,
    data: &[u8],
    out: &mut W,
) -> io::Result<()> {
    out.write_all(&header(
        der::SEQUENCE,
        raw_line_len(delta_ns, data.len() as u64),
    ))?;
    let content = int_content(delta_ns);
    out.write_all(&header(der::INTEGER, content.len_u64()))?;
    out.write_all(&content)?;
    out.write_all(&header(der::UTF8_STRING, data.len() as u64))?;
    out.write_all(data)
}

fn raw_line_len(delta_ns: i64, data_len: u64) -> u64 {
    tlv_len(int_content(delta_ns).len_u64()) + tlv_len(data_len)
}

/// An artifact waiting on disk: the server keeps artifacts in files while a
/// job runs and streams them into the record when it finishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileArtifact {
    /// Path relative to the job directory, as stored in the record.
    pub path: Vec<u8>,
    /// Where the content is now.
    pub file: PathBuf,
    /// The content's length; the file must have exactly this size when
    /// [`write_record`] copies it.
    pub len: u64,
}

/// Writes the record made of `head` and the artifacts in `artifacts` to `out`,
/// byte for byte what [`Exec::encode`] produces for the same record, and
/// returns the number of bytes written.
///
/// Every length is computed from [`FileArtifact::len`] first; each file is
/// then copied through a 64 KiB buffer, so memory stays bounded whatever the
/// artifacts' sizes. Output is buffered internally and flushed before
/// returning.
///
/// # Errors
///
/// Any error of `out`, and an error naming the file if an artifact cannot be
/// opened or read or its size differs from its `len`. On error part of the
/// record may have been written: write to a temporary file and rename it
/// into place only on success.
pub fn write_record<W: Write>(
    out: &mut W,
    head: &RecordHead,
    artifacts: &[FileArtifact],
) -> io::Result<u64> {
    write_to(out, head, None, artifacts)
}

/// Writes the record made of `head`, the console of `console` and the
/// artifacts in `artifacts` to `out`: byte for byte what [`write_record`]
/// writes when `head.console` holds the same lines (`head.console` itself
/// is not written; leave it empty). Memory stays bounded whatever the
/// console's and the artifacts' sizes.
///
/// # Errors
///
/// As [`write_record`], and an error when `console` writes other than
/// the bytes it announced.
pub fn write_record_from_spools<W: Write>(
    out: &mut W,
    head: &RecordHead,
    console: &mut dyn ConsoleSource,
    artifacts: &[FileArtifact],
) -> io::Result<u64> {
    write_to(out, head, Some(console), artifacts)
}

fn write_to<W: Write>(
    out: &mut W,
    head: &RecordHead,
    console: Option<&mut dyn ConsoleSource>,
    artifacts: &[FileArtifact],
) -> io::Result<u64> {
    let metas: Vec<(&[u8], u64)> = artifacts
        .iter()
        .map(|a| (a.path.as_slice(), a.len))
        .collect();
    let mut layout = Layout::new(HeadRef::from_head(head), &metas);
    if let Some(console) = &console {
        layout.stream_console(console.encoded_len());
    }
    let mut sink = FileSink {
        out: BufWriter::with_capacity(COPY_BUFFER, out),
        artifacts,
        console,
        written: 0,
    };
    let total = layout.emit(&mut sink)?;
    sink.out.flush()?;
    debug_assert_eq!(sink.written, total);
    Ok(total)
}

/// Length in bytes of the record [`write_record`] would write.
pub fn record_len(head: &RecordHead, artifacts: &[FileArtifact]) -> u64 {
    let metas: Vec<(&[u8], u64)> = artifacts
        .iter()
        .map(|a| (a.path.as_slice(), a.len))
        .collect();
    Layout::new(HeadRef::from_head(head), &metas).total()
}

pub(super) fn encode_exec(exec: &Exec) -> Vec<u8> {
    let metas = artifact_metas(&exec.output);
    let layout = Layout::new(HeadRef::from_exec(exec), &metas);
    let total = layout.total();
    let mut sink = VecSink {
        out: Vec::with_capacity(usize::try_from(total).unwrap_or(0)),
        artifacts: &exec.output,
    };
    layout
        .emit(&mut sink)
        .expect("encoding into memory cannot fail");
    debug_assert_eq!(sink.out.len() as u64, total);
    sink.out
}

pub(super) fn exec_len(exec: &Exec) -> u64 {
    let metas = artifact_metas(&exec.output);
    Layout::new(HeadRef::from_exec(exec), &metas).total()
}

fn artifact_metas(artifacts: &[Artifact]) -> Vec<(&[u8], u64)> {
    artifacts
        .iter()
        .map(|a| (a.path.as_slice(), a.data.len() as u64))
        .collect()
}

/// Where the encoded record goes.
trait Sink {
    /// Headers and in-memory contents.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The content of artifact `index`, exactly `len` bytes.
    fn body(&mut self, index: usize, len: u64) -> io::Result<()>;
    /// The console's lines from a [`ConsoleSource`], exactly `len` bytes.
    fn console(&mut self, len: u64) -> io::Result<()>;
}

struct VecSink<'a> {
    out: Vec<u8>,
    artifacts: &'a [Artifact],
}

impl Sink for VecSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn body(&mut self, index: usize, _len: u64) -> io::Result<()> {
        self.out.extend_from_slice(&self.artifacts[index].data);
        Ok(())
    }

    fn console(&mut self, _len: u64) -> io::Result<()> {
        unreachable!("an in-memory record has its console in its head")
    }
}

struct FileSink<'a, 'c, W: Write> {
    out: BufWriter<W>,
    artifacts: &'a [FileArtifact],
    console: Option<&'c mut dyn ConsoleSource>,
    written: u64,
}

/// Counts what goes through it.
struct Counting<'a, W: Write> {
    out: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Sink for FileSink<'_, '_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn body(&mut self, index: usize, len: u64) -> io::Result<()> {
        let artifact = &self.artifacts[index];
        let name = artifact.file.display();
        let context = |e: io::Error, doing: &str| {
            io::Error::new(e.kind(), format!("{doing} artifact file {name}: {e}"))
        };
        let mut file = File::open(&artifact.file).map_err(|e| context(e, "opening"))?;
        // `io::copy` flushes the buffer, then lets the kernel copy between
        // the two files where it can (`copy_file_range` on Linux). Its
        // errors are the output's or the input's: the kind is kept.
        let copied = io::copy(&mut (&mut file).take(len), &mut self.out)?;
        self.written += copied;
        if copied < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("artifact file {name} has {copied} bytes, {len} were announced"),
            ));
        }
        let mut byte = [0; 1];
        loop {
            match file.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("artifact file {name} is longer than the {len} bytes announced"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(context(e, "reading")),
            }
        }
    }

    fn console(&mut self, len: u64) -> io::Result<()> {
        let source = self
            .console
            .as_mut()
            .expect("a streamed console has a source");
        let mut counting = Counting {
            out: &mut self.out,
            count: 0,
        };
        source.write_newest_first(&mut counting)?;
        let count = counting.count;
        self.written += count;
        if count != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the console spool wrote {count} bytes, {len} were announced"),
            ));
        }
        Ok(())
    }
}

/// The head fields of a record, borrowed from an [`Exec`] or a [`RecordHead`].
struct HeadRef<'a> {
    job: &'a ScriptJob,
    uuid: &'a [u8; 16],
    console: &'a [ConsoleLine],
    started: &'a DateTime<Utc>,
    finished: &'a DateTime<Utc>,
    time_forms: TimeForms,
    result: &'a ExecResult,
}

impl<'a> HeadRef<'a> {
    fn from_exec(exec: &'a Exec) -> HeadRef<'a> {
        HeadRef {
            job: &exec.job,
            uuid: &exec.uuid,
            console: &exec.console,
            started: &exec.started,
            finished: &exec.finished,
            time_forms: exec.time_forms,
            result: &exec.result,
        }
    }

    fn from_head(head: &'a RecordHead) -> HeadRef<'a> {
        HeadRef {
            job: &head.job,
            uuid: &head.uuid,
            console: &head.console,
            started: &head.started,
            finished: &head.finished,
            time_forms: head.time_forms,
            result: &head.result,
        }
    }
}

/// A record with the content length of every constructed element computed.
struct Layout<'a> {
    head: HeadRef<'a>,
    artifacts: &'a [(&'a [u8], u64)],
    started: (u8, Small),
    finished: (u8, Small),
    job: Node<'a>,
    console: u64,
    timestamps: u64,
    result: Node<'a>,
    output: u64,
    record: u64,
    /// The console comes from a [`ConsoleSource`], not the head.
    streamed: bool,
}

/// Content length of `SEQUENCE { path UTF8String, data UTF8String }`.
fn pair_len(path: u64, data: u64) -> u64 {
    tlv_len(path) + tlv_len(data)
}

/// Content length of a console entry `SEQUENCE { delta INTEGER, data UTF8String }`.
fn line_len(line: &ConsoleLine) -> u64 {
    raw_line_len(line.delta_ns, line.data.len() as u64)
}

impl<'a> Layout<'a> {
    fn new(head: HeadRef<'a>, artifacts: &'a [(&'a [u8], u64)]) -> Layout<'a> {
        let job = job_node(head.job);
        let console = head.console.iter().map(|l| tlv_len(line_len(l))).sum();
        let started = time_content(head.started, head.time_forms.started);
        let finished = time_content(head.finished, head.time_forms.finished);
        let timestamps = tlv_len(started.1.len_u64()) + tlv_len(finished.1.len_u64());
        let result = result_node(head.result);
        let output = artifacts
            .iter()
            .map(|(path, len)| tlv_len(pair_len(path.len() as u64, *len)))
            .sum();
        let record = job.encoded_len()
            + tlv_len(16)
            + tlv_len(console)
            + tlv_len(timestamps)
            + result.encoded_len()
            + tlv_len(output);
        Layout {
            head,
            artifacts,
            started,
            finished,
            job,
            console,
            timestamps,
            result,
            output,
            record,
            streamed: false,
        }
    }

    /// The console is `len` bytes streamed from a [`ConsoleSource`].
    fn stream_console(&mut self, len: u64) {
        self.record = self.record - tlv_len(self.console) + tlv_len(len);
        self.console = len;
        self.streamed = true;
    }

    /// The whole record's length: `[0] { SEQUENCE { ... } }`.
    fn total(&self) -> u64 {
        tlv_len(tlv_len(self.record))
    }

    fn emit<S: Sink>(&self, sink: &mut S) -> io::Result<u64> {
        let head = &self.head;
        sink.put(&header(der::context(0), tlv_len(self.record)))?;
        sink.put(&header(der::SEQUENCE, self.record))?;

        self.job.emit(&mut |bytes| sink.put(bytes))?;

        string(sink, head.uuid)?;

        sink.put(&header(der::SEQUENCE, self.console))?;
        if self.streamed {
            sink.console(self.console)?;
        } else {
            for line in head.console {
                sink.put(&header(der::SEQUENCE, line_len(line)))?;
                integer(sink, line.delta_ns)?;
                string(sink, &line.data)?;
            }
        }

        sink.put(&header(der::SEQUENCE, self.timestamps))?;
        for (tag, content) in [&self.started, &self.finished] {
            sink.put(&header(*tag, content.len_u64()))?;
            sink.put(content)?;
        }

        self.result.emit(&mut |bytes| sink.put(bytes))?;

        sink.put(&header(der::SEQUENCE, self.output))?;
        for (index, (path, len)) in self.artifacts.iter().enumerate() {
            sink.put(&header(der::SEQUENCE, pair_len(path.len() as u64, *len)))?;
            string(sink, path)?;
            sink.put(&header(der::UTF8_STRING, *len))?;
            sink.body(index, *len)?;
        }
        Ok(self.total())
    }
}

/// `ScriptJob ::= SEQUENCE { name, script, files, platform OPTIONAL }`, as
/// the record and the reference's commands and state file write it.
pub(crate) fn job_node(job: &ScriptJob) -> Node<'_> {
    let mut fields = vec![
        Node::string(&job.name),
        Node::string(&job.script),
        artifacts_node(&job.files),
    ];
    if let Some(platform) = &job.platform {
        fields.push(Node::string(platform));
    }
    Node::sequence(fields)
}

/// `SEQUENCE OF SEQUENCE { path UTF8String, data UTF8String }`: a job's files,
/// and the artifacts of the reference's `job_finished` command.
pub(crate) fn artifacts_node(artifacts: &[Artifact]) -> Node<'_> {
    Node::sequence(
        artifacts
            .iter()
            .map(|a| Node::sequence(vec![Node::string(&a.path), Node::string(&a.data)]))
            .collect(),
    )
}

/// `Result ::= CHOICE { [0] INTEGER, [1] INTEGER, [2] INTEGER, [3] UTF8String }`.
pub(crate) fn result_node(result: &ExecResult) -> Node<'_> {
    match result {
        ExecResult::Exited(n) => Node::explicit(0, Node::integer(*n)),
        ExecResult::Signalled(n) => Node::explicit(1, Node::integer(*n)),
        ExecResult::Stopped(n) => Node::explicit(2, Node::integer(*n)),
        ExecResult::Msg(msg) => Node::explicit(3, Node::string(msg)),
    }
}

fn string<S: Sink>(sink: &mut S, bytes: &[u8]) -> io::Result<()> {
    sink.put(&header(der::UTF8_STRING, bytes.len() as u64))?;
    sink.put(bytes)
}

fn integer<S: Sink>(sink: &mut S, value: i64) -> io::Result<()> {
    let content = int_content(value);
    sink.put(&header(der::INTEGER, content.len_u64()))?;
    sink.put(&content)
}
