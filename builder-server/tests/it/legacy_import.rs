//! `builder-server --import-state`: every reference state fixture imported
//! by the real binary, checked through `builder-client info --json` on a
//! server started on the result; refused into a directory holding jobs
//! without `--force`; idempotent with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{bin, fixtures, Server};
use chrono::{DateTime, Datelike, Utc};
use protocol::legacy::{Job, State};

/// The reference's state files that have a dump, and the end-to-end run's.
fn state_files() -> Vec<PathBuf> {
    let root = fixtures();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "der") && p.with_extension("txt").exists())
        .collect();
    files.sort();
    files.push(root.join("e2e/state-final.der"));
    assert!(files.len() >= 5, "{files:?}");
    files
}

fn import(dir: &Path, etc: &Path, file: &Path, force: bool) -> Output {
    let mut cmd = std::process::Command::new(bin("builder-server"));
    cmd.arg("--dir")
        .arg(dir)
        .arg("--config-dir")
        .arg(etc)
        .arg("--import-state")
        .arg(file);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn every_reference_state_file_imports() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, file) in state_files().iter().enumerate() {
        let shown = file.display().to_string();
        let decoded = State::decode(&std::fs::read(file).unwrap()).unwrap();
        let state = &decoded.state;
        let dir = tmp.path().join(format!("state-{n}"));
        // The server's config dir: an orb-build template for debian-12 only.
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("orb-build.template.debian-12"),
            "build %%OPAM_PACKAGE%%\n",
        )
        .unwrap();

        let jobs: BTreeSet<&[u8]> = state.schedule().map(|i| i.job.name()).collect();
        let queued: Vec<(&[u8], &Job)> = state
            .queues()
            .flat_map(|(p, jobs)| jobs.iter().map(move |j| (p, j)))
            .collect();
        let dropped: BTreeSet<&[u8]> = state.dropped_platforms().collect();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let summary = format!(
            "imported {}, {}, {} from {shown}",
            plural(jobs.len(), "job", "jobs"),
            plural(queued.len(), "queue entry", "queue entries"),
            plural(dropped.len(), "dropped platform", "dropped platforms"),
        );
        let out = import(&dir, &etc, file, false);
        assert!(out.status.success(), "{shown}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with(&summary), "{shown}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        // The items the reference skips are skipped with its warning.
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.matches("no longer supported").count(),
            decoded.warnings.len(),
            "{shown}: {stderr}"
        );

        if !jobs.is_empty() {
            let again = import(&dir, &etc, file, false);
            assert_eq!(again.status.code(), Some(1), "{shown}");
            let stderr = text(&again.stderr);
            assert!(
                stderr.contains(&format!("already holds {} job", jobs.len()))
                    && stderr.contains("--force"),
                "{shown}: {stderr}"
            );
        }
        for _ in 0..2 {
            let forced = import(&dir, &etc, file, true);
            assert!(forced.status.success(), "{shown}: {}", text(&forced.stderr));
            let stdout = text(&forced.stdout);
            assert!(
                stdout.starts_with("imported 0 jobs, 0 queue entries, 0 dropped platforms"),
                "{shown}: {stdout}"
            );
        }

        let server = Server::start(&dir);
        let out = server.client_ok(&["info", "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let schedule: BTreeMap<String, &serde_json::Value> = info["schedule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| (j["name"].as_str().unwrap().to_owned(), j))
            .collect();
        assert_eq!(schedule.len(), jobs.len(), "{shown}: {info}");
        for item in state.schedule() {
            let name = String::from_utf8(item.job.name().to_vec()).unwrap();
            let job = schedule[&name];
            assert_eq!(job["trigger"], item.period.name(), "{shown}: {name}");
            match &item.job {
                Job::Script(s) => {
                    assert_eq!(job["kind"], "script");
                    assert_eq!(
                        job["platform"].as_str().unwrap().as_bytes(),
                        s.platform_or_default()
                    );
                    assert_eq!(job["script_bytes"], s.script.len() as u64);
                }
                Job::Orb(o) => {
                    assert_eq!(job["kind"], "orb-build");
                    assert_eq!(
                        job["opam_package"].as_str().unwrap().as_bytes(),
                        &o.opam_package[..]
                    );
                }
            }
            if item.next.at.year() >= 9999 {
                // The reference's "never again".
                assert!(job["next_run"].is_null(), "{shown}: {name}: {job}");
            } else {
                // The imported next run, or a later one once it came due.
                let next: DateTime<Utc> = job["next_run"].as_str().unwrap().parse().unwrap();
                assert!(
                    next >= item.next.at,
                    "{shown}: {name}: {next} < {}",
                    item.next.at
                );
            }
        }
        // Each imported queue keeps its order, at its front.
        for (platform, jobs) in state.queues() {
            if jobs.is_empty() {
                continue;
            }
            let queue = info["queues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["platform"].as_str().unwrap().as_bytes() == platform)
                .unwrap_or_else(|| panic!("{shown}: no queue: {info}"));
            let names: Vec<&str> = queue["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j.as_str().unwrap())
                .collect();
            let imported: Vec<String> = jobs
                .iter()
                .map(|j| String::from_utf8(j.name().to_vec()).unwrap())
                .collect();
            assert_eq!(&names[..imported.len()], &imported[..], "{shown}: {info}");
        }
        let got_dropped: BTreeSet<&[u8]> = info["dropped_platforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().as_bytes())
            .collect();
        assert_eq!(got_dropped, dropped, "{shown}");
    }
}

#[test]
fn an_unreadable_state_file_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("state");
    std::fs::write(&bad, b"\x30\x03\xa5\x01").unwrap();
    let out = import(&tmp.path().join("dir"), tmp.path(), &bad, false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("is not a reference state file"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{stderr}"
    );
    let missing = import(
        &tmp.path().join("dir"),
        tmp.path(),
        &tmp.path().join("nope"),
        false,
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("cannot read"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn a_state_directory_in_use_is_not_imported_into() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let server = Server::start(&dir);
    let file = fixtures().join("state/02-typical.der");
    let out = import(&dir, tmp.path(), &file, true);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("in use by another builder-server"),
        "{stderr}"
    );
    // Nothing was written behind the running server's back.
    assert!(server.info().schedule.is_empty());
}
