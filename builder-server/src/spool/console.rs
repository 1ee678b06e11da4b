//! A running build's console spool and `--max-console-bytes`.
//!
//! Lines are written as the record holds them (see
//! [`protocol::record::encode_console_line`]), oldest first, to numbered
//! segment files in `console.<attempt>.partial/`. The limit keeps its
//! meaning (each line costs its bytes plus [`LINE_OVERHEAD`]): the first
//! half of the limit is kept from the start of the console, in segment 0,
//! the head; the second half from its end, in tail segments of about a
//! quarter of that half. A tail segment is deleted as soon as the newer
//! ones hold the second half on their own, so the disk holds at most the
//! limit plus one segment; when the record is written, the lines of the
//! oldest tail segment beyond the second half are skipped, which keeps
//! exactly what holding the end in memory kept. The end is kept on disk,
//! not in a memory ring, because the second half of the default limit
//! (128 MiB) is far more than the server should hold per build.
//!
//! Every [`CHECK_LINES`] lines or [`CHECK_BYTES`] bytes a segment notes a
//! checkpoint (line, offset): the record writer reads a segment back from
//! its last piece to its first to write the console newest first, and an
//! observer that is behind starts reading at the checkpoint before its line.
//! The checkpoints cost 16 bytes per piece, a few KiB for a GiB console.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::message::OutputLine;
use protocol::record::{console_line_len, encode_console_line, read_console_lines, ConsoleSource};

use super::io_err;
use crate::store::StoreError;

/// Bytes a console line costs against `--max-console-bytes` beyond its data.
pub const LINE_OVERHEAD: u64 = 48;

/// Lines between two checkpoints of a console segment, at most.
pub const CHECK_LINES: u64 = 1024;

/// Bytes between two checkpoints of a console segment, about (a line is
/// never cut).
pub const CHECK_BYTES: u64 = 256 * 1024;

/// Console bytes written at most before observers are shown them (and
/// memory can let them go), while the writer is behind.
pub(super) const PUBLISH_BYTES: u64 = 256 * 1024;

/// The smallest tail segment, whatever the limit.
const MIN_SEGMENT: u64 = 1024 * 1024;

/// The directory of a build attempt's console spool. Each attempt has its
/// own, so a lost attempt's spool never meets its requeued successor's.
pub fn console_dir(build_dir: &Path, attempt: u32) -> PathBuf {
    build_dir.join(format!("console.{attempt}.partial"))
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// One segment file of a console spool.
#[derive(Clone, Debug, Default)]
struct Segment {
    id: u32,
    /// Index of its first line in the console.
    first: u64,
    lines: u64,
    /// Bytes in the file.
    bytes: u64,
    /// What its lines cost against the limit.
    cost: u64,
    /// Its lines' data bytes.
    data: u64,
    /// (line in the segment, offset in the file), the first at (0, 0).
    checkpoints: Vec<(u64, u64)>,
}

impl Segment {
    fn new(id: u32, first: u64) -> Segment {
        Segment {
            id,
            first,
            checkpoints: vec![(0, 0)],
            ..Segment::default()
        }
    }

    /// The pieces between checkpoints: (first line in the segment, line
    /// count, offset).
    fn pieces(&self) -> impl DoubleEndedIterator<Item = (u64, u64, u64)> + '_ {
        self.checkpoints.iter().enumerate().map(|(k, &(line, at))| {
            let end = self.checkpoints.get(k + 1).map_or(self.lines, |c| c.0);
            (line, end - line, at)
        })
    }
}

/// Where a running build's console is on disk, for its observers: kept up
/// to date by the build's writer, lines below `readable` are in the files.
#[derive(Debug, Default)]
pub struct SpoolMap {
    dir: Option<PathBuf>,
    segments: Vec<Segment>,
    readable: u64,
}

impl SpoolMap {
    /// Lines that observers can read from the files (written and flushed).
    pub fn readable(&self) -> u64 {
        self.readable
    }
}

/// A shared [`SpoolMap`].
pub type SharedMap = Arc<Mutex<SpoolMap>>;

