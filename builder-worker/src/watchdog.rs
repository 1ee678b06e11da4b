//! What happens to a job when its worker dies without cleaning up (SIGKILL,
//! OOM killer, a crash).
//!
//! - [`Watchdog`]: a tiny `/bin/sh` process started beside each job, outside
//!   the job's process group. It blocks reading a pipe whose only write end
//!   the worker holds. When the worker says `done` the watchdog exits; when
//!   the pipe ends without it (the worker is gone: the kernel closed its
//!   end), the watchdog SIGKILLs the job's whole process group and removes
//!   the job directory. `PR_SET_PDEATHSIG` on the job's leader would reach
//!   the leader only, not its children and grandchildren in the group, and
//!   it is Linux-only; a pipe's end is noticed on every Unix.
//! - Job directories are locked (`flock`) by the worker that runs them, for
//!   as long as it does. [`remove_stale_dirs`], run when a worker starts,
//!   removes the `builder-job-*` directories that belong to this user and
//!   that no live worker holds: those whose worker and watchdog both died
//!   (a reboot with a persistent `$TMPDIR`, a killed service's whole
//!   control group). Another worker's running job is never touched.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::unistd::{pipe2, Pid};
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

/// The prefix of every job directory under `$TMPDIR`.
pub const JOB_DIR_PREFIX: &str = "builder-job-";

/// The watchdog's script: `$1` is the job's process group, `$2` its
/// directory. A line `ended` means the group is gone (so its number may be
/// reused and must not be signalled any more); `done` means the worker
/// removed the directory too. The end of the pipe before `done` means the
/// worker died.
const SCRIPT: &str = r#"ended=
while read -r line; do
  case $line in
    done) exit 0 ;;
    ended) ended=1 ;;
  esac
done
[ -n "$ended" ] || kill -s KILL -- "-$1" 2>/dev/null
chmod -R u+w "$2" 2>/dev/null
rm -rf -- "$2"
"#;

/// Kills a job's process group and removes its directory if the worker
/// dies first. Dropping it without [`Watchdog::release`] has the same
/// effect as the worker dying.
pub struct Watchdog {
    child: Child,
    pipe: Option<fs::File>,
}

impl Watchdog {
    /// Starts the watchdog for the job whose group is `pgid`, in `dir`.
    pub fn start(pgid: Pid, dir: &Path) -> io::Result<Watchdog> {
        // Close-on-exec: neither end leaks into the job; the watchdog gets
        // the read end as its stdin only.
        let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("builder-job-watchdog")
            .arg(pgid.as_raw().to_string())
            .arg(dir)
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a signal to the worker's group (Ctrl-C in a
            // terminal) does not take it along before it can act.
            .process_group(0)
            .spawn()?;
        Ok(Watchdog {
            child,
            pipe: Some(fs::File::from(write)),
        })
    }

    /// The job's process group is gone (killed by the worker): from now on
    /// the watchdog only removes the directory if the worker dies.
    pub fn group_ended(&mut self) {
        self.tell(b"ended\n");
    }

    /// The job directory is removed: the watchdog exits without doing
    /// anything.
    pub async fn release(mut self) {
        self.tell(b"done\n");
        self.pipe = None;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("cannot wait for the job's watchdog: {e}"),
            Err(_) => warn!("the job's watchdog did not exit within 5 s"),
        }
    }

    fn tell(&mut self, line: &[u8]) {
        if let Some(pipe) = &mut self.pipe {
            if let Err(e) = pipe.write_all(line) {
                warn!("cannot reach the job's watchdog: {e}");
            }
        }
    }
}

/// A job directory held by this worker: locked until dropped, so that
/// [`remove_stale_dirs`] in another worker leaves it alone.
pub struct DirLock {
    _lock: Flock<fs::File>,
}

impl DirLock {
    /// Locks `dir`, which this worker has just created.
    pub fn take(dir: &Path) -> io::Result<DirLock> {
        let file = fs::File::open(dir)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        Ok(DirLock { _lock: lock })
    }
}

/// Removes this user's `builder-job-*` directories under `tmpdir` that no
/// live worker holds. Returns how many were removed.
pub fn remove_stale_dirs(tmpdir: &Path) -> usize {
    let entries = match fs::read_dir(tmpdir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(dir = ?tmpdir.display(), "cannot look for stale job directories: {e}");
            return 0;
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(JOB_DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        // Not following symlinks: only real directories of this user.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && m.uid() == me => {}
            _ => continue,
        }
        let Ok(file) = fs::File::open(&path) else {
            continue;
        };
        // Held by a live worker: its job is running.
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            debug!(dir = ?path.display(), "job directory in use");
            continue;
        };
        match remove_dir_all(&path) {
            Ok(()) => {
                info!(dir = ?path.display(), "removed a stale job directory");
                removed += 1;
            }
            Err(e) => warn!(dir = ?path.display(), "cannot remove a stale job directory: {e}"),
        }
        drop(lock);
    }
    removed
}

/// Removes a job directory; directories a job made read-only (as Go's
/// module cache does) are made writable first.
pub fn remove_dir_all(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(first) => {
            make_dirs_writable(dir);
            fs::remove_dir_all(dir).map_err(|_| first)
        }
    }
}

fn make_dirs_writable(dir: &Path) {
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        // Not following symlinks: only real directories are touched.
        match fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(&d) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_dirs_go_and_locked_or_foreign_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let stale = tmp.path().join("builder-job-stale");
        fs::create_dir_all(stale.join("ro/inner")).unwrap();
        fs::write(stale.join("ro/inner/file"), b"x").unwrap();
        fs::set_permissions(stale.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        let held = tmp.path().join("builder-job-held");
        fs::create_dir(&held).unwrap();
        let _lock = DirLock::take(&held).unwrap();
        let other = tmp.path().join("not-a-job");
        fs::create_dir(&other).unwrap();

        assert_eq!(remove_stale_dirs(tmp.path()), 1);
        assert!(!stale.exists());
        assert!(held.is_dir());
        assert!(other.is_dir());
    }
}
