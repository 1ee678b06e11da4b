//! What the fixture tests share: finding the golden vectors in `fixtures/`
//! and printing values in the fixtures' dump format (its README, "Dump
//! format").

#![allow(dead_code)] // each module uses its own part

use std::fs;
use std::path::{Path, PathBuf};

use protocol::record::escape_bytes;

/// The golden vectors, `fixtures/` at the top of the repository. Missing fixtures are
/// a failure, never a skip.
pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("README.md").is_file(),
        "fixtures missing: expected them at {}",
        dir.display()
    );
    dir
}

/// What the reference made of a vector.
pub enum Expected {
    /// Its decoder's dump (`NAME.txt`).
    Dump(String),
    /// Its decoder's error (`NAME.err`).
    Rejected(String),
}

pub struct Vector {
    pub name: String,
    pub der: Vec<u8>,
    pub expected: Expected,
}

/// Every `NAME.der` in `folder` whose name starts with one of `prefixes`.
pub fn vectors(folder: &str, prefixes: &[&str]) -> Vec<Vector> {
    let dir = fixtures().join(folder);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|file| file.strip_suffix(".der").map(str::to_owned))
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let base = dir.join(&name);
            let der = fs::read(base.with_extension("der")).unwrap();
            let err = base.with_extension("err");
            let txt = base.with_extension("txt");
            let expected = if err.exists() {
                Expected::Rejected(fs::read_to_string(err).unwrap())
            } else {
                let dump = fs::read_to_string(&txt).unwrap_or_else(|e| {
                    panic!("{folder}/{name}: neither .err nor readable .txt: {e}")
                });
                Expected::Dump(dump)
            };
            Vector {
                name: format!("{folder}/{name}"),
                der,
                expected,
            }
        })
        .collect()
}

pub fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", escape_bytes(bytes))
}

/// RFC 3339 UTC with 12 fraction digits, as the reference's dump prints.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}000Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
