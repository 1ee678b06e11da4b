//! builder-inspect on the reference's golden vectors.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::common::{dump, error_lines, fixture, fixtures, inspect, text};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &entry.path(), out);
            } else {
                out.push(entry.path().strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Checks that every artifact in the dump `rel` (a `.txt`) is under `dir`
/// with the right length and SHA-256.
fn assert_artifacts_match(rel: &str, dir: &Path) {
    let d = dump(rel);
    let count: usize = text(&d, "data.count").parse().unwrap();
    assert!(count > 0, "{rel} has no artifacts");
    for i in 0..count {
        let path = &d[&format!("data[{i}].path")];
        let path = dir.join(std::ffi::OsStr::from_bytes(path));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            bytes.len().to_string(),
            text(&d, &format!("data[{i}].length")),
            "{}",
            path.display()
        );
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            text(&d, &format!("data[{i}].sha256")),
            "{}",
            path.display()
        );
    }
    assert_eq!(files_under(dir).len(), count);
}

#[test]
fn everything_of_a_real_reference_record_killed_by_sigkill() {
    let der = fixtures().join("e2e").join("exec-job5-e20097f8.der");
    let out = inspect().arg(&der).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected_start = "\
job:      job5
platform: linux
uuid:     e20097f8-ee36-4bd1-8a5b-1aa3213c52c0
started:  2026-11-23T17:56:34.599Z
finished: 2026-11-23T17:56:35.659Z
duration: 1.060s
result:   killed by SIGKILL
script:
#!/bin/sh
echo \"killing the worker shell\"
";
    assert!(stdout.starts_with(expected_start), "{stdout}");
    assert!(
        stdout.ends_with(
            "console (1 line):\n[   0.091s] killing the worker shell\nartifacts (0 files, 0 B):\n"
        ),
        "{stdout}"
    );
}

#[test]
fn every_fixture_record_is_shown() {
    let mut seen = 0;
    for folder in ["exec", "e2e"] {
        for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !name.ends_with(".der") || !(folder == "exec" || name.starts_with("exec-")) {
                continue;
            }
            let d = dump(&format!("{folder}/{}", name.replace(".der", ".txt")));
            let out = inspect().arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("uuid:     {}\n", text(&d, "uuid"))),
                "{name}"
            );
            let result = match text(&d, "result").as_str() {
                "exited" => format!("exited {}", text(&d, "result.value")),
                "signalled" => "killed by ".to_owned(),
                "stopped" => "stopped by ".to_owned(),
                "msg" => format!("aborted: {}", text(&d, "result.value")),
                other => panic!("{other}"),
            };
            assert!(
                stdout.contains(&format!("result:   {result}")),
                "{name}: {stdout}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 25, "only {seen} fixtures found");
}

#[test]
fn console_is_printed_oldest_first() {
    let der = fixture("exec/03-console-deltas.der");
    let out = inspect().arg(&der).arg("--console").output().unwrap();
    assert!(out.status.success());
    // The dump lists the console as stored: newest first.
    let d = dump("exec/03-console-deltas.txt");
    let count: usize = text(&d, "console.count").parse().unwrap();
    let mut expected = Vec::new();
    for i in (0..count).rev() {
        expected.extend_from_slice(&d[&format!("console[{i}].text")]);
        expected.push(b'\n');
    }
    let texts: Vec<u8> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .flat_map(|l| {
            // "[   1.234s] text"
            let at = l.iter().position(|&b| b == b']').unwrap() + 2;
            let mut v = l[at..].to_vec();
            v.push(b'\n');
            v
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&texts),
        String::from_utf8_lossy(&expected)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("[-4611686018.427s] min_int\n"),
        "{stdout}"
    );
    assert!(stdout.ends_with("[4611686018.427s] max_int\n"), "{stdout}");
    assert!(stdout.contains("[   0.000s] \n[   0.000s] 1\n"), "{stdout}");
}

#[test]
fn script_and_job_alone() {
    let der = fixture("exec/08-data-nested.der");
    let out = inspect().arg(&der).arg("--script").output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"#!/bin/sh\nmkdir -p bin\n");

    let out = inspect().arg(&der).arg("--job").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "job:      data\nplatform: ubuntu-22.04\n"
    );
}

