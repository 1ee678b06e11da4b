//! Wire messages: every variant round-trips; checked-in sample frames keep
//! decoding (backward compatibility); truncated and random input gives
//! errors, never panics.
//!
//! After an intended message change (which bumps `PROTOCOL_VERSION`), write
//! the new samples with `BLESS=1 cargo test -p builder-protocol --test it wire::`
//! and check them in beside the old ones.

use std::path::PathBuf;

use bytes::BytesMut;
use protocol::codec::{FrameCodec, FrameError};
use protocol::message::*;
use protocol::signal::Signal;
use protocol::trigger::Trigger;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

const UUID: Uuid = Uuid::from_u128(0x5c4b3a29_1807_46f5_a4b3_c2d1e0f9a8b7);

fn line(delta_ns: i64, data: &[u8]) -> OutputLine {
    OutputLine {
        delta_ns,
        data: data.to_vec(),
    }
}

fn hellos() -> Vec<(&'static str, Hello)> {
    vec![
        (
            "hello-client",
            Hello {
                version: PROTOCOL_VERSION,
                role: Role::Client,
                token: None,
                software: "builder-client 0.1.0".into(),
            },
        ),
        (
            "hello-worker",
            Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker {
                    platform: "debian-12".into(),
                    host: "build1".into(),
                },
                token: Some("s3cret".into()),
                software: "builder-worker 0.1.0".into(),
            },
        ),
    ]
}

fn hello_replies() -> Vec<(&'static str, HelloReply)> {
    vec![
        (
            "welcome",
            HelloReply::Welcome(ServerHello {
                version: PROTOCOL_VERSION,
                software: "builder-server 0.1.0".into(),
                heartbeat_ms: 5000,
            }),
        ),
        (
            "refused",
            HelloReply::Refused {
                reason: "bad token".into(),
            },
        ),
    ]
}

fn worker_messages() -> Vec<(&'static str, WorkerMessage)> {
    vec![
        ("request-job", WorkerMessage::RequestJob),
        ("worker-heartbeat", WorkerMessage::Heartbeat),
        (
            "started",
            WorkerMessage::Started {
                uuid: UUID,
                at: Timestamp(1_700_000_000_123_456_789),
            },
        ),
        (
            "console",
            WorkerMessage::Console {
                uuid: UUID,
                lines: vec![line(0, b"hello"), line(1_500, b"\xff\xfe not utf-8")],
            },
        ),
        (
            "artifact-start",
            WorkerMessage::ArtifactStart {
                uuid: UUID,
                path: b"bin/hello.hvt".to_vec(),
                len: 3,
            },
        ),
        (
            "artifact-chunk",
            WorkerMessage::ArtifactChunk {
                uuid: UUID,
                data: vec![0, 1, 255],
            },
        ),
        (
            "finished-exited",
            WorkerMessage::Finished {
                uuid: UUID,
                finished: Timestamp(1_700_000_001_000_000_000),
                outcome: JobOutcome::Exited(3),
            },
        ),
        (
            "finished-signalled",
            WorkerMessage::Finished {
                uuid: UUID,
                finished: Timestamp(1),
                outcome: JobOutcome::Signalled(Signal::Kill),
            },
        ),
        (
            "finished-other-signal",
            WorkerMessage::Finished {
                uuid: UUID,
                finished: Timestamp(1),
                outcome: JobOutcome::Stopped(Signal::Other(40)),
            },
        ),
        (
            "finished-aborted",
            WorkerMessage::Finished {
                uuid: UUID,
                finished: Timestamp(-1),
                outcome: JobOutcome::Aborted("timeout".into()),
            },
        ),
    ]
}

fn server_to_worker() -> Vec<(&'static str, ServerToWorker)> {
    vec![
        (
            "job",
            ServerToWorker::Job(JobAssignment {
                uuid: UUID,
                name: "hello".into(),
                platform: "linux".into(),
                script: "#!/bin/sh\necho hello\n".into(),
                timeout_secs: 3600,
            }),
        ),
        ("server-heartbeat", ServerToWorker::Heartbeat),
        (
            "cancel",
            ServerToWorker::Cancel {
                uuid: UUID,
                reason: "cancelled".into(),
            },
        ),
        ("stored", ServerToWorker::Stored { uuid: UUID }),
        (
            "worker-failure",
            ServerToWorker::Failure {
                reason: "platform linux was dropped".into(),
            },
        ),
    ]
}

fn script_job() -> JobSpec {
    JobSpec {
        name: "hello".into(),
        kind: JobKind::Script {
            platform: "linux".into(),
            script: "echo hello\n".into(),
        },
    }
}

