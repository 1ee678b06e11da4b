//! Arbitrary bytes from a peer into the frame codec and the client request
//! decoder, as the server reads a client connection: frames are split off
//! until the codec wants more input or refuses, and each frame is decoded as
//! a `ClientRequest`. Nothing may panic, no frame may exceed the limit, and
//! nothing may be allocated past it.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::codec::FrameCodec;
use protocol::message::{decode, ClientRequest};
use tokio_util::codec::Decoder;

/// A small limit, so oversized frames are exercised too.
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= MAX_FRAME, "frame over the limit");
                let _ = decode::<ClientRequest>(&frame);
            }
            Ok(None) => {
                // End of input: what is left is a clean end or a truncation.
                let _ = codec.decode_eof(&mut buf);
                break;
            }
            Err(_) => break,
        }
    }
});