fn lock(map: &SharedMap) -> MutexGuard<'_, SpoolMap> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`read_lines`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum SpoolRead {
    /// Lines from the one asked for on, in order.
    Lines(Vec<OutputLine>),
    /// The line asked for is not in the spool (the limit dropped it); the
    /// next one there is this one (`None`: none is).
    Missing(Option<u64>),
}

/// Reads up to `max` console lines from line `from` on out of a running
/// build's spool (blocking).
pub fn read_lines(map: &SharedMap, from: u64, max: u64) -> io::Result<SpoolRead> {
    let (path, skip, count, offset) = {
        let map = lock(map);
        let Some(dir) = &map.dir else {
            return Ok(SpoolRead::Missing(None));
        };
        let found = map
            .segments
            .iter()
            .find(|s| s.first <= from && from < s.first + s.lines && from < map.readable);
        let Some(segment) = found else {
            let next = map
                .segments
                .iter()
                .map(|s| s.first)
                .filter(|&first| first > from && first < map.readable)
                .min();
            return Ok(SpoolRead::Missing(next));
        };
        let within = from - segment.first;
        let (line, _, offset) = segment
            .pieces()
            .rev()
            .find(|&(line, _, _)| line <= within)
            .expect("a segment's first checkpoint is its first line");
        let end = (segment.first + segment.lines)
            .min(map.readable)
            .min(from.saturating_add(max));
        (
            dir.join(segment.id.to_string()),
            within - line,
            end - segment.first - line,
            offset,
        )
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        // Deleted since: the limit dropped these lines meanwhile.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SpoolRead::Missing(None)),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let lines = read_console_lines(&file, offset, count).map_err(invalid)?;
    Ok(SpoolRead::Lines(
        lines
            .into_iter()
            .skip(skip as usize)
            .map(|l| OutputLine {
                delta_ns: l.delta_ns,
                data: l.data,
            })
            .collect(),
    ))
}

/// Writes a build's console to its spool within the limit (blocking; owned
/// by the build's writer thread).
pub struct ConsoleWriter {
    dir: PathBuf,
    limit: u64,
    head: Segment,
    tail: VecDeque<Segment>,
    /// The file of the segment being written: the head's until it is
    /// full, then the newest tail segment's.
    out: Option<BufWriter<File>>,
    head_closed: bool,
    tail_cost: u64,
    next_id: u32,
    total: u64,
    /// Lines and data bytes of deleted tail segments.
    dropped: (u64, u64),
    map: SharedMap,
    broken: bool,
    /// Bytes appended since the last [`ConsoleWriter::publish`].
    pub(super) unpublished: u64,
}

impl ConsoleWriter {
    /// A console spooled to `dir` (created with the first line), kept
    /// within `limit` bytes; observers find it through `map`.
    pub fn new(dir: PathBuf, limit: usize, map: SharedMap) -> ConsoleWriter {
        lock(&map).dir = Some(dir.clone());
        ConsoleWriter {
            dir,
            limit: limit as u64,
            head: Segment::new(0, 0),
            tail: VecDeque::new(),
            out: None,
            head_closed: false,
            tail_cost: 0,
            next_id: 1,
            total: 0,
            dropped: (0, 0),
            map,
            broken: false,
            unpublished: 0,
        }
    }

    fn half(&self) -> u64 {
        self.limit / 2
    }

    fn segment_cap(&self) -> u64 {
        (self.half() / 4).max(MIN_SEGMENT)
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn open(&mut self, id: u32) -> Result<(), StoreError> {
        // (Once per segment: a handful per build.)
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path(id);
        let file = File::create(&path).map_err(io_err(&path))?;
        // Replaced: the previous segment's buffer goes out first.
        if let Some(mut old) = self.out.replace(BufWriter::with_capacity(64 * 1024, file)) {
            old.flush().map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// Appends lines (an error leaves the console spool broken).
    pub fn append(&mut self, lines: &[OutputLine]) -> Result<(), StoreError> {
        let appended = lines.iter().try_for_each(|line| self.append_one(line));
        if appended.is_err() {
            self.broken = true;
        }
        appended
    }

    fn append_one(&mut self, line: &OutputLine) -> Result<(), StoreError> {
        let cost = line.data.len() as u64 + LINE_OVERHEAD;
        let half = self.half();
        let index = self.total;
        self.total += 1;
        let to_head = !self.head_closed && self.head.cost + cost <= half;
        if to_head {
            if self.out.is_none() {
                self.open(0)?;
            }
        } else {
            if !self.head_closed {
                self.head_closed = true;
                if let Some(mut out) = self.out.take() {
                    out.flush().map_err(io_err(&self.dir))?;
                }
            }
            let full = self
                .tail
                .back()
                .is_none_or(|s| s.cost >= self.segment_cap());
            if full {
                let id = self.next_id;
                self.next_id += 1;
                self.open(id)?;
                self.tail.push_back(Segment::new(id, index));
            }
            self.tail_cost += cost;
        }
        let segment = if to_head {
            &mut self.head
        } else {
            self.tail.back_mut().expect("a tail segment was opened")
        };
        let bytes = console_line_len(line.delta_ns, line.data.len());
        let &(line_at, offset_at) = segment.checkpoints.last().expect("a first checkpoint");
        if segment.lines - line_at >= CHECK_LINES || segment.bytes - offset_at >= CHECK_BYTES {
            segment.checkpoints.push((segment.lines, segment.bytes));
        }
        let out = self.out.as_mut().expect("the segment's file is open");
        let path = self.dir.join(segment.id.to_string());
        encode_console_line(line.delta_ns, &line.data, out).map_err(io_err(&path))?;
        segment.lines += 1;
        segment.bytes += bytes;
        self.unpublished += bytes;
        segment.cost += cost;
        segment.data += line.data.len() as u64;
        // The newer segments hold the second half without the oldest: it
        // goes, and the disk with it.
        while self.tail.len() >= 2 && self.tail_cost - self.tail[0].cost >= half {
            let old = self.tail.pop_front().expect("two tail segments");
            self.tail_cost -= old.cost;
            self.dropped.0 += old.lines;
            self.dropped.1 += old.data;
            let path = self.path(old.id);
            if let Err(e) = fs::remove_file(&path) {
                tracing::error!(path = ?path.display(), error = ?protocol::Chain(&e), "cannot remove a console segment");
            }
        }
        Ok(())
    }

    /// Flushes what was appended and shows it to observers.
    pub fn publish(&mut self) -> Result<(), StoreError> {
        if self.broken {
            return Ok(());
        }
        self.unpublished = 0;
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.broken = true;
                return Err(io_err(&self.dir)(e));
            }
        }
        let mut map = lock(&self.map);
        let map = &mut *map;
        map.segments
            .retain(|s| s.id == self.head.id || self.tail.iter().any(|t| t.id == s.id));
        for segment in std::iter::once(&self.head).chain(&self.tail) {
            let shown = match map.segments.iter_mut().find(|s| s.id == segment.id) {
                Some(shown) => shown,
                None => {
                    map.segments.push(Segment {
                        checkpoints: Vec::new(),
                        ..segment.clone()
                    });
                    map.segments.last_mut().expect("just pushed")
                }
            };
            let known = shown.checkpoints.len();
            shown
                .checkpoints
                .extend_from_slice(&segment.checkpoints[known..]);
            shown.lines = segment.lines;
        }
        map.readable = self.total;
        Ok(())
    }

    /// The console as the record holds it (blocking: reads the oldest tail
    /// segment to find where the kept end starts). `None` when the spool
    /// broke: what it holds cannot be trusted.
    pub(super) fn finish(mut self) -> Option<ConsoleFiles> {
        if self.publish().is_err() || self.broken {
            return None;
        }
        drop(self.out.take());
        let half = self.half();
        let mut skip = (0, 0u64);
        let mut first_kept = None;
        // Lines of the oldest tail segment past the second half are
        // skipped: what is kept is the newest lines within it.
        let mut excess = self.tail_cost.saturating_sub(half);
        'segments: for segment in &self.tail {
            let path = self.dir.join(segment.id.to_string());
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    tracing::error!(path = ?path.display(), error = ?protocol::Chain(&e), "cannot read the console spool");
                    return None;
                }
            };
            for (_, count, offset) in segment.pieces() {
                let read = file
                    .seek(SeekFrom::Start(offset))
                    .map_err(invalid)
                    .and_then(|_| read_console_lines(&file, offset, count).map_err(invalid));
                let lines = match read {
                    Ok(lines) => lines,
                    Err(e) => {
                        tracing::error!(path = ?path.display(), error = ?protocol::Chain(&e), "cannot read the console spool");
                        return None;
                    }
                };
                for line in lines {
                    if excess == 0 {
                        first_kept = Some(line.delta_ns);
                        break 'segments;
                    }
                    let cost = line.data.len() as u64 + LINE_OVERHEAD;
                    excess = excess.saturating_sub(cost);
                    skip.0 += 1;
                    skip.1 += console_line_len(line.delta_ns, line.data.len());
                    self.dropped.0 += 1;
                    self.dropped.1 += line.data.len() as u64;
                }
            }
        }
        let marker = (self.dropped.0 > 0).then(|| OutputLine {
            delta_ns: first_kept.unwrap_or(0),
            data: format!(
                "[builder: {} console lines ({} bytes) dropped here: the console exceeded the server's limit of {} bytes]",
                self.dropped.0, self.dropped.1, self.limit
            )
            .into_bytes(),
        });
        let len = self.head.bytes + self.tail.iter().map(|s| s.bytes).sum::<u64>() - skip.1
            + marker
                .as_ref()
                .map_or(0, |m| console_line_len(m.delta_ns, m.data.len()));
        Some(ConsoleFiles {
            dir: self.dir,
            head: self.head,
            tail: self.tail,
            skip: skip.0,
            marker,
            len,
        })
    }
}

