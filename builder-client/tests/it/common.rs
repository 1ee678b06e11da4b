//! The harness every client test shares: a scripted server speaking the
//! real protocol, the binaries, and the fixtures. Every wait fails after
//! [`DEADLINE`].

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use assert_cmd::Command;
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::{ClientRequest, Hello, HelloReply, ServerHello, ServerToClient};
use protocol::PROTOCOL_VERSION;

/// How long any wait in these tests may take before it fails: a scripted
/// server waiting for the client, a binary run to its end.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What the scripted server does after reading the hello.
pub enum Behaviour {
    /// Welcome, read one request, send these answers, close.
    Answer(Vec<ServerToClient>),
    /// Refuse the hello with this reason.
    Refuse(String),
}

/// What the scripted server saw.
#[derive(Debug)]
pub struct Seen {
    /// The client's hello.
    pub hello: Hello,
    /// The request, if one arrived.
    pub request: Option<ClientRequest>,
}

/// A one-connection server on 127.0.0.1:0 in its own thread.
pub struct Scripted {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    handle: JoinHandle<Seen>,
}

impl Scripted {
    /// Starts a server that welcomes, reads one request and sends `answers`.
    pub fn answer(answers: Vec<ServerToClient>) -> Scripted {
        Scripted::start(Behaviour::Answer(answers))
    }

    /// Starts a server.
    pub fn start(behaviour: Behaviour) -> Scripted {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
                    .await
                    .expect("the client never connected")
                    .unwrap();
                let mut conn = Connection::from_tcp(stream, DEFAULT_MAX_FRAME).unwrap();
                let hello: Hello = conn.recv().await.unwrap().expect("no hello");
                let answers = match behaviour {
                    Behaviour::Refuse(reason) => {
                        conn.send(&HelloReply::Refused { reason }).await.unwrap();
                        return Seen {
                            hello,
                            request: None,
                        };
                    }
                    Behaviour::Answer(answers) => answers,
                };
                conn.send(&HelloReply::Welcome(ServerHello {
                    version: PROTOCOL_VERSION,
                    software: "scripted-server".into(),
                    heartbeat_ms: 1000,
                }))
                .await
                .unwrap();
                let request: Option<ClientRequest> = tokio::time::timeout(DEADLINE, conn.recv())
                    .await
                    .expect("no request")
                    .unwrap();
                for answer in answers {
                    // The client may legitimately stop reading (e.g. after a
                    // Failure); ignore errors.
                    if conn.send(&answer).await.is_err() {
                        break;
                    }
                }
                Seen { hello, request }
            })
        });
        Scripted { addr, handle }
    }

    /// Waits for the server to finish and returns what it saw.
    pub fn seen(self) -> Seen {
        self.handle.join().expect("scripted server panicked")
    }
}

/// Path of a binary of this workspace (`cargo test --workspace` builds
/// them all before running any test).
pub fn bin(name: &str) -> PathBuf {
    let client = PathBuf::from(env!("CARGO_BIN_EXE_builder-client"));
    let path = client.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// The client binary with a clean environment.
pub fn client() -> Command {
    let mut cmd = Command::cargo_bin("builder-client").unwrap();
    cmd.env_remove("BUILDER_REMOTE")
        .env_remove("BUILDER_TOKEN")
        .env_remove("RUST_LOG")
        .timeout(DEADLINE);
    cmd
}

/// The inspect binary.
pub fn inspect() -> Command {
    let mut cmd = Command::cargo_bin("builder-inspect").unwrap();
    cmd.env_remove("RUST_LOG").timeout(DEADLINE);
    cmd
}

/// The repository's `fixtures/`; panics if missing.
pub fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("README.md").is_file(),
        "fixtures missing: expected them at {}",
        dir.display()
    );
    dir
}

/// A fixture file; panics if missing.
pub fn fixture(rel: &str) -> PathBuf {
    let path = fixtures().join(rel);
    assert!(path.is_file(), "fixture missing: {}", path.display());
    path
}

/// Parses a fixture dump (`key=value` lines, strings quoted with the
/// README's escapes) into raw values.
pub fn dump(rel: &str) -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        map.insert(key.to_owned(), unquote(value));
    }
    map
}

fn unquote(value: &str) -> Vec<u8> {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.as_bytes().to_vec();
    };
    let bytes = inner.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            match bytes[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'x' => {
                    let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// A dump value as text.
pub fn text(map: &BTreeMap<String, Vec<u8>>, key: &str) -> String {
    String::from_utf8(map.get(key).unwrap_or_else(|| panic!("no {key}")).clone()).unwrap()
}

/// The lines of stderr that start with `error:`.
pub fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect()
}