fn client_requests() -> Vec<(&'static str, ClientRequest)> {
    vec![
        (
            "schedule",
            ClientRequest::Schedule {
                job: script_job(),
                trigger: Trigger::Daily,
                timeout_secs: Some(600),
            },
        ),
        (
            "schedule-orb-cron",
            ClientRequest::Schedule {
                job: JobSpec {
                    name: "solo5".into(),
                    kind: JobKind::Orb {
                        opam_package: "solo5-hvt".into(),
                    },
                },
                trigger: Trigger::Cron("0 3 * * *".into()),
                timeout_secs: None,
            },
        ),
        (
            "unschedule",
            ClientRequest::Unschedule {
                name: "hello".into(),
            },
        ),
        (
            "reschedule",
            ClientRequest::Reschedule {
                name: "hello".into(),
                next: Timestamp(1_700_000_000_000_000_000),
                trigger: Some(Trigger::Weekly),
            },
        ),
        (
            "execute",
            ClientRequest::Execute {
                name: "hello".into(),
                platform: Some("linux".into()),
            },
        ),
        ("info", ClientRequest::Info),
        ("observe", ClientRequest::Observe { uuid: UUID }),
        (
            "observe-latest",
            ClientRequest::ObserveLatest {
                platform: None,
                job: Some("hello".into()),
            },
        ),
        (
            "drop-platform",
            ClientRequest::DropPlatform {
                platform: "old".into(),
            },
        ),
        (
            "undrop-platform",
            ClientRequest::UndropPlatform {
                platform: "old".into(),
            },
        ),
        ("cancel-build", ClientRequest::Cancel { uuid: UUID }),
        (
            "results",
            ClientRequest::Results {
                job: Some("hello".into()),
                limit: 20,
            },
        ),
        (
            "show",
            ClientRequest::Show {
                name: "hello".into(),
            },
        ),
        (
            "update",
            ClientRequest::Update {
                name: "hello".into(),
                script: Some("echo new\n".into()),
                platform: None,
                trigger: Some(Trigger::Cron("0 4 * * *".into())),
                timeout_secs: Some(600),
            },
        ),
        (
            "execute-observe",
            ClientRequest::ExecuteObserve {
                name: "hello".into(),
                platform: None,
            },
        ),
        (
            "observe-next",
            ClientRequest::ObserveNext {
                platform: Some("linux".into()),
                job: None,
            },
        ),
        ("fetch", ClientRequest::Fetch { uuid: UUID }),
    ]
}

