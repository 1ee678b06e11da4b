//! What happens to a job when its worker dies without cleaning up (SIGKILL,
//! OOM killer, a crash).
//!
//! - One watchdog per worker process (and job directory parent): a tiny
//!   `/bin/sh` process started with the worker's first job, outside every
//!   process group the worker signals. It reads, over a pipe whose only
//!   write end the worker holds, a line per event: a job started (its
//!   directory and process group), its group ended (the group number may be
//!   reused from now on and must not be signalled any more), its directory
//!   is removed (forget the job). When the pipe ends (the worker is gone:
//!   the kernel closed its end) the watchdog SIGKILLs every group it was
//!   told about and not told has ended, removes every directory it was not
//!   told is removed, and exits. `PR_SET_PDEATHSIG` on a job's leader would
//!   reach the leader only, not its children and grandchildren in the group,
//!   and it is Linux-only; a pipe's end is noticed on every Unix. One
//!   watchdog per worker instead of one per job saves a `fork` and `exec`
//!   of `sh` per job ([`Watched`] costs a few bytes on a pipe).
//! - A watchdog that died or stopped reading (killed by someone) is noticed
//!   at the next event (the write fails or would block): another is
//!   started and told about every job still watched.
//! - Job directories are locked (`flock`) by the worker that runs them, for
//!   as long as it does. [`remove_stale_dirs`], run when a worker starts,
//!   removes the `builder-job-*` directories that belong to this user and
//!   that no live worker holds: those whose worker and watchdog both died
//!   (a reboot with a persistent `$TMPDIR`, a killed service's whole
//!   control group). Another worker's running job is never touched.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg, OFlag};
use nix::unistd::{pipe2, Pid};
use tracing::{debug, info, warn};

/// The prefix of every job directory under `$TMPDIR`.
pub const JOB_DIR_PREFIX: &str = "builder-job-";

/// The watchdog's script; `$1` is the directory holding the job
/// directories. Lines it reads: `start NAME PGID` (a job in `$1/NAME` runs
/// as process group PGID), `ended NAME` (its group is gone), `done NAME`
/// (its directory is removed: forget it), `abandon NAME` (the worker let go
/// of a job without cleaning up: kill its group unless it ended, remove its
/// directory). The end of the pipe means the worker is gone: every job
/// still known is treated as abandoned. Names are checked by the worker
/// (letters, digits, `.`, `_`, `-`), so they need no quoting here.
const SCRIPT: &str = r#"set -f
dir=$1
groups=
dirs=
forget_group() {
  kept=
  for g in $groups; do
    case $g in "$1":*) ;; *) kept="$kept $g" ;; esac
  done
  groups=$kept
}
forget_dir() {
  kept=
  for d in $dirs; do
    [ "$d" = "$1" ] || kept="$kept $d"
  done
  dirs=$kept
}
remove_dir() {
  chmod -R u+w -- "$dir/$1" 2>/dev/null
  rm -rf -- "$dir/$1"
}
while read -r what name pgid; do
  case $what in
    start) groups="$groups $name:$pgid"; dirs="$dirs $name" ;;
    ended) forget_group "$name" ;;
    done) forget_group "$name"; forget_dir "$name" ;;
    abandon)
      for g in $groups; do
        case $g in "$name":*) kill -s KILL -- "-${g#*:}" 2>/dev/null ;; esac
      done
      forget_group "$name"
      remove_dir "$name"
      forget_dir "$name" ;;
  esac
done
for g in $groups; do kill -s KILL -- "-${g#*:}" 2>/dev/null; done
for d in $dirs; do remove_dir "$d"; done
"#;

/// The watchdogs of this process: one per directory holding job
/// directories (a worker has one; a test may run several workers in one
/// process).
static WATCHDOGS: Mutex<Vec<Watchdog>> = Mutex::new(Vec::new());

