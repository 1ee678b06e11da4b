//! A peer of an older protocol version gets a refusal that names both
//! versions, through the server, from the checked-in hello frames of
//! version 1.

use crate::common::{runtime, Server};
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::HelloReply;
use protocol::PROTOCOL_VERSION;
use tokio::io::AsyncWriteExt;

#[test]
fn a_version_1_hello_is_refused_naming_both_versions() {
    const { assert!(PROTOCOL_VERSION > 1, "this test needs an older version") };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let frames = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/frames");
    let rt = runtime();
    for file in ["v1-hello-client.bin", "v1-hello-worker.bin"] {
        let frame = std::fs::read(frames.join(file)).unwrap();
        let reply = rt.block_on(async {
            let mut conn = Connection::connect(&server.addr, DEFAULT_MAX_FRAME)
                .await
                .unwrap();
            // The old frame exactly as an old peer sends it.
            conn.get_mut().write_all(&frame).await.unwrap();
            let reply: Option<HelloReply> = conn.recv().await.unwrap();
            // And the server closes the connection after refusing.
            let after = conn.recv_frame().await;
            assert!(matches!(after, Ok(None) | Err(_)), "{file}: {after:?}");
            reply
        });
        match reply {
            Some(HelloReply::Refused { reason }) => {
                assert!(
                    reason.contains("version 1")
                        && reason.contains(&format!("speaks {PROTOCOL_VERSION}")),
                    "{file}: {reason}"
                );
            }
            other => panic!("{file}: {other:?}"),
        }
    }
}