fn server_to_client() -> Vec<(&'static str, ServerToClient)> {
    let header = BuildHeader {
        uuid: UUID,
        job: "hello".into(),
        platform: "linux".into(),
        started: Timestamp(5),
    };
    vec![
        (
            "notice",
            ServerToClient::Notice {
                message: "worker lost; requeued (attempt 2)".into(),
            },
        ),
        (
            "record-start",
            ServerToClient::RecordStart {
                uuid: UUID,
                job: "hello".into(),
                len: 3,
            },
        ),
        (
            "record-chunk",
            ServerToClient::RecordChunk {
                data: vec![0x30, 0x01, 0xff],
            },
        ),
        (
            "success",
            ServerToClient::Success {
                detail: Some("queued on linux".into()),
            },
        ),
        (
            "failure",
            ServerToClient::Failure {
                reason: "no job named x".into(),
            },
        ),
        (
            "info-reply",
            ServerToClient::Info(Info {
                schedule: vec![ScheduleEntry {
                    job: script_job(),
                    trigger: Trigger::Hourly,
                    next_run: Some(Timestamp(7)),
                    timeout_secs: None,
                }],
                queues: vec![QueueInfo {
                    platform: "linux".into(),
                    jobs: vec!["hello".into()],
                }],
                running: vec![RunningBuild {
                    uuid: UUID,
                    job: "hello".into(),
                    platform: "linux".into(),
                    started: Timestamp(5),
                    worker: "build1 (127.0.0.1:4000)".into(),
                }],
                dropped_platforms: vec!["old".into()],
                workers: vec![WorkerInfo {
                    platform: "linux".into(),
                    host: "build1".into(),
                    peer: "127.0.0.1:4000".into(),
                    running: Some(UUID),
                }],
            }),
        ),
        ("info-empty", ServerToClient::Info(Info::default())),
        (
            "results-reply",
            ServerToClient::Results(vec![
                ResultSummary {
                    uuid: UUID,
                    job: "hello".into(),
                    platform: "linux".into(),
                    started: Timestamp(1),
                    finished: Timestamp(2),
                    outcome: JobOutcome::Exited(0),
                    upload: UploadState::Delivered { at: Timestamp(3) },
                },
                ResultSummary {
                    uuid: UUID,
                    job: "hello".into(),
                    platform: "linux".into(),
                    started: Timestamp(1),
                    finished: Timestamp(2),
                    outcome: JobOutcome::Aborted("timeout".into()),
                    upload: UploadState::Pending {
                        attempts: 2,
                        last_error: Some("HTTP 502".into()),
                    },
                },
            ]),
        ),
        (
            "result-list",
            ServerToClient::ResultList(vec![ResultEntry {
                summary: ResultSummary {
                    uuid: UUID,
                    job: "hello".into(),
                    platform: "linux".into(),
                    started: Timestamp(1),
                    finished: Timestamp(5),
                    outcome: JobOutcome::Exited(0),
                    upload: UploadState::NotConfigured,
                },
                attempts: 2,
            }]),
        ),
        ("observe-start", ServerToClient::ObserveStart(header)),
        (
            "observe-console",
            ServerToClient::Console(vec![line(10, b"a"), line(20, b"")]),
        ),
        ("observe-dropped", ServerToClient::Dropped { lines: 12 }),
        (
            "observe-end",
            ServerToClient::ObserveEnd {
                finished: Timestamp(99),
                outcome: JobOutcome::Signalled(Signal::Term),
            },
        ),
        (
            "info-part",
            ServerToClient::InfoPart(vec![
                InfoItem::Job(JobSummary {
                    name: "hello".into(),
                    kind: JobSummaryKind::Script {
                        platform: "linux".into(),
                        script_bytes: 11,
                    },
                    trigger: Trigger::Hourly,
                    next_run: Some(Timestamp(7)),
                    timeout_secs: None,
                }),
                InfoItem::Job(JobSummary {
                    name: "solo5".into(),
                    kind: JobSummaryKind::Orb {
                        opam_package: "solo5-hvt".into(),
                    },
                    trigger: Trigger::Cron("0 3 * * *".into()),
                    next_run: None,
                    timeout_secs: Some(600),
                }),
                InfoItem::Queue(QueueInfo {
                    platform: "linux".into(),
                    jobs: vec!["hello".into()],
                }),
                InfoItem::Running(RunningBuild {
                    uuid: UUID,
                    job: "hello".into(),
                    platform: "linux".into(),
                    started: Timestamp(5),
                    worker: "build1 (127.0.0.1:4000)".into(),
                }),
                InfoItem::DroppedPlatform("old".into()),
                InfoItem::Worker(WorkerInfo {
                    platform: "linux".into(),
                    host: "build1".into(),
                    peer: "127.0.0.1:4000".into(),
                    running: Some(UUID),
                }),
            ]),
        ),
        ("info-end", ServerToClient::InfoEnd { items: 6 }),
        (
            "show-job",
            ServerToClient::Job(ScheduleEntry {
                job: script_job(),
                trigger: Trigger::Daily,
                next_run: Some(Timestamp(7)),
                timeout_secs: Some(600),
            }),
        ),
    ]
}

fn frames_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/frames")
}

/// Round-trips every sample, and checks it against its checked-in frame
/// (`tests/frames/v<version>-<name>.bin`: the whole frame, length prefix
/// included).
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(samples: Vec<(&str, T)>) {
    let bless = std::env::var_os("BLESS").is_some();
    for (name, msg) in samples {
        let payload = encode(&msg).unwrap();
        let back: T = decode(&payload).unwrap();
        assert_eq!(back, msg, "{name} round-trips");

        let mut frame = BytesMut::new();
        FrameCodec::default()
            .encode(&payload[..], &mut frame)
            .unwrap();
        let path = frames_dir().join(format!("v{PROTOCOL_VERSION}-{name}.bin"));
        if bless {
            std::fs::create_dir_all(frames_dir()).unwrap();
            std::fs::write(&path, &frame).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with BLESS=1 after a protocol change)",
                path.display()
            )
        });
        assert_eq!(
            &stored[..],
            &frame[..],
            "{name}: encoding changed without a version bump"
        );
        let mut buf = BytesMut::from(&stored[..]);
        let payload = FrameCodec::default().decode_eof(&mut buf).unwrap().unwrap();
        assert_eq!(
            decode::<T>(&payload).unwrap(),
            msg,
            "{name}: the checked-in frame decodes"
        );

        // Every truncation of the payload is an error, not a panic.
        for cut in 0..payload.len() {
            assert!(decode::<T>(&payload[..cut]).is_err(), "{name} cut at {cut}");
        }
        // And so is trailing garbage.
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(matches!(
            decode::<T>(&longer),
            Err(MessageError::Trailing { extra: 1 })
        ));
    }
}

#[test]
fn every_message_round_trips_and_matches_its_checked_in_frame() {
    check(hellos());
    check(hello_replies());
    check(worker_messages());
    check(server_to_worker());
    check(client_requests());
    check(server_to_client());
}

