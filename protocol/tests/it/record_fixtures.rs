//! The build record codec against the reference implementation's golden
//! vectors in `fixtures/` (see its README): every vector decodes to the
//! reference's dump or is rejected like the reference rejects it, records
//! re-encode to identical bytes, and the streaming writer and reader agree
//! with `Exec::encode` and `Exec::decode`.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use protocol::record::{
    console_line_len, encode_console_line, read_record, write_record, write_record_from_spools,
    Artifact, ConsoleLine, ConsoleSource, Exec, ExecResult, FileArtifact, RecordError, RecordHead,
    ScriptJob, TimeForms,
};
use sha2::{Digest, Sha256};

use crate::common::{hex, quoted, time, vectors, Expected, Vector};

fn exec_vectors() -> Vec<Vector> {
    vectors("exec", &[""])
}

fn quirk_vectors() -> Vec<Vector> {
    vectors("quirks", &["crafted-exec-", "exec-"])
}

fn e2e_vectors() -> Vec<Vector> {
    vectors("e2e", &["exec-"])
}

fn all_vectors() -> Vec<Vector> {
    let mut all = exec_vectors();
    all.extend(quirk_vectors());
    all.extend(e2e_vectors());
    all
}

/// The fixtures' dump format (README "Dump format"). An absent platform dumps
/// as the reference reports it, `no-platform`.
fn dump(exec: &Exec) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| writeln!(out, "{key}={value}").unwrap();
    line("kind", "exec".into());
    line("job.name", quoted(&exec.job.name));
    line("job.platform", quoted(exec.job.platform_or_default()));
    line("job.script", quoted(&exec.job.script));
    line("uuid", exec.uuid().hyphenated().to_string());
    line("console.count", exec.console.len().to_string());
    for (i, entry) in exec.console.iter().enumerate() {
        line(&format!("console[{i}].delta"), entry.delta_ns.to_string());
        line(&format!("console[{i}].text"), quoted(&entry.data));
    }
    line("started", time(&exec.started));
    line("finished", time(&exec.finished));
    let (kind, value) = match &exec.result {
        ExecResult::Exited(n) => ("exited", n.to_string()),
        ExecResult::Signalled(n) => ("signalled", n.to_string()),
        ExecResult::Stopped(n) => ("stopped", n.to_string()),
        ExecResult::Msg(msg) => ("msg", quoted(msg)),
    };
    line("result", kind.into());
    line("result.value", value);
    line("data.count", exec.output.len().to_string());
    for (i, artifact) in exec.output.iter().enumerate() {
        line(&format!("data[{i}].path"), quoted(&artifact.path));
        line(
            &format!("data[{i}].length"),
            artifact.data.len().to_string(),
        );
        line(
            &format!("data[{i}].sha256"),
            hex(&Sha256::digest(&artifact.data)),
        );
    }
    out
}

/// Checks each vector against the reference; returns (dumped, rejected).
fn check_against_reference(vectors: &[Vector]) -> (usize, usize) {
    let (mut dumped, mut rejected) = (0, 0);
    for vector in vectors {
        match (&vector.expected, Exec::decode(&vector.der)) {
            (Expected::Dump(expected), Ok(exec)) => {
                assert_eq!(
                    dump(&exec),
                    *expected,
                    "{}: dump differs from the reference",
                    vector.name
                );
                dumped += 1;
            }
            (Expected::Dump(_), Err(e)) => {
                panic!("{}: the reference decodes it, we fail: {e}", vector.name)
            }
            (Expected::Rejected(_), Err(_)) => rejected += 1,
            (Expected::Rejected(why), Ok(exec)) => {
                panic!(
                    "{}: the reference rejects it ({}), we decode {exec:?}",
                    vector.name,
                    why.trim()
                )
            }
        }
    }
    (dumped, rejected)
}

#[test]
fn exec_vectors_decode_to_the_reference_dumps() {
    let vectors = exec_vectors();
    let (dumped, rejected) = check_against_reference(&vectors);
    assert!(dumped > 0, "no exec vectors found");
    assert_eq!(rejected, 0, "exec/ holds only records the reference reads");
}

