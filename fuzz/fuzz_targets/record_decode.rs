//! Arbitrary bytes into the build record decoder.
//!
//! Besides "never panics, never allocates absurdly", checks the codec's
//! invariants on whatever decodes:
//! - the streaming reader (`read_record`) agrees with `Exec::decode`, in
//!   acceptance and in value;
//! - the encoding of a decoded record decodes back to the same record, and is
//!   a fixed point of decode-then-encode;
//! - `encoded_len` is the length of `encode`.
//!
//! Seed the corpus with the golden vectors:
//!   mkdir -p corpus/record_decode
//!   cp ../fixtures/{exec,e2e,quirks}/*exec*.der corpus/record_decode/

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::record::{read_record, Artifact, Exec};

fuzz_target!(|data: &[u8]| {
    let decoded = Exec::decode(data);

    let mut output = Vec::new();
    let streamed = read_record(data, |path, len, body| {
        let mut content = Vec::new();
        body.read_to_end(&mut content)?;
        assert_eq!(content.len() as u64, len);
        output.push(Artifact {
            path: path.to_vec(),
            data: content,
        });
        Ok(())
    });

    match (decoded, streamed) {
        (Ok(exec), Ok(head)) => {
            assert_eq!(
                Exec::from_parts(head, output),
                exec,
                "read_record and decode disagree"
            );

            let encoded = exec.encode();
            assert_eq!(exec.encoded_len(), encoded.len() as u64);
            let again = Exec::decode(&encoded).expect("an encoded record decodes");
            assert_eq!(again, exec, "decode(encode(x)) != x");
            assert_eq!(again.encode(), encoded, "encode is not a fixed point");
        }
        (Err(_), Err(_)) => {}
        (decoded, streamed) => {
            panic!("decode and read_record disagree: {decoded:?} versus {streamed:?}")
        }
    }
});