/// Decodes `payload` fully as the message type whose samples include
/// `name`, and encodes the result again; `None` if no sample has that name.
fn decode_as(name: &str, payload: &[u8]) -> Option<Result<Vec<u8>, MessageError>> {
    fn again<T: Serialize + DeserializeOwned>(
        samples: Vec<(&str, T)>,
        name: &str,
        payload: &[u8],
    ) -> Option<Result<Vec<u8>, MessageError>> {
        samples.iter().any(|(n, _)| *n == name).then(|| {
            let msg: T = decode(payload)?;
            encode(&msg)
        })
    }
    again(hellos(), name, payload)
        .or_else(|| again(hello_replies(), name, payload))
        .or_else(|| again(worker_messages(), name, payload))
        .or_else(|| again(server_to_worker(), name, payload))
        .or_else(|| again(client_requests(), name, payload))
        .or_else(|| again(server_to_client(), name, payload))
}

#[test]
fn every_checked_in_frame_of_every_version_still_decodes() {
    // Frames of older versions stay in the directory. Variants are only
    // appended and fields never change, so each old frame must decode fully
    // (no trailing bytes) as today's type of the same name and encode back
    // to the very same bytes. A name no sample has any more fails too: a
    // message type must not disappear.
    let mut versions = std::collections::BTreeMap::<u32, usize>::new();
    for entry in std::fs::read_dir(frames_dir()).expect("tests/frames is checked in") {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (version, name) = file
            .strip_prefix('v')
            .and_then(|f| f.strip_suffix(".bin"))
            .and_then(|f| f.split_once('-'))
            .unwrap_or_else(|| panic!("{file}: not v<version>-<name>.bin"));
        let version: u32 = version.parse().unwrap();
        assert!(version <= PROTOCOL_VERSION, "{file}: from the future");
        let bytes = std::fs::read(&path).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let payload = FrameCodec::default().decode_eof(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "{file}: bytes after the frame");
        let again = decode_as(name, &payload)
            .unwrap_or_else(|| panic!("{file}: no message type has a sample named {name}"))
            .unwrap_or_else(|e| panic!("{file}: does not decode: {e}"));
        assert_eq!(again, &payload[..], "{file}: re-encodes differently");
        *versions.entry(version).or_default() += 1;
    }
    // Every version's samples are kept, the current one's complete.
    let current = [
        hellos().len(),
        hello_replies().len(),
        worker_messages().len(),
        server_to_worker().len(),
        client_requests().len(),
        server_to_client().len(),
    ]
    .iter()
    .sum::<usize>();
    let mut names: Vec<&str> = hellos().iter().map(|(n, _)| *n).collect();
    names.extend(hello_replies().iter().map(|(n, _)| *n));
    names.extend(worker_messages().iter().map(|(n, _)| *n));
    names.extend(server_to_worker().iter().map(|(n, _)| *n));
    names.extend(client_requests().iter().map(|(n, _)| *n));
    names.extend(server_to_client().iter().map(|(n, _)| *n));
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), current, "sample names must be unique");
    assert_eq!(
        versions.get(&PROTOCOL_VERSION),
        Some(&current),
        "{versions:?}"
    );
    assert!(versions.get(&1).is_some_and(|n| *n >= 40), "{versions:?}");
}

#[test]
fn an_old_hello_names_its_version_first() {
    // The server reads the version of a hello it cannot otherwise decode.
    for file in ["v1-hello-client.bin", "v1-hello-worker.bin"] {
        let bytes = std::fs::read(frames_dir().join(file)).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let payload = FrameCodec::default().decode_eof(&mut buf).unwrap().unwrap();
        assert_eq!(peek_hello_version(&payload), Some(1), "{file}");
    }
    for (_, hello) in hellos() {
        let payload = encode(&hello).unwrap();
        assert_eq!(peek_hello_version(&payload), Some(PROTOCOL_VERSION));
    }
}

/// xorshift64*: deterministic random bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_give_errors_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..5_000 {
        let len = (rng.next() % 300) as usize;
        let bytes = rng.bytes(len);
        // As payloads of every message type.
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<HelloReply>(&bytes);
        let _ = decode::<WorkerMessage>(&bytes);
        let _ = decode::<ServerToWorker>(&bytes);
        let _ = decode::<ClientRequest>(&bytes);
        let _ = decode::<ServerToClient>(&bytes);
        // As a stream of frames with a small limit.
        let mut codec = FrameCodec::new(64);
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= 64, "round {round}"),
                Ok(None) => break,
                Err(FrameError::TooLarge { max: 64, .. } | FrameError::Truncated { .. }) => break,
                Err(e) => panic!("round {round}: unexpected {e}"),
            }
        }
    }
}

#[test]
fn a_huge_length_inside_a_payload_is_an_error_not_an_allocation() {
    // A ClientRequest::Results with a job name claiming 2^60 bytes.
    let mut payload = encode(&ClientRequest::Info).unwrap();
    payload.clear();
    payload.push(11); // variant index of Results
    payload.push(1); // Some
    payload.push(253); // u64 varint marker
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(decode::<ClientRequest>(&payload).is_err());
}
