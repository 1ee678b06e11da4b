//! `builder-inspect FILE [--console] [--script] [--job] [--output DIR]`:
//! shows a stored build record (a `full` file, written by builder or by the
//! reference implementation) and extracts its artifacts.
//!
//! The record is read with the streaming [`protocol::record::read_record`]:
//! the job, console and result are kept in memory, the artifacts never are.
//! Each one is either copied straight to its file under `DIR` or skipped.
//!
//! # Writing artifacts safely
//!
//! A record may come from anywhere, and the reference accepts artifact paths
//! such as `../../etc/passwd` or `/abs/path`. Nothing is ever written outside
//! `DIR`:
//!
//! - absolute paths, paths with a `..` component, empty paths, paths with NUL
//!   and paths naming no file (`.`, `a/./`) are refused;
//! - every directory below `DIR` is checked with `symlink_metadata` (never
//!   followed) and must be a real directory, or is created;
//! - files are created with `O_CREAT | O_EXCL` (`create_new`), which fails
//!   on anything already there, a symlink included, so an existing file is
//!   never overwritten and no symlink is followed.
//!
//! A refused or failed artifact is reported on stderr and skipped; the
//! others are still written, and the exit status is 1 at the end.
//! (`DIR` itself is the user's choice and is used as given.)

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::units::{count, human_size};
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use protocol::record::{self, escape_bytes, lossy, ExecResult, RecordHead};

use crate::output;

/// builder-inspect: show a stored build record (a "full" file) and extract its artifacts.
#[derive(Parser, Debug)]
#[command(name = "builder-inspect", version)]
pub struct InspectArgs {
    /// The build record.
    pub file: PathBuf,
    /// Print the console, oldest line first, with the time since the start.
    #[arg(long)]
    pub console: bool,
    /// Print the script, unchanged.
    #[arg(long)]
    pub script: bool,
    /// Print the job's name and platform.
    #[arg(long)]
    pub job: bool,
    /// Write every artifact under DIR (created if missing); existing files
    /// are never overwritten and nothing is written outside DIR.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// When the file is no build record at all (its very first byte is wrong),
/// what it is instead, for a message without DER terms: `empty, not a
/// build record`, or
/// `not a build record (it starts with "#!/bin/sh")`. `None` for a
/// record damaged further in, whose exact offset matters.
fn not_a_record(err: &record::RecordError, path: &Path) -> Option<String> {
    use record::RecordError;
    let at_start = match err {
        RecordError::UnexpectedTag { offset, .. } | RecordError::Truncated { offset, .. } => {
            *offset == 0
        }
        _ => false,
    };
    if !at_start {
        return None;
    }
    let mut start = Vec::new();
    File::open(path)
        .ok()?
        .take(32)
        .read_to_end(&mut start)
        .ok()?;
    let where_ = "builder-inspect reads the `full` files of the server's --dir (DIR/JOB/UUID/full)";
    if start.is_empty() {
        return Some(format!("empty, not a build record; {where_}"));
    }
    let first_line = start.split(|b| *b == b'\n').next().unwrap_or(&start);
    let shown = match std::str::from_utf8(first_line) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => {
            let hex: Vec<String> = start.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("the bytes {}", hex.join(" "))
        }
    };
    Some(format!(
        "not a build record (it starts with {shown}); {where_}"
    ))
}

/// One artifact as listed: its path and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactEntry {
    /// The path as recorded.
    pub path: Vec<u8>,
    /// Its size in bytes.
    pub len: u64,
}

