//! Arbitrary bytes into the streaming record readers, fed through a reader
//! that returns short reads, as a file or socket may: `read_record` (the
//! worker's upload and `builder-inspect`), `index_record` and
//! `read_console_lines` (the server replaying a stored build's console).
//!
//! Input: the first byte sets the read sizes (a cycle of 1..=8 sizes from
//! 1 to 4096 bytes), the second how many console lines each index
//! checkpoint covers (1..=256), the rest is the record.
//!
//! Invariants:
//! - `read_record` through short reads agrees with `Exec::decode` on the
//!   whole slice, in acceptance and in value, and with a small head limit it
//!   either agrees or refuses with `TooLarge`;
//! - `index_record` accepts exactly what `read_record` accepts, returns the
//!   same head without the console, and the console read back piece by piece
//!   with `read_console_lines` from the checkpoints is the record's console.

#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use protocol::record::{
    index_record, read_console_lines, read_record_with_limit, Artifact, Exec, RecordError,
    RecordHead,
};

/// Hands out `data` in reads of the sizes in `sizes`, cyclically.
struct ShortReads<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl<'a> ShortReads<'a> {
    fn new(data: &'a [u8], pattern: u8) -> ShortReads<'a> {
        let sizes = (0..usize::from(pattern % 8) + 1)
            .map(|i| {
                // A small size, a mid-sized one, or one that crosses the
                // readers' 64 KiB buffer boundaries at odd offsets.
                match (pattern >> 3).wrapping_add(i as u8) % 4 {
                    0 => 1,
                    1 => 1 + usize::from(pattern.rotate_left(i as u32)) % 13,
                    2 => 511,
                    _ => 4096,
                }
            })
            .collect();
        ShortReads {
            data,
            sizes,
            next: 0,
        }
    }
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn stream(data: &[u8], pattern: u8, limit: u64) -> Result<Exec, RecordError> {
    let mut output = Vec::new();
    let head = read_record_with_limit(ShortReads::new(data, pattern), limit, |path, len, body| {
        let mut content = Vec::new();
        body.read_to_end(&mut content)?;
        assert_eq!(
            content.len() as u64,
            len,
            "artifact body of the wrong length"
        );
        output.push(Artifact {
            path: path.to_vec(),
            data: content,
        });
        Ok(())
    })?;
    Ok(Exec::from_parts(head, output))
}

fuzz_target!(|data: &[u8]| {
    let [pattern, every, record @ ..] = data else {
        return;
    };
    let every = u64::from(*every) + 1;

    let decoded = Exec::decode(record);
    let streamed = stream(record, *pattern, u64::MAX);
    match (&decoded, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "read_record and decode disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!("decode and read_record disagree: {decoded:?} versus {streamed:?}"),
    }

    // A head limit below the record's size: the same record, or TooLarge.
    let small = stream(record, *pattern, record.len() as u64 / 2);
    match (&streamed, &small) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the head limit changed the record"),
        (_, Err(RecordError::TooLarge { .. })) | (Err(_), Err(_)) => {}
        _ => panic!("a smaller head limit accepted more: {streamed:?} versus {small:?}"),
    }

    let indexed = index_record(ShortReads::new(record, pattern.rotate_left(4)), every);
    let (exec, (head, index)) = match (decoded, indexed) {
        (Ok(exec), Ok(indexed)) => (exec, indexed),
        (Err(_), Err(_)) => return,
        (decoded, indexed) => {
            panic!("decode and index_record disagree: {decoded:?} versus {indexed:?}")
        }
    };
    assert!(head.console.is_empty(), "index_record kept the console");
    let (whole, _) = exec.into_parts();
    assert_eq!(
        RecordHead {
            console: whole.console.clone(),
            ..head
        },
        whole,
        "index_record read another head"
    );
    assert_eq!(index.every, every);
    assert_eq!(index.lines, whole.console.len() as u64);
    let mut console = Vec::new();
    for k in 0..index.checkpoints.len() {
        let (offset, count) = index.piece(k).expect("a checkpoint has a piece");
        let rest = &record[usize::try_from(offset).expect("offset within the record")..];
        let lines = read_console_lines(ShortReads::new(rest, *pattern), offset, count)
            .expect("a checkpoint's lines read back");
        console.extend(lines);
    }
    assert_eq!(
        console, whole.console,
        "the indexed console reads back otherwise"
    );
    assert_eq!(index.piece(index.checkpoints.len()), None);
});