#[test]
fn quirk_vectors_decode_or_fail_like_the_reference() {
    let vectors = quirk_vectors();
    let (dumped, rejected) = check_against_reference(&vectors);
    assert!(dumped > 0, "no accepted exec quirks found");
    assert!(rejected > 0, "no rejected exec quirks found");
}

#[test]
fn e2e_records_decode_to_the_reference_dumps() {
    let vectors = e2e_vectors();
    let (dumped, rejected) = check_against_reference(&vectors);
    assert!(dumped > 0, "no e2e records found");
    assert_eq!(rejected, 0, "e2e/ holds only real records");
}

#[test]
fn records_reencode_to_identical_bytes() {
    let mut checked = 0;
    for vector in exec_vectors().into_iter().chain(e2e_vectors()) {
        let exec = Exec::decode(&vector.der).unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        assert!(
            exec.encode() == vector.der,
            "{}: re-encoding differs",
            vector.name
        );
        assert_eq!(
            exec.encoded_len(),
            vector.der.len() as u64,
            "{}",
            vector.name
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn reencoding_a_quirk_gives_a_record_that_decodes_to_the_same_values() {
    // Quirks are in forms builder never writes; re-encoding canonicalises
    // them without changing what they say.
    let mut checked = 0;
    for vector in quirk_vectors() {
        if let Ok(exec) = Exec::decode(&vector.der) {
            let again =
                Exec::decode(&exec.encode()).unwrap_or_else(|e| panic!("{}: {e}", vector.name));
            assert_eq!(dump(&again), dump(&exec), "{}", vector.name);
            assert_eq!(again.job.files, exec.job.files, "{}", vector.name);
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn a_non_empty_job_files_list_is_kept() {
    let vector = vectors("quirks", &["crafted-exec-job-files-nonempty"])
        .pop()
        .unwrap();
    let exec = Exec::decode(&vector.der).unwrap();
    assert_eq!(
        exec.job.files,
        [Artifact {
            path: b"f".to_vec(),
            data: b"content".to_vec()
        }]
    );
    assert!(exec.encode() == vector.der, "re-encodes identically");
}

#[test]
fn an_absent_platform_is_none_and_stays_absent() {
    let vector = vectors("quirks", &["crafted-exec-job-no-platform"])
        .pop()
        .unwrap();
    let exec = Exec::decode(&vector.der).unwrap();
    assert_eq!(exec.job.platform, None);
    assert!(exec.encode() == vector.der, "re-encodes identically");
}

/// Writes the artifacts of `exec` to files in `dir`.
fn artifacts_on_disk(exec: &Exec, dir: &Path) -> Vec<FileArtifact> {
    exec.output
        .iter()
        .enumerate()
        .map(|(i, artifact)| {
            let file = dir.join(format!("artifact-{i}"));
            fs::write(&file, &artifact.data).unwrap();
            FileArtifact {
                path: artifact.path.clone(),
                file,
                len: artifact.data.len() as u64,
            }
        })
        .collect()
}

/// A console spooled as the server spools it: lines encoded one after the
/// other, oldest first, in a file, written back newest first.
struct SpooledConsole {
    file: File,
    /// Each line's offset and length in the file.
    lines: Vec<(u64, u64)>,
}

impl SpooledConsole {
    fn new(dir: &Path, newest_first: &[ConsoleLine]) -> SpooledConsole {
        let path = dir.join("console");
        let mut out = File::create(&path).unwrap();
        let mut lines = Vec::new();
        let mut offset = 0;
        for line in newest_first.iter().rev() {
            encode_console_line(line.delta_ns, &line.data, &mut out).unwrap();
            let len = console_line_len(line.delta_ns, line.data.len());
            lines.push((offset, len));
            offset += len;
        }
        assert_eq!(out.metadata().unwrap().len(), offset);
        SpooledConsole {
            file: File::open(&path).unwrap(),
            lines,
        }
    }
}

impl ConsoleSource for SpooledConsole {
    fn encoded_len(&self) -> u64 {
        self.lines.iter().map(|(_, len)| len).sum()
    }

    fn write_newest_first(&mut self, out: &mut dyn Write) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        for &(offset, len) in self.lines.iter().rev() {
            let mut buf = vec![0; len as usize];
            self.file.read_exact_at(&mut buf, offset)?;
            out.write_all(&buf)?;
        }
        Ok(())
    }
}

#[test]
fn a_record_written_from_spools_is_byte_identical_for_every_vector() {
    let mut checked = 0;
    for vector in all_vectors() {
        let Ok(exec) = Exec::decode(&vector.der) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let files = artifacts_on_disk(&exec, dir.path());
        let (mut head, _) = exec.clone().into_parts();
        let mut console = SpooledConsole::new(dir.path(), &head.console);
        head.console = Vec::new();
        let mut out = Vec::new();
        let written = write_record_from_spools(&mut out, &head, &mut console, &files).unwrap();
        assert!(
            out == exec.encode(),
            "{}: bytes written from spools differ from encode",
            vector.name
        );
        assert_eq!(written, out.len() as u64, "{}", vector.name);
        checked += 1;
    }
    assert!(checked > 10, "only {checked} vectors checked");
}

#[test]
fn a_console_source_that_writes_other_than_it_announced_fails_the_record() {
    struct Liar;
    impl ConsoleSource for Liar {
        fn encoded_len(&self) -> u64 {
            10
        }
        fn write_newest_first(&mut self, out: &mut dyn Write) -> io::Result<()> {
            encode_console_line(1, b"ab", out)
        }
    }
    let head = RecordHead {
        job: ScriptJob::new(b"j", b"true", None),
        uuid: [1; 16],
        console: Vec::new(),
        started: chrono::DateTime::UNIX_EPOCH,
        finished: chrono::DateTime::UNIX_EPOCH,
        time_forms: TimeForms::default(),
        result: ExecResult::Exited(0),
    };
    let e = write_record_from_spools(&mut Vec::new(), &head, &mut Liar, &[]).unwrap_err();
    assert!(e.to_string().contains("10 were announced"), "{e}");
}

#[test]
fn write_record_matches_encode_for_every_vector() {
    let mut checked = 0;
    for vector in all_vectors() {
        let Ok(exec) = Exec::decode(&vector.der) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let files = artifacts_on_disk(&exec, dir.path());
        let (head, _) = exec.clone().into_parts();
        let mut out = Vec::new();
        let written = write_record(&mut out, &head, &files).unwrap();
        assert!(
            out == exec.encode(),
            "{}: streamed bytes differ from encode",
            vector.name
        );
        assert_eq!(written, out.len() as u64, "{}", vector.name);
        assert_eq!(
            protocol::record::record_len(&head, &files),
            written,
            "{}",
            vector.name
        );
        checked += 1;
    }
    assert!(checked > 0);
}

/// A writer that only hashes and counts.
struct Hashing {
    hasher: Sha256,
    len: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift), so the artifact does not
/// compress into a trivial pattern.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sample_head() -> RecordHead {
    use chrono::TimeZone;
    RecordHead {
        job: ScriptJob::new(
            "big",
            "dd if=/dev/urandom of=big.bin\n",
            Some(b"linux".to_vec()),
        ),
        uuid: *uuid::Uuid::parse_str("0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3e")
            .unwrap()
            .as_bytes(),
        console: vec![ConsoleLine {
            delta_ns: 5_000_000_000,
            data: b"done".to_vec(),
        }],
        started: chrono::Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap(),
        finished: chrono::Utc.with_ymd_and_hms(2025, 3, 1, 12, 5, 0).unwrap()
            + chrono::TimeDelta::milliseconds(250),
        time_forms: TimeForms::default(),
        result: ExecResult::Exited(0),
    }
}

#[test]
fn write_record_streams_a_large_artifact() {
    const SIZE: usize = 50 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let data = noise(SIZE);
    let data_sha = Sha256::digest(&data);
    let big = dir.path().join("big.bin");
    fs::write(&big, &data).unwrap();
    let small = dir.path().join("small.txt");
    fs::write(&small, b"hello\n").unwrap();
    let head = sample_head();
    let files = [
        FileArtifact {
            path: b"big.bin".to_vec(),
            file: big,
            len: SIZE as u64,
        },
        FileArtifact {
            path: b"small.txt".to_vec(),
            file: small,
            len: 6,
        },
    ];

    // What encode produces for the same record, kept only as a hash.
    let expected = {
        let exec = Exec::from_parts(
            head.clone(),
            vec![
                Artifact {
                    path: b"big.bin".to_vec(),
                    data,
                },
                Artifact {
                    path: b"small.txt".to_vec(),
                    data: b"hello\n".to_vec(),
                },
            ],
        );
        let bytes = exec.encode();
        (Sha256::digest(&bytes), bytes.len() as u64)
    };

    let mut hashing = Hashing {
        hasher: Sha256::new(),
        len: 0,
    };
    let written = write_record(&mut hashing, &head, &files).unwrap();
    assert_eq!((hashing.hasher.finalize(), hashing.len), expected);
    assert_eq!(written, expected.1);

    // And the streaming reader gets it back without holding the artifact.
    let record = dir.path().join("full");
    let mut out = io::BufWriter::new(File::create(&record).unwrap());
    write_record(&mut out, &head, &files).unwrap();
    out.flush().unwrap();
    drop(out);
    let mut seen = Vec::new();
    let read_head = read_record(File::open(&record).unwrap(), |path, len, body| {
        let mut hasher = Sha256::new();
        let copied = io::copy(body, &mut hasher)?;
        assert_eq!(copied, len);
        seen.push((path.to_vec(), len, hasher.finalize()));
        Ok(())
    })
    .unwrap();
    assert_eq!(read_head, head);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], (b"big.bin".to_vec(), SIZE as u64, data_sha));
    assert_eq!(seen[1].0, b"small.txt");
}

#[test]
fn write_record_refuses_a_file_whose_size_changed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifact");
    fs::write(&file, b"12345").unwrap();
    let head = sample_head();
    for (len, says) in [
        (6, "has 5 bytes, 6 were announced"),
        (4, "is longer than the 4 bytes announced"),
    ] {
        let files = [FileArtifact {
            path: b"a".to_vec(),
            file: file.clone(),
            len,
        }];
        let err = write_record(&mut io::sink(), &head, &files).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains(says), "{message}");
    }
    let missing = [FileArtifact {
        path: b"a".to_vec(),
        file: dir.path().join("missing"),
        len: 1,
    }];
    let err = write_record(&mut io::sink(), &head, &missing).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("missing"), "{err}");
}