/// Runs `builder-inspect`. Returns 1 when some artifact could not be
/// written (after writing the others).
///
/// # Errors
/// `<file>: <what is wrong>` when the file cannot be read or is not a valid
/// record; the output directory cannot be created.
pub fn run(args: &InspectArgs) -> Result<ExitCode> {
    let name = args.file.display().to_string();
    let file = File::open(&args.file).with_context(|| name.clone())?;
    let mut extractor = match &args.output {
        Some(dir) => Some(Extractor::new(dir)?),
        None => None,
    };
    let mut artifacts = Vec::new();
    // read_record buffers its input itself and skips whatever the callback
    // leaves unread.
    let read = record::read_record(file, |path, len, data| {
        artifacts.push(ArtifactEntry {
            path: path.to_vec(),
            len,
        });
        match &mut extractor {
            Some(x) => x.extract(path, len, data),
            None => Ok(()),
        }
    });
    let head = match read {
        Ok(head) => head,
        Err(e) => {
            if let Some(x) = extractor.as_ref().filter(|x| x.written > 0) {
                eprintln!(
                    "note: {} written to {} before the error",
                    count(x.written, "artifact"),
                    x.root.display()
                );
            }
            if let Some(what) = not_a_record(&e, &args.file) {
                bail!("{name}: {what}");
            }
            return Err(anyhow!(e).context(name));
        }
    };

    let everything = !(args.console || args.script || args.job);
    let mut out = BufWriter::new(io::stdout().lock());
    if everything {
        write_all_parts(&mut out, &head, &artifacts)?;
    } else {
        if args.job {
            write_job(&mut out, &head)?;
        }
        if args.script {
            out.write_all(&head.job.script)?;
            if (args.console) && !head.job.script.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
        if args.console {
            write_console(&mut out, &head)?;
        }
    }
    out.flush()?;
    drop(out);

    if let Some(x) = extractor {
        let dir = x.root.display();
        if x.skipped > 0 {
            bail!(
                "{} of {} not written to {dir}",
                x.skipped,
                count(artifacts.len(), "artifact")
            );
        }
        eprintln!(
            "wrote {} ({}) to {dir}",
            count(x.written, "artifact"),
            human_size(x.written_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes every artifact of the record read from `record` under `dir`, by
/// the rules at the top of this module, and says on stderr what it wrote
/// (`builder-client fetch --artifacts` streams a record through this).
///
/// # Errors
/// The record is invalid or cannot be read, `dir` cannot be created, or
/// some artifact was refused or could not be written (after the others
/// were written).
pub fn extract_all(record: impl Read, dir: &Path) -> Result<()> {
    let mut x = Extractor::new(dir)?;
    let mut total = 0usize;
    let read = record::read_record(record, |path, len, data| {
        total += 1;
        x.extract(path, len, data)
    });
    if let Err(e) = read {
        if x.written > 0 {
            eprintln!(
                "note: {} written to {} before the error",
                count(x.written, "artifact"),
                x.root.display()
            );
        }
        return Err(anyhow!(e).context("the record"));
    }
    let shown = x.root.display();
    if x.skipped > 0 {
        bail!(
            "{} of {} not written to {shown}",
            x.skipped,
            count(total, "artifact")
        );
    }
    eprintln!(
        "wrote {} ({}) to {shown}",
        count(x.written, "artifact"),
        human_size(x.written_bytes)
    );
    Ok(())
}

/// `exited 0`, `killed by SIGKILL`, `stopped by SIGSTOP`, `aborted: timeout`
/// (the wording of `protocol`, shared by every program).
pub fn result_text(r: &ExecResult) -> String {
    r.to_string()
}

fn write_job(out: &mut dyn Write, head: &RecordHead) -> io::Result<()> {
    writeln!(out, "job:      {}", lossy(&head.job.name))?;
    writeln!(out, "platform: {}", lossy(head.job.platform_or_default()))
}

fn write_console(out: &mut dyn Write, head: &RecordHead) -> io::Result<()> {
    // Stored newest first.
    for line in head.console.iter().rev() {
        write!(out, "{} ", output::console_delta(line.delta_ns))?;
        out.write_all(&line.data)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn write_all_parts(
    out: &mut dyn Write,
    head: &RecordHead,
    artifacts: &[ArtifactEntry],
) -> io::Result<()> {
    write_job(out, head)?;
    writeln!(out, "uuid:     {}", head.uuid().hyphenated())?;
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    writeln!(out, "started:  {}", time(head.started))?;
    writeln!(out, "finished: {}", time(head.finished))?;
    let (started, finished) = (
        protocol::message::Timestamp::from_datetime(head.started),
        protocol::message::Timestamp::from_datetime(head.finished),
    );
    // A record from elsewhere may end before it starts: say so.
    let took = if finished >= started {
        output::duration(output::build_duration(started, finished))
    } else {
        format!(
            "-{}",
            output::duration(output::build_duration(finished, started))
        )
    };
    writeln!(out, "duration: {took}")?;
    writeln!(out, "result:   {}", result_text(&head.result))?;
    writeln!(out, "script:")?;
    out.write_all(&head.job.script)?;
    if !head.job.script.is_empty() && !head.job.script.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    writeln!(out, "console ({}):", count(head.console.len(), "line"))?;
    write_console(out, head)?;
    let total: u64 = artifacts.iter().map(|a| a.len).sum();
    writeln!(
        out,
        "artifacts ({}, {}):",
        count(artifacts.len(), "file"),
        human_size(total)
    )?;
    let sizes: Vec<String> = artifacts.iter().map(|a| human_size(a.len)).collect();
    let width = sizes.iter().map(String::len).max().unwrap_or(1);
    for (a, size) in artifacts.iter().zip(&sizes) {
        writeln!(out, "  {size:>width$}  {}", lossy(&a.path))?;
    }
    Ok(())
}

/// Writes artifacts under a directory, refusing anything that would land
/// outside it.
struct Extractor {
    root: PathBuf,
    written: usize,
    written_bytes: u64,
    skipped: usize,
}

/// Why an artifact was not written.
#[derive(Debug)]
enum Skip {
    /// The path is not acceptable.
    Refused(String),
    /// Writing failed.
    Failed(String),
    /// Reading the record failed: the record is broken, not just this file.
    Read(io::Error),
}

impl Extractor {
    fn new(root: &Path) -> Result<Extractor> {
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create output directory {}", root.display()))?;
        if !fs::metadata(root)
            .with_context(|| root.display().to_string())?
            .is_dir()
        {
            bail!("{}: not a directory", root.display());
        }
        Ok(Extractor {
            root: root.to_owned(),
            written: 0,
            written_bytes: 0,
            skipped: 0,
        })
    }

    /// Writes one artifact, or reports why not. Only an error reading the
    /// record itself is returned.
    fn extract(&mut self, path: &[u8], len: u64, data: &mut dyn Read) -> io::Result<()> {
        let result = match safe_components(path) {
            Err(why) => Err(Skip::Refused(why)),
            Ok(components) => self.write_file(&components, data),
        };
        match result {
            Ok(n) => {
                tracing::debug!(path = ?escape_bytes(path), len, "written");
                self.written += 1;
                self.written_bytes += n;
                Ok(())
            }
            Err(Skip::Read(e)) => Err(e),
            Err(Skip::Refused(why)) => self.skip(path, "refusing", &why),
            Err(Skip::Failed(why)) => self.skip(path, "could not write", &why),
        }
    }

    /// Reports a skipped artifact (read_record skips its content).
    fn skip(&mut self, path: &[u8], verb: &str, why: &str) -> io::Result<()> {
        self.skipped += 1;
        eprintln!("warning: {verb} artifact \"{}\": {why}", escape_bytes(path));
        Ok(())
    }

    /// Creates the directories and the file of `components` (checked by
    /// [`safe_components`]) and copies `data` into it. On any error the
    /// partial file is removed.
    fn write_file(&self, components: &[&[u8]], data: &mut dyn Read) -> Result<u64, Skip> {
        let (file_name, dirs) = components.split_last().expect("at least one component");
        let mut dir = self.root.clone();
        for c in dirs {
            dir.push(OsStr::from_bytes(c));
            ensure_real_dir(&dir).map_err(Skip::Failed)?;
        }
        let target = dir.join(OsStr::from_bytes(file_name));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Skip::Failed(format!(
                    "{} already exists (not overwritten, not followed)",
                    target.display()
                )),
                _ => Skip::Failed(format!("cannot create {}: {e}", target.display())),
            })?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = fs::remove_file(&target);
                    return Err(Skip::Read(e));
                }
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                let _ = fs::remove_file(&target);
                return Err(Skip::Failed(format!("writing {}: {e}", target.display())));
            }
            total += n as u64;
        }
        Ok(total)
    }
}

/// Makes sure `dir` is a real directory (not a symlink to one), creating it
/// if it does not exist.
fn ensure_real_dir(dir: &Path) -> Result<(), String> {
    for _ in 0..2 {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{} is a symlink (not followed)", dir.display()))
            }
            Ok(_) => return Err(format!("{} exists and is not a directory", dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(dir) {
                Ok(()) => return Ok(()),
                // Created meanwhile by someone else: look again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            },
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Err(format!("{} keeps changing", dir.display()))
}

/// Splits an artifact path into the components to create below the output
/// directory, or says why it must not be written: empty, NUL, absolute,
/// `..`, or naming no file. `.` and empty components (`a//b`, `./a`) are
/// dropped.
pub fn safe_components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    if path.contains(&0) {
        return Err("path contains NUL".to_owned());
    }
    if path.starts_with(b"/") {
        return Err("absolute path".to_owned());
    }
    let mut components = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path has a '..' component".to_owned()),
            c => components.push(c),
        }
    }
    if components.is_empty() {
        return Err("path names no file".to_owned());
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        fn ok(p: &[u8]) -> Vec<&[u8]> {
            safe_components(p).unwrap()
        }
        assert_eq!(ok(b"a"), vec![&b"a"[..]]);
        assert_eq!(ok(b"bin/foo.hvt"), vec![&b"bin"[..], b"foo.hvt"]);
        assert_eq!(ok(b"./a//b/"), vec![&b"a"[..], b"b"]);
        assert_eq!(ok(b"..a/b..c/..."), vec![&b"..a"[..], b"b..c", b"..."]);
        assert_eq!(ok(b"r\xc3\xa9sum\xff"), vec![&b"r\xc3\xa9sum\xff"[..]]);
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"./dot/../x",
            b"a/..",
            b"a\0b",
            b".",
            b"./",
            b"//",
        ] {
            assert!(safe_components(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn real_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();

        assert!(ensure_real_dir(&root.join("new")).is_ok());
        assert!(root.join("new").is_dir());
        assert!(ensure_real_dir(&root.join("new")).is_ok());
        assert!(ensure_real_dir(&root.join("link"))
            .unwrap_err()
            .contains("symlink"));
        assert!(ensure_real_dir(&root.join("file"))
            .unwrap_err()
            .contains("not a directory"));
    }

    #[test]
    fn extractor_never_follows_a_final_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("a")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("dangling"), root.join("b")).unwrap();

        let mut x = Extractor::new(&root).unwrap();
        x.extract(b"a", 3, &mut &b"bad"[..]).unwrap();
        x.extract(b"b", 3, &mut &b"bad"[..]).unwrap();
        x.extract(b"c", 4, &mut &b"good"[..]).unwrap();
        assert_eq!((x.written, x.skipped), (1, 2));
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!tmp.path().join("dangling").exists());
        assert_eq!(fs::read(root.join("c")).unwrap(), b"good");
    }

    #[test]
    fn results() {
        assert_eq!(result_text(&ExecResult::Exited(2)), "exited 2");
        assert_eq!(result_text(&ExecResult::Signalled(-7)), "killed by SIGKILL");
        assert_eq!(result_text(&ExecResult::Stopped(-16)), "stopped by SIGSTOP");
        assert_eq!(
            result_text(&ExecResult::Msg(b"timeout".to_vec())),
            "aborted: timeout"
        );
    }
}
