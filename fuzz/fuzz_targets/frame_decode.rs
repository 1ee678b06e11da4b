//! Arbitrary bytes from a peer into the frame codec, as a connection reads
//! them: the first byte sets how many bytes arrive per read (1..=256), the
//! rest is the byte stream. Frames are split off after every read until the
//! codec wants more input or refuses; at the end `decode_eof` tells a clean
//! end from a truncation. Each frame is decoded as a `ClientRequest`, as the
//! server does on a client connection.
//!
//! Nothing may panic, no frame may exceed the limit, and nothing may be
//! allocated past libFuzzer's limit. However the stream is cut into reads,
//! the frames and the final verdict are those of reading it in one piece.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::codec::{FrameCodec, FrameError};
use protocol::message::{decode, ClientRequest};
use tokio_util::codec::Decoder;

/// A small limit, so oversized frames are exercised too.
const MAX_FRAME: usize = 64 * 1024;

/// How a stream ended: cleanly, or with which kind of error.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    TooLarge(u64),
    Truncated { have: usize, need: u64 },
    Io,
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> End {
        match e {
            FrameError::TooLarge { len, .. } => End::TooLarge(len),
            FrameError::Truncated { have, need } => End::Truncated { have, need },
            FrameError::Io(_) => End::Io,
            // Only a connection with a frame timeout says so; the codec has
            // no clock.
            FrameError::Stalled(_) => panic!("the codec reported a stalled frame"),
        }
    }
}

/// Reads `stream` arriving `step` bytes at a time.
fn read(stream: &[u8], step: usize) -> (Vec<Vec<u8>>, End) {
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME, "frame over the limit");
                    let _ = decode::<ClientRequest>(&frame);
                    frames.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (frames, e.into()),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame.to_vec()),
            Ok(None) => return (frames, End::Clean),
            Err(e) => return (frames, e.into()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let whole = read(stream, stream.len().max(1));
    let pieces = read(stream, step);
    assert_eq!(pieces, whole, "the result depends on how reads are cut");
});