/// `read_record` keeping every artifact in memory.
fn read_all(bytes: &[u8]) -> Result<Exec, RecordError> {
    let mut output = Vec::new();
    let head = read_record(bytes, |path, len, body| {
        let mut data = Vec::new();
        body.read_to_end(&mut data)?;
        assert_eq!(data.len() as u64, len);
        output.push(Artifact {
            path: path.to_vec(),
            data,
        });
        Ok(())
    })?;
    Ok(Exec::from_parts(head, output))
}

#[test]
fn read_record_agrees_with_decode_on_every_vector() {
    let (mut accepted, mut rejected) = (0, 0);
    for vector in all_vectors() {
        match (Exec::decode(&vector.der), read_all(&vector.der)) {
            (Ok(decoded), Ok(read)) => {
                assert_eq!(read, decoded, "{}", vector.name);
                accepted += 1;
            }
            (Err(_), Err(_)) => rejected += 1,
            (decoded, read) => panic!(
                "{}: decode gives {decoded:?}, read_record {read:?}",
                vector.name
            ),
        }
    }
    assert!(accepted > 0 && rejected > 0);
}

#[test]
fn read_record_skips_what_the_callback_leaves_unread() {
    let vector = vectors("exec", &["08-data-nested"]).pop().unwrap();
    let decoded = Exec::decode(&vector.der).unwrap();
    for take in [0, 1, 3] {
        let mut seen = Vec::new();
        let head = read_record(&vector.der[..], |path, len, body| {
            let mut prefix = Vec::new();
            body.take(take).read_to_end(&mut prefix)?;
            seen.push((path.to_vec(), len, prefix));
            Ok(())
        })
        .unwrap();
        assert_eq!(head, decoded.clone().into_parts().0);
        let expected: Vec<_> = decoded
            .output
            .iter()
            .map(|a| {
                (
                    a.path.clone(),
                    a.data.len() as u64,
                    a.data[..a.data.len().min(take as usize)].to_vec(),
                )
            })
            .collect();
        assert_eq!(seen, expected);
    }
}

