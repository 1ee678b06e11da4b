//! Where the server keeps its own files in the state directory (`--dir`).
//!
//! Build records live at `DIR/<job>/<uuid>/full`, so every name directly in
//! `DIR` may be a job's. The server's own files are kept out of that name
//! space, in `DIR/.builder/` (job names cannot start with `.`, see
//! [`crate::names::check_job_name`]):
//!
//! - `DIR/.builder/lock`: held (`flock`, exclusive) while a server runs, so
//!   two servers never share a directory;
//! - `DIR/.builder/state.db` (and its `-wal`/`-shm`): the SQLite state.
//!
//! Earlier versions kept `DIR/lock` and `DIR/state.db`, where a job named
//! `lock` or `state.db` collided with them. [`open`] moves such a directory
//! to this layout once, while holding both the new and the old lock.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// The server's own folder in the state directory.
pub const SERVER_DIR: &str = ".builder";

/// The SQLite files, main file first.
const DB_FILES: [&str; 3] = ["state.db", "state.db-wal", "state.db-shm"];

/// `DIR/.builder/state.db`.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SERVER_DIR).join(DB_FILES[0])
}

/// `DIR/.builder/lock`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SERVER_DIR).join("lock")
}

/// The state directory's lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

/// Creates the state directory's layout if needed, takes its lock and moves
/// an old-layout state directory over. Fails when another server holds the
/// directory.
pub fn open(state_dir: &Path) -> anyhow::Result<StateLock> {
    let server_dir = state_dir.join(SERVER_DIR);
    fs::create_dir_all(&server_dir)
        .with_context(|| format!("cannot create state directory {}", server_dir.display()))?;
    let lock = lock(&lock_path(state_dir), state_dir)?;
    migrate(state_dir).with_context(|| {
        format!(
            "cannot move the state in {} to {}",
            state_dir.display(),
            server_dir.display()
        )
    })?;
    Ok(StateLock { _lock: lock })
}

fn lock(path: &Path, state_dir: &Path) -> anyhow::Result<Flock<File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "state directory {} is in use by another builder-server ({e})",
            state_dir.display()
        )
    })
}

/// Whether `path` is a regular file (not a job's directory, not missing).
fn is_file(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.file_type().is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Moves `DIR/state.db` (and `-wal`, `-shm`) to `DIR/.builder/` and removes
/// `DIR/lock`, once. Runs with the new lock held; takes the old one too, so
/// an older server still running on the directory is never pulled from
/// under. The new `state.db` is the mark that it is done: it is moved last,
/// so an interrupted migration simply runs again, and nothing is moved when
/// it exists.
fn migrate(state_dir: &Path) -> anyhow::Result<()> {
    let old_db = state_dir.join(DB_FILES[0]);
    let old_lock = state_dir.join("lock");
    let new_dir = state_dir.join(SERVER_DIR);
    let moving = is_file(&old_db)?;
    if moving && new_dir.join(DB_FILES[0]).exists() {
        anyhow::bail!(
            "both {} and {} exist; move one away",
            old_db.display(),
            db_path(state_dir).display()
        );
    }
    let stale_lock = is_file(&old_lock)?;
    if !moving && !stale_lock {
        return Ok(());
    }
    // An older server holds `DIR/lock` while it runs.
    let _old = if stale_lock {
        Some(lock(&old_lock, state_dir)?)
    } else {
        None
    };
    if moving {
        // The main file last: see above.
        for name in DB_FILES.iter().rev() {
            let from = state_dir.join(name);
            if is_file(&from)? {
                let to = new_dir.join(name);
                fs::rename(&from, &to).with_context(|| {
                    format!("cannot move {} to {}", from.display(), to.display())
                })?;
            }
        }
        tracing::info!(
            from = %old_db.display(),
            to = %db_path(state_dir).display(),
            "moved the state database out of the job names' way"
        );
    }
    if stale_lock {
        fs::remove_file(&old_lock)
            .with_context(|| format!("cannot remove {}", old_lock.display()))?;
    }
    for dir in [&new_dir, &state_dir.to_path_buf()] {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_directory_named_like_an_old_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("state.db/1234")).unwrap();
        fs::create_dir_all(dir.path().join("lock/5678")).unwrap();
        let _lock = open(dir.path()).unwrap();
        assert!(dir.path().join("state.db/1234").is_dir());
        assert!(dir.path().join("lock/5678").is_dir());
        assert!(lock_path(dir.path()).is_file());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = open(dir.path()).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("in use by another builder-server"),
            "{e:#}"
        );
    }

    #[test]
    fn old_files_beside_new_ones_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(SERVER_DIR)).unwrap();
        fs::write(db_path(dir.path()), b"new").unwrap();
        fs::write(dir.path().join("state.db"), b"old").unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("both"), "{e:#}");
        assert_eq!(fs::read(db_path(dir.path())).unwrap(), b"new");
        assert_eq!(fs::read(dir.path().join("state.db")).unwrap(), b"old");
    }
}
