//! Turning the job's output bytes into console lines, and lines into batches.
//!
//! A line is everything up to a `\n` (which is dropped); `\r` is an ordinary
//! byte. Bytes are carried unchanged, UTF-8 or not. A line longer than
//! [`MAX_LINE`] is cut into pieces of exactly [`MAX_LINE`] bytes (the last
//! piece shorter), never dropped. Output ending without a newline still makes
//! a last line ([`LineSplitter::finish`]).
//!
//! Lines are sent in batches, one [`protocol::message::WorkerMessage::Console`]
//! per batch: a batch is sent when it holds [`BATCH_BYTES`] or when its oldest
//! line is [`BATCH_AGE`] old, so a chatty job does not cost a frame per line
//! and a quiet one is still seen live.

use std::mem;
use std::time::Duration;

use protocol::codec::CHUNK_SIZE;
use protocol::message::OutputLine;
use tokio::time::Instant;

/// The longest console line; longer lines are split into pieces this long.
pub const MAX_LINE: usize = protocol::message::MAX_CONSOLE_LINE;

/// A batch is sent once it holds this many bytes (line data plus
/// [`LINE_OVERHEAD`] per line).
pub const BATCH_BYTES: usize = 64 * 1024;

/// A batch is sent once its oldest line is this old.
pub const BATCH_AGE: Duration = Duration::from_millis(20);

/// What a line costs in a batch beyond its bytes (its delta and length as
/// encoded, rounded up), so that a batch of many empty lines is bounded too.
pub const LINE_OVERHEAD: usize = 16;

// A batch is at most BATCH_BYTES - 1 before its last line, and a line is at
// most MAX_LINE: every Console frame stays below one chunk.
const _: () = assert!(BATCH_BYTES + MAX_LINE + LINE_OVERHEAD + 64 <= CHUNK_SIZE);

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// A splitter with no pending bytes.
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// Feeds the next bytes of the stream; calls `emit` with every line (or
    /// [`MAX_LINE`] piece of a longer line) they complete, in order.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Vec<u8>)) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.append(&data[..i], &mut emit);
            emit(mem::take(&mut self.partial));
            data = &data[i + 1..];
        }
        self.append(data, &mut emit);
    }

    /// The last line, if the stream did not end with a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.partial.is_empty() {
            None
        } else {
            Some(mem::take(&mut self.partial))
        }
    }

    /// Appends bytes that contain no newline, emitting full pieces.
    fn append(&mut self, mut data: &[u8], emit: &mut impl FnMut(Vec<u8>)) {
        while self.partial.len() + data.len() > MAX_LINE {
            let room = MAX_LINE - self.partial.len();
            self.partial.extend_from_slice(&data[..room]);
            data = &data[room..];
            emit(mem::take(&mut self.partial));
        }
        self.partial.extend_from_slice(data);
    }
}

/// Console lines waiting to be sent.
#[derive(Debug, Default)]
pub struct Batch {
    lines: Vec<OutputLine>,
    bytes: usize,
    oldest: Option<Instant>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a line received at `now`; true when the batch is full and should
    /// be sent now.
    pub fn push(&mut self, line: OutputLine, now: Instant) -> bool {
        self.bytes += line.data.len() + LINE_OVERHEAD;
        self.lines.push(line);
        self.oldest.get_or_insert(now);
        self.bytes >= BATCH_BYTES
    }

    /// When the batch must be sent at the latest; `None` when it is empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + BATCH_AGE)
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Takes the lines, leaving the batch empty.
    pub fn take(&mut self) -> Vec<OutputLine> {
        self.bytes = 0;
        self.oldest = None;
        mem::take(&mut self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns every line.
    fn split(input: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut splitter = LineSplitter::new();
        let mut lines = Vec::new();
        for piece in input.chunks(step.max(1)) {
            splitter.push(piece, |l| lines.push(l));
        }
        lines.extend(splitter.finish());
        lines
    }

    fn all_steps(input: &[u8]) -> Vec<Vec<u8>> {
        let whole = split(input, input.len());
        for step in [1, 2, 3, 7, 4096, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1] {
            assert_eq!(split(input, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn lines_lose_their_newline() {
        assert_eq!(all_steps(b"a\nbc\n"), vec![b"a".to_vec(), b"bc".to_vec()]);
    }

    #[test]
    fn last_line_without_newline_counts() {
        assert_eq!(all_steps(b"a\nlast"), vec![b"a".to_vec(), b"last".to_vec()]);
    }

    #[test]
    fn empty_lines_are_kept_and_empty_input_has_none() {
        assert_eq!(
            all_steps(b"\n\nx\n\n"),
            vec![vec![], vec![], b"x".to_vec(), vec![]]
        );
        assert!(all_steps(b"").is_empty());
    }

    #[test]
    fn carriage_return_is_not_a_separator_and_bytes_are_unchanged() {
        let input = b"progress 1\rprogress 2\r\n\xff\xfe\x00bin\n";
        assert_eq!(
            all_steps(input),
            vec![
                b"progress 1\rprogress 2\r".to_vec(),
                b"\xff\xfe\x00bin".to_vec()
            ]
        );
    }

    #[test]
    fn long_lines_are_split_into_max_line_pieces() {
        let long: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8 + 1).collect();
        let long: Vec<u8> = long
            .into_iter()
            .map(|b| if b == b'\n' { b'x' } else { b })
            .collect();
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        let lines = all_steps(&input);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1].len(), MAX_LINE);
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3].len(), 200 * 1024 - 3 * MAX_LINE);
        assert_eq!(lines[..4].concat(), long);
        assert_eq!(lines[4], b"next");
    }

    #[test]
    fn a_line_of_exactly_max_line_is_one_line() {
        let line = vec![b'y'; MAX_LINE];
        let mut input = line.clone();
        input.push(b'\n');
        assert_eq!(all_steps(&input), vec![line.clone()]);
        // Also without the newline, at the end.
        assert_eq!(all_steps(&line), vec![line.clone()]);
        // One byte more makes a second piece.
        let mut longer = line.clone();
        longer.push(b'z');
        assert_eq!(all_steps(&longer), vec![line, b"z".to_vec()]);
    }

    #[test]
    fn batch_fills_by_bytes_and_ages() {
        let t0 = Instant::now();
        let mut batch = Batch::new();
        assert!(batch.is_empty());
        assert_eq!(batch.deadline(), None);
        let line = |n: usize| OutputLine {
            delta_ns: 0,
            data: vec![b'a'; n],
        };
        assert!(!batch.push(line(10), t0));
        assert_eq!(batch.deadline(), Some(t0 + BATCH_AGE));
        // A later line does not move the deadline.
        assert!(!batch.push(line(10), t0 + Duration::from_millis(5)));
        assert_eq!(batch.deadline(), Some(t0 + BATCH_AGE));
        assert!(batch.push(line(BATCH_BYTES), t0));
        assert_eq!(batch.take().len(), 3);
        assert!(batch.is_empty());
        assert_eq!(batch.deadline(), None);
    }

    #[test]
    fn many_empty_lines_fill_a_batch_too() {
        let t0 = Instant::now();
        let mut batch = Batch::new();
        let mut n = 0;
        while !batch.push(
            OutputLine {
                delta_ns: 0,
                data: vec![],
            },
            t0,
        ) {
            n += 1;
        }
        assert_eq!(n + 1, BATCH_BYTES / LINE_OVERHEAD);
    }
}