#[test]
fn read_record_reports_a_failing_callback_with_the_artifact_path() {
    let vector = vectors("exec", &["08-data-nested"]).pop().unwrap();
    let err = read_record(&vector.der[..], |path, _, _| {
        if path == b"opam-switch" {
            Err(io::Error::other("disk full"))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    match &err {
        RecordError::Artifact { path, source, .. } => {
            assert_eq!(path, b"opam-switch");
            assert_eq!(source.to_string(), "disk full");
        }
        other => panic!("expected an artifact error, got {other:?}"),
    }
    assert!(err.to_string().contains("opam-switch"), "{err}");
}

#[test]
fn truncated_records_are_refused_by_both_readers() {
    for name in ["08-data-nested", "03-console-deltas"] {
        let vector = vectors("exec", &[name]).pop().unwrap();
        for end in 0..vector.der.len() {
            let prefix = &vector.der[..end];
            assert!(
                Exec::decode(prefix).is_err(),
                "{name}: prefix of {end} bytes decodes"
            );
            let err = read_all(prefix).expect_err("a prefix must not read");
            assert!(
                matches!(err, RecordError::Truncated { .. }),
                "{name}: prefix of {end} bytes: {err}"
            );
        }
    }
}

#[test]
fn every_vector_is_found() {
    // Counts as of the fixtures' writing; more vectors are welcome.
    assert!(exec_vectors().len() >= 17);
    assert!(quirk_vectors().len() >= 45);
    assert!(e2e_vectors().len() >= 10);
}

#[test]
fn time_forms_the_reference_wrote_are_kept_for_re_encoding() {
    use protocol::record::TimeForm;
    for (name, started, finished) in [
        (
            "10-submillisecond",
            TimeForm::GeneralizedMillis,
            TimeForm::Generalized,
        ),
        ("11-utctime", TimeForm::UtcTime, TimeForm::UtcTime),
    ] {
        let vector = vectors("exec", &[name]).pop().unwrap();
        let mut exec = Exec::decode(&vector.der).unwrap();
        assert_eq!(exec.time_forms, TimeForms { started, finished }, "{name}");
        assert!(exec.encode() == vector.der, "{name}");
        // Without the recorded forms the bytes would differ.
        exec.time_forms = TimeForms::default();
        assert!(exec.encode() != vector.der, "{name}");
    }
}

/// The invariants the `record_decode` fuzz target checks, on every
/// single-byte mutation of the small vectors: both readers agree, and what
/// decodes re-encodes to a record that decodes to the same value.
#[test]
fn mutated_vectors_keep_the_codec_invariants() {
    let mut decoded_mutants = 0;
    for vector in all_vectors().into_iter().filter(|v| v.der.len() < 4096) {
        for at in 0..vector.der.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff, vector.der[at] ^ 0x20] {
                let mut mutant = vector.der.clone();
                mutant[at] = byte;
                match (Exec::decode(&mutant), read_all(&mutant)) {
                    (Ok(exec), Ok(read)) => {
                        assert_eq!(read, exec, "{} with byte {at} = {byte:#x}", vector.name);
                        let encoded = exec.encode();
                        let again = Exec::decode(&encoded).unwrap();
                        assert_eq!(again, exec, "{} with byte {at} = {byte:#x}", vector.name);
                        assert!(again.encode() == encoded, "{} with byte {at} = {byte:#x}", vector.name);
                        decoded_mutants += 1;
                    }
                    (Err(_), Err(_)) => {}
                    (decoded, read) => panic!(
                        "{} with byte {at} = {byte:#x}: decode gives {decoded:?}, read_record {read:?}",
                        vector.name
                    ),
                }
            }
        }
    }
    assert!(decoded_mutants > 0);
}