/// A job under this process's watchdog: if the worker dies, the job's
/// process group is killed (unless [`Watched::group_ended`] said it is gone)
/// and its directory removed. Dropping it without [`Watched::release`] has
/// the same effect as the worker dying, for this job only.
pub struct Watched {
    parent: PathBuf,
    name: String,
    released: bool,
}

impl Watched {
    /// Starts watching the job whose group is `pgid`, in `dir` (starting the
    /// watchdog if this is the process's first job in `dir`'s parent).
    pub fn start(pgid: Pid, dir: &Path) -> io::Result<Watched> {
        let (parent, name) = split(dir)?;
        with_watchdog(&parent, |w| w.event(&name, Event::Start(pgid)))?;
        Ok(Watched {
            parent,
            name,
            released: false,
        })
    }

    /// The job's process group is gone (killed by the worker): from now on
    /// only its directory is removed if the worker dies.
    pub fn group_ended(&mut self) {
        self.tell(Event::Ended);
    }

    /// The job directory is removed: the watchdog forgets the job.
    pub fn release(mut self) {
        self.released = true;
        self.tell(Event::Done);
    }

    fn tell(&self, event: Event) {
        if let Err(e) = with_watchdog(&self.parent, |w| w.event(&self.name, event)) {
            warn!(dir = ?self.parent.join(&self.name).display(), "cannot reach the job watchdog: {e}");
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.released {
            self.tell(Event::Abandon);
        }
    }
}

/// A job directory's parent and its name, which must be plain (it goes to
/// the watchdog's script unquoted).
fn split(dir: &Path) -> io::Result<(PathBuf, String)> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let plain = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("job directory name {name:?} is not plain"),
        ));
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_owned()))
}

/// Runs `f` on the watchdog of job directories in `parent`.
fn with_watchdog<T>(parent: &Path, f: impl FnOnce(&mut Watchdog) -> T) -> T {
    let mut all = WATCHDOGS.lock().unwrap_or_else(|e| e.into_inner());
    let at = match all.iter().position(|w| w.parent == parent) {
        Some(at) => at,
        None => {
            all.push(Watchdog::new(parent.to_owned()));
            all.len() - 1
        }
    };
    f(&mut all[at])
}

/// What the worker tells the watchdog about one job.
#[derive(Clone, Copy, Debug)]
enum Event {
    Start(Pid),
    Ended,
    Done,
    Abandon,
}

/// The watchdog process of the job directories in one directory, and what
/// it has been told (to tell a replacement).
struct Watchdog {
    parent: PathBuf,
    process: Option<(Child, fs::File)>,
    /// Job directory name → (its process group, whether it still runs).
    jobs: BTreeMap<String, (Pid, bool)>,
}

impl Watchdog {
    /// Started with the first event.
    fn new(parent: PathBuf) -> Watchdog {
        Watchdog {
            parent,
            process: None,
            jobs: BTreeMap::new(),
        }
    }

    fn event(&mut self, name: &str, event: Event) -> io::Result<()> {
        let line = match event {
            Event::Start(pgid) => {
                self.jobs.insert(name.to_owned(), (pgid, true));
                format!("start {name} {pgid}\n")
            }
            Event::Ended => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.1 = false;
                }
                format!("ended {name}\n")
            }
            Event::Done => {
                self.jobs.remove(name);
                format!("done {name}\n")
            }
            // Still known while it is told: a replacement must learn of the
            // job before it can act on it.
            Event::Abandon => format!("abandon {name}\n"),
        };
        let told = self.write(&line, !matches!(event, Event::Abandon));
        if matches!(event, Event::Abandon) {
            self.jobs.remove(name);
        }
        told
    }

    /// Writes `line`. If the watchdog is gone (or stuck: the pipe is full),
    /// starts another and tells it every job, then `line` unless `in_jobs`
    /// (its effect is in `jobs` already).
    fn write(&mut self, line: &str, in_jobs: bool) -> io::Result<()> {
        if let Some((_, pipe)) = &mut self.process {
            match pipe.write_all(line.as_bytes()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(dir = ?self.parent.display(), "the job watchdog is gone ({e}), starting another");
                    self.stop();
                }
            }
        }
        let mut replay = String::new();
        for (name, (pgid, running)) in &self.jobs {
            replay.push_str(&format!("start {name} {pgid}\n"));
            if !running {
                replay.push_str(&format!("ended {name}\n"));
            }
        }
        if !in_jobs {
            replay.push_str(line);
        }
        let (child, mut pipe) = spawn(&self.parent)?;
        debug!(dir = ?self.parent.display(), pid = child.id(), "job watchdog started");
        let told = pipe.write_all(replay.as_bytes());
        self.process = Some((child, pipe));
        told
    }

    /// Kills the watchdog process before closing its pipe (so that it does
    /// not act on the pipe's end), and reaps it.
    fn stop(&mut self) {
        if let Some((mut child, pipe)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(pipe);
        }
    }
}

