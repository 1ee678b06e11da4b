//! Throughput of the two codecs on the hot paths: the frame codec with the
//! messages a build sends most (console batches, artifact chunks), and the
//! build record (encode, decode, streaming read).
//!
//!     cargo bench -p builder-protocol --bench codecs
//!
//! Figures are bytes of payload (or of record) per second.

use std::hint::black_box;
use std::io::Cursor;

use bytes::BytesMut;
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protocol::codec::{FrameCodec, CHUNK_SIZE};
use protocol::message::{self, OutputLine, WorkerMessage};
use protocol::record::{
    read_record, Artifact, ConsoleLine, Exec, ExecResult, RecordHead, ScriptJob, TimeForms,
};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

/// A console batch as the worker sends it: 256 lines of 100 bytes.
fn console_batch() -> WorkerMessage {
    let line = vec![b'x'; 100];
    WorkerMessage::Console {
        uuid: Uuid::from_bytes([7; 16]),
        lines: (0..256)
            .map(|i| OutputLine {
                delta_ns: i * 1_000_000,
                data: line.clone(),
            })
            .collect(),
    }
}

fn artifact_chunk() -> WorkerMessage {
    WorkerMessage::ArtifactChunk {
        uuid: Uuid::from_bytes([7; 16]),
        data: vec![0xa5; CHUNK_SIZE],
    }
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, msg) in [("console", console_batch()), ("chunk", artifact_chunk())] {
        let payload = message::encode(&msg).unwrap();
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function(format!("encode/{name}"), |b| {
            let mut codec = FrameCodec::default();
            let mut out = BytesMut::with_capacity(payload.len() + 8);
            b.iter(|| {
                out.clear();
                let bytes = message::encode(black_box(&msg)).unwrap();
                codec.encode(&bytes[..], &mut out).unwrap();
                black_box(out.len())
            })
        });
        let mut framed = BytesMut::new();
        FrameCodec::default()
            .encode(&payload[..], &mut framed)
            .unwrap();
        group.bench_function(format!("decode/{name}"), |b| {
            let mut codec = FrameCodec::default();
            b.iter_batched(
                || framed.clone(),
                |mut src| {
                    let frame = codec.decode(&mut src).unwrap().unwrap();
                    let msg: WorkerMessage = message::decode(&frame).unwrap();
                    black_box(msg)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A record like a real build's: 10 000 console lines of 80 bytes and a
/// 4 MiB artifact.
fn record() -> Exec {
    let head = RecordHead {
        job: ScriptJob::new(
            "bench-job",
            "#!/bin/sh\nmake\n",
            Some(b"debian-12".to_vec()),
        ),
        uuid: [3; 16],
        console: (0..10_000)
            .rev()
            .map(|i| ConsoleLine {
                delta_ns: i * 1_000_000,
                data: vec![b'y'; 80],
            })
            .collect(),
        started: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap(),
        finished: Utc.with_ymd_and_hms(2026, 12, 1, 10, 5, 0).unwrap(),
        time_forms: TimeForms::default(),
        result: ExecResult::Exited(0),
    };
    let output = vec![Artifact {
        path: b"dist/package.tar.gz".to_vec(),
        data: vec![0x5a; 4 * 1024 * 1024],
    }];
    Exec::from_parts(head, output)
}

fn records(c: &mut Criterion) {
    let exec = record();
    let bytes = exec.encode();
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(30);
    group.bench_function("encode", |b| b.iter(|| black_box(exec.encode())));
    group.bench_function("decode", |b| {
        b.iter(|| black_box(Exec::decode(black_box(&bytes)).unwrap()))
    });
    group.bench_function("read_record", |b| {
        b.iter(|| {
            let mut sink = 0usize;
            let head = read_record(Cursor::new(&bytes[..]), |_path, _len, data| {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = std::io::Read::read(data, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    sink += n;
                }
                Ok(())
            })
            .unwrap();
            black_box((head, sink))
        })
    });
    group.finish();
}

criterion_group!(benches, frames, records);
criterion_main!(benches);
