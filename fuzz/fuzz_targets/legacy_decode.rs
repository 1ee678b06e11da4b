//! Arbitrary bytes into the reference's command and state file decoders.
//!
//! Besides "never panics, never allocates absurdly", checks on whatever
//! decodes that the encoding decodes back to the same value and is a fixed
//! point of decode-then-encode, and that `dialect` calls every decodable
//! command a reference command.
//!
//! `fuzz/seed-corpus.sh` seeds its corpus with the reference's commands and
//! state files from `fixtures/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::legacy::{dialect, Command, Dialect, State};

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = Command::decode(data) {
        assert_eq!(dialect(data), Dialect::Reference, "{command:?}");
        let encoded = command.encode();
        let again = Command::decode(&encoded).expect("an encoded command decodes");
        assert_eq!(again, command, "decode(encode(x)) != x");
        assert_eq!(again.encode(), encoded, "encode is not a fixed point");
    }
    if let Ok(decoded) = State::decode(data) {
        let encoded = decoded.state.encode();
        let again = State::decode(&encoded).expect("an encoded state decodes");
        assert!(
            again.warnings.is_empty(),
            "the encoding has no legacy items"
        );
        assert_eq!(again.state, decoded.state, "decode(encode(x)) != x");
        assert_eq!(again.state.encode(), encoded, "encode is not a fixed point");
    }
});