impl Drop for Watchdog {
    /// As if the worker died: the watchdog acts on every job still known,
    /// and is reaped.
    fn drop(&mut self) {
        if let Some((mut child, pipe)) = self.process.take() {
            drop(pipe);
            let _ = child.wait();
        }
    }
}

/// Starts a watchdog for job directories in `parent`; returns it and the
/// write end of its pipe (non-blocking: a watchdog that stops reading is
/// replaced rather than waited for).
fn spawn(parent: &Path) -> io::Result<(Child, fs::File)> {
    // Close-on-exec: neither end leaks into jobs; the watchdog gets the read
    // end as its stdin only.
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("builder-job-watchdog")
        .arg(parent)
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a signal to the worker's group (Ctrl-C in a
        // terminal) does not take it along before it can act.
        .process_group(0)
        .spawn()?;
    Ok((child, fs::File::from(write)))
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

    /// Checks that the locked directory is still the one at `dir` (another
    /// worker's [`remove_stale_dirs`] may have removed it before the lock
    /// was taken).
    pub fn still_at(&self, dir: &Path) -> io::Result<()> {
        let locked = self._lock.metadata()?;
        let there = fs::symlink_metadata(dir)?;
        if locked.dev() == there.dev() && locked.ino() == there.ino() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} was replaced", dir.display()),
            ))
        }
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
    use std::time::Duration;

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

    /// A process in its own new group (`group` = None) or in `group`.
    fn sleeper(group: Option<Pid>) -> std::process::Child {
        Command::new("sleep")
            .arg("1000")
            .process_group(group.map_or(0, Pid::as_raw))
            .spawn()
            .unwrap()
    }

    fn pid(child: &std::process::Child) -> Pid {
        Pid::from_raw(child.id() as i32)
    }

    fn killed(child: &mut std::process::Child) -> bool {
        use std::os::unix::process::ExitStatusExt;
        child.wait().unwrap().signal() == Some(nix::libc::SIGKILL)
    }

    fn job_dir(parent: &Path, name: &str) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir_all(dir.join("ro")).unwrap();
        fs::set_permissions(dir.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        dir
    }

    #[test]
    fn a_dead_worker_takes_the_running_groups_but_not_ended_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let mut watchdog = Watchdog::new(tmp.path().to_owned());

        // The first job's group ended, and its number went to someone
        // else (played by a live process in that group).
        let first_dir = job_dir(tmp.path(), "builder-job-first");
        let mut reused = sleeper(None);
        watchdog
            .event("builder-job-first", Event::Start(pid(&reused)))
            .unwrap();
        watchdog.event("builder-job-first", Event::Ended).unwrap();
        // A job that is over and gone: forgotten.
        let done_dir = job_dir(tmp.path(), "builder-job-done");
        let mut done = sleeper(None);
        watchdog
            .event("builder-job-done", Event::Start(pid(&done)))
            .unwrap();
        watchdog.event("builder-job-done", Event::Done).unwrap();
        // The second job runs: a leader and another member of its group.
        let second_dir = job_dir(tmp.path(), "builder-job-second");
        let mut leader = sleeper(None);
        let mut member = sleeper(Some(pid(&leader)));
        watchdog
            .event("builder-job-second", Event::Start(pid(&leader)))
            .unwrap();

        // The worker dies: its end of the pipe closes (dropping waits for
        // the watchdog to finish).
        drop(watchdog);
        assert!(killed(&mut leader));
        assert!(killed(&mut member));
        assert!(!second_dir.exists());
        assert!(!first_dir.exists(), "the ended job's directory stays");
        assert!(
            reused.try_wait().unwrap().is_none(),
            "an ended group was killed"
        );
        assert!(
            done.try_wait().unwrap().is_none(),
            "a forgotten group was killed"
        );
        assert!(done_dir.is_dir(), "a forgotten directory was removed");
        for mut child in [reused, done] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn an_abandoned_job_goes_at_once_and_the_others_stay_watched() {
        let tmp = tempfile::tempdir().unwrap();
        let mut watchdog = Watchdog::new(tmp.path().to_owned());
        let kept_dir = job_dir(tmp.path(), "builder-job-kept");
        let mut kept = sleeper(None);
        watchdog
            .event("builder-job-kept", Event::Start(pid(&kept)))
            .unwrap();
        let gone_dir = job_dir(tmp.path(), "builder-job-gone");
        let mut gone = sleeper(None);
        watchdog
            .event("builder-job-gone", Event::Start(pid(&gone)))
            .unwrap();

        watchdog.event("builder-job-gone", Event::Abandon).unwrap();
        assert!(killed(&mut gone));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while gone_dir.exists() {
            assert!(std::time::Instant::now() < deadline, "{gone_dir:?} stays");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(kept.try_wait().unwrap().is_none());
        assert!(kept_dir.is_dir());
        drop(watchdog);
        assert!(killed(&mut kept));
        assert!(!kept_dir.exists());
    }

    #[test]
    fn a_killed_watchdog_is_replaced_and_told_every_job() {
        let tmp = tempfile::tempdir().unwrap();
        let mut watchdog = Watchdog::new(tmp.path().to_owned());
        let ended_dir = job_dir(tmp.path(), "builder-job-ended");
        let mut ended = sleeper(None);
        watchdog
            .event("builder-job-ended", Event::Start(pid(&ended)))
            .unwrap();
        watchdog.event("builder-job-ended", Event::Ended).unwrap();
        let running_dir = job_dir(tmp.path(), "builder-job-running");
        let mut running = sleeper(None);
        watchdog
            .event("builder-job-running", Event::Start(pid(&running)))
            .unwrap();

        let (first, _) = watchdog.process.as_mut().unwrap();
        let first_pid = first.id();
        first.kill().unwrap();
        first.wait().unwrap();
        // The next event finds it gone (the pipe is broken) and replaces it.
        let next_dir = job_dir(tmp.path(), "builder-job-next");
        let mut next = sleeper(None);
        watchdog
            .event("builder-job-next", Event::Start(pid(&next)))
            .unwrap();
        assert_ne!(watchdog.process.as_ref().unwrap().0.id(), first_pid);

        drop(watchdog);
        assert!(killed(&mut running));
        assert!(killed(&mut next));
        assert!(
            ended.try_wait().unwrap().is_none(),
            "an ended group was killed"
        );
        for dir in [ended_dir, running_dir, next_dir] {
            assert!(!dir.exists(), "{dir:?} stays");
        }
        ended.kill().unwrap();
        ended.wait().unwrap();
    }

    #[test]
    fn only_plain_job_directory_names_are_watched() {
        assert!(split(Path::new("/tmp/builder-job-Ab1_x.y")).is_ok());
        for bad in [
            "/tmp/a b",
            "/tmp/-x",
            "/tmp/a\nb",
            "/tmp/a:b",
            "/tmp/*",
            "/",
        ] {
            assert!(split(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            split(Path::new("builder-job-x")).unwrap().0,
            PathBuf::from(".")
        );
    }
}
