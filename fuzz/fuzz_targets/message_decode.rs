//! Arbitrary bytes into every message decoder a peer reaches: the first byte
//! picks the type, the rest is the frame payload, decoded with
//! `protocol::message::decode` exactly as the server, worker and client do.
//!
//! | first byte % 7 | type            | decoded by                       |
//! |----------------|-----------------|----------------------------------|
//! | 0              | `Hello`         | the server, first frame          |
//! | 1              | `HelloReply`    | worker and client, first answer  |
//! | 2              | `WorkerMessage` | the server, on a worker's socket |
//! | 3              | `ServerToWorker`| the worker                       |
//! | 4              | `ClientRequest` | the server, on a client's socket |
//! | 5              | `ServerToClient`| the client                       |
//! | 6              | version peek    | the server, on a hello it refuses|
//!
//! Nothing may panic or allocate past libFuzzer's limit, and whatever
//! decodes must survive a round trip: `decode(encode(x)) == x`, and the
//! re-encoding is a fixed point (the decoder accepts non-minimal varints, so
//! the input itself need not be).

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use protocol::message::{
    decode, encode, peek_hello_version, ClientRequest, Hello, HelloReply, ServerToClient,
    ServerToWorker, WorkerMessage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(payload: &[u8]) {
    let Ok(msg) = decode::<T>(payload) else {
        return;
    };
    let encoded = encode(&msg).expect("a decoded message encodes");
    let again = decode::<T>(&encoded).expect("an encoded message decodes");
    assert_eq!(again, msg, "decode(encode(x)) != x");
    assert_eq!(
        encode(&again).expect("encodes"),
        encoded,
        "encode is not a fixed point"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => {
            round_trip::<Hello>(payload);
            // A hello that decodes names its version, and the peek agrees.
            if let Ok(hello) = decode::<Hello>(payload) {
                assert_eq!(peek_hello_version(payload), Some(hello.version));
            }
        }
        1 => round_trip::<HelloReply>(payload),
        2 => round_trip::<WorkerMessage>(payload),
        3 => round_trip::<ServerToWorker>(payload),
        4 => round_trip::<ClientRequest>(payload),
        5 => round_trip::<ServerToClient>(payload),
        _ => {
            let _ = peek_hello_version(payload);
        }
    }
});