#[test]
fn output_writes_nested_artifacts_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = inspect()
        .arg(fixture("exec/08-data-nested.der"))
        .arg("--output")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_artifacts_match("exec/08-data-nested.txt", &dir);
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(std::fs::read(dir.join("allbytes.bin")).unwrap(), all);
    assert_eq!(
        std::fs::read(dir.join("deeply/nested/dir/file.txt")).unwrap(),
        b"nested\n"
    );
    assert_eq!(std::fs::read(dir.join("system-packages")).unwrap(), b"");
}

#[test]
fn output_writes_a_large_artifact_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let out = inspect()
        .arg(fixture("exec/12-large.der"))
        .args(["--console", "--output"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read(fixture("specs/exec/12-large.files/blob.bin")).unwrap();
    assert_eq!(expected.len(), 200_000);
    assert!(std::fs::read(tmp.path().join("blob.bin")).unwrap() == expected);
    assert_eq!(files_under(tmp.path()), [PathBuf::from("blob.bin")]);
    assert_artifacts_match("exec/12-large.txt", tmp.path());
    // One artifact, and its size as a person reads it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("wrote 1 artifact (195.3 KiB) to "),
        "{stderr}"
    );
    let listing = inspect()
        .arg(fixture("exec/12-large.der"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&listing.stdout);
    assert!(
        stdout.ends_with(
            "artifacts (1 file, 195.3 KiB):
  195.3 KiB  blob.bin
"
        ),
        "{stdout}"
    );
}

#[test]
fn output_of_unicode_paths_refuses_only_the_unsafe_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = inspect()
        .arg(fixture("exec/14-unicode-paths.der"))
        .arg("--output")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"/abs/path\": absolute path"), "{stderr}");
    assert!(
        stderr.contains("\"./dot/../x\": path has a '..' component"),
        "{stderr}"
    );
    assert_eq!(error_lines(&out.stderr).len(), 1, "{stderr}");
    assert!(dir.join("résumé/ü.txt").is_file());
    assert!(dir.join("dir with space/file name").is_file());
    assert!(!Path::new("/abs/path").exists());
    // Nothing but the output directory in the temporary directory.
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "something was written next to the output directory"
    );
}

#[test]
fn output_never_escapes_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("b").join("out");
    let out = inspect()
        .arg(fixture("quirks/crafted-exec-path-dotdot.der"))
        .arg("--output")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("../../etc/passwd"), "{stderr}");
    assert_eq!(
        files_under(tmp.path()),
        Vec::<PathBuf>::new(),
        "a file was written"
    );
    // The record itself is still shown.
    assert!(String::from_utf8_lossy(&out.stdout).contains("../../etc/passwd"));
}

#[test]
fn output_does_not_follow_symlinks_or_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("bin")).unwrap();
    std::os::unix::fs::symlink(outside.join("planted"), dir.join("opam-switch")).unwrap();
    std::fs::write(dir.join("build-environment"), b"mine").unwrap();

    let out = inspect()
        .arg(fixture("exec/08-data-nested.der"))
        .arg("--output")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"bin/foo.hvt\""), "{stderr}");
    assert!(stderr.contains("\"opam-switch\""), "{stderr}");
    assert!(stderr.contains("\"build-environment\""), "{stderr}");
    assert!(
        stderr.contains("error: 3 of 6 artifacts not written"),
        "{stderr}"
    );
    assert_eq!(files_under(&outside), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read(dir.join("build-environment")).unwrap(),
        b"mine"
    );
    // The safe ones were still written.
    assert_eq!(
        std::fs::read(dir.join("deeply/nested/dir/file.txt")).unwrap(),
        b"nested\n"
    );
}

#[test]
fn truncated_garbage_and_missing_files_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = std::fs::read(fixture("exec/08-data-nested.der")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.der", whole[..whole.len() / 2].to_vec()),
        ("garbage.der", b"this is not a build record\n".to_vec()),
        ("empty.der", Vec::new()),
        ("trailing.der", [&whole[..], b"x"].concat()),
    ];
    for (name, bytes) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = inspect().arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {}: ", path.display())),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}");
    }
    for rel in [
        "quirks/crafted-exec-truncated.der",
        "quirks/crafted-exec-len-indefinite.der",
    ] {
        let out = inspect().arg(fixture(rel)).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{rel}");
        assert_eq!(error_lines(&out.stderr).len(), 1, "{rel}");
    }

    let missing = tmp.path().join("missing.der");
    let out = inspect().arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {}: ", missing.display())),
        "{stderr}"
    );
}