/// A finished build's console spool, as its record holds it: the head, a
/// line saying how many were dropped (if any were), the kept end.
#[derive(Debug)]
pub struct ConsoleFiles {
    dir: PathBuf,
    head: Segment,
    tail: VecDeque<Segment>,
    /// Lines at the start of the tail that are not kept.
    skip: u64,
    marker: Option<OutputLine>,
    len: u64,
}

impl ConsoleFiles {
    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one segment's lines from `skip` on, newest first.
    fn write_segment(&self, segment: &Segment, skip: u64, out: &mut dyn Write) -> io::Result<()> {
        if segment.lines <= skip {
            return Ok(());
        }
        let path = self.dir.join(segment.id.to_string());
        let mut file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut buf = Vec::new();
        for (first, count, offset) in segment.pieces().rev() {
            if first + count <= skip {
                break;
            }
            file.seek(SeekFrom::Start(offset))?;
            let lines = read_console_lines(&file, offset, count).map_err(invalid)?;
            let keep = (first + count - skip.max(first)) as usize;
            buf.clear();
            for line in lines.iter().rev().take(keep) {
                encode_console_line(line.delta_ns, &line.data, &mut buf)?;
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }
}

impl ConsoleSource for ConsoleFiles {
    fn encoded_len(&self) -> u64 {
        self.len
    }

    fn write_newest_first(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut skip = self.skip;
        let mut skips = Vec::with_capacity(self.tail.len());
        for segment in &self.tail {
            let here = skip.min(segment.lines);
            skips.push(here);
            skip -= here;
        }
        for (segment, skip) in self.tail.iter().zip(skips).rev() {
            self.write_segment(segment, skip, out)?;
        }
        if let Some(marker) = &self.marker {
            encode_console_line(marker.delta_ns, &marker.data, out)?;
        }
        self.write_segment(&self.head, 0, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u64) -> OutputLine {
        OutputLine {
            delta_ns: i as i64,
            data: format!("{i:052}").into_bytes(), // 52 + 48 = 100 bytes each
        }
    }

    /// Every line of an encoded console.
    fn decode_all(mut bytes: &[u8]) -> Vec<protocol::record::ConsoleLine> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let one = read_console_lines(bytes, 0, 1).unwrap().remove(0);
            bytes = &bytes[console_line_len(one.delta_ns, one.data.len()) as usize..];
            lines.push(one);
        }
        lines
    }

    /// Spools `lines` within `limit`, returning what the record gets
    /// (oldest first), the map observers see and the spool's directory.
    fn spooled(
        limit: usize,
        lines: impl Iterator<Item = OutputLine>,
    ) -> (Vec<String>, SharedMap, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let map = SharedMap::default();
        let mut writer = ConsoleWriter::new(dir.path().join("c"), limit, map.clone());
        let lines: Vec<OutputLine> = lines.collect();
        for batch in lines.chunks(7) {
            writer.append(batch).unwrap();
            writer.publish().unwrap();
        }
        let mut files = writer.finish().unwrap();
        let mut out = Vec::new();
        files.write_newest_first(&mut out).unwrap();
        assert_eq!(out.len() as u64, files.encoded_len());
        let texts = decode_all(&out)
            .into_iter()
            .rev()
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect();
        (texts, map, dir)
    }

    #[test]
    fn the_console_keeps_its_start_and_end_within_the_limit() {
        let (texts, _, _dir) = spooled(1000, (0..20).map(line));
        assert_eq!(texts.len(), 11, "{texts:?}");
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
    }

    #[test]
    fn a_long_console_keeps_exactly_its_end_while_the_disk_holds_a_bounded_part() {
        // 4 MiB limit, 40 MiB of lines: tail segments come and go.
        let limit = 4 << 20;
        let n = 400_000;
        let dir = tempfile::tempdir().unwrap();
        let map = SharedMap::default();
        let console = dir.path().join("c");
        let mut writer = ConsoleWriter::new(console.clone(), limit, map.clone());
        let lines: Vec<OutputLine> = (0..n).map(line).collect();
        let mut most_on_disk = 0;
        for batch in lines.chunks(5000) {
            writer.append(batch).unwrap();
            writer.publish().unwrap();
            let on_disk: u64 = fs::read_dir(&console)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            most_on_disk = most_on_disk.max(on_disk);
        }
        assert!(
            most_on_disk < limit as u64 * 2,
            "{most_on_disk} bytes on disk for a limit of {limit}"
        );
        let mut files = writer.finish().unwrap();
        let mut out = Vec::new();
        files.write_newest_first(&mut out).unwrap();
        let half = (limit / 2) as u64;
        let kept = (half / 100) as usize;
        assert_eq!(out.len() as u64, files.encoded_len());
        let all = decode_all(&out);
        assert_eq!(all.len(), 2 * kept + 1);
        // Newest first: the end, the marker, the start.
        let want_end: Vec<u64> = (n - kept as u64..n).rev().collect();
        let got_end: Vec<u64> = all[..kept].iter().map(|l| l.delta_ns as u64).collect();
        assert_eq!(got_end, want_end);
        let marker = String::from_utf8_lossy(&all[kept].data).into_owned();
        let dropped = n - 2 * kept as u64;
        assert!(
            marker.contains(&format!("{dropped} console lines ({} bytes)", dropped * 52)),
            "{marker}"
        );
        let got_start: Vec<u64> = all[kept + 1..].iter().map(|l| l.delta_ns as u64).collect();
        assert_eq!(got_start, (0..kept as u64).rev().collect::<Vec<_>>());
    }

    #[test]
    fn observers_read_any_line_still_in_the_spool_and_learn_of_the_gap() {
        let (_, map, _dir) = spooled(usize::MAX, (0..5000).map(line));
        match read_lines(&map, 1500, 10).unwrap() {
            SpoolRead::Lines(lines) => {
                assert_eq!(lines, (1500..1510).map(line).collect::<Vec<_>>())
            }
            other => panic!("{other:?}"),
        }
        match read_lines(&map, 4990, 1000).unwrap() {
            SpoolRead::Lines(lines) => {
                assert_eq!(lines, (4990..5000).map(line).collect::<Vec<_>>())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            read_lines(&map, 5000, 10).unwrap(),
            SpoolRead::Missing(None)
        );
    }
}
