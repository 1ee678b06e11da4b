//! The threads that write every running build's spools: [`WRITERS`] of
//! them, started with the first piece of work and kept for the process's
//! life, taking work in the order it comes. A build is handed to the pool
//! only when it has something to write, and to one thread at a time (its
//! writer sees to that), so its writes stay in order.

use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, OnceLock};

use super::WRITERS;

/// A piece of work: drain one build's queue.
pub type Work = Box<dyn FnOnce() + Send>;

struct Pool {
    work: Mutex<VecDeque<Work>>,
    ready: Condvar,
}

static POOL: OnceLock<Result<&'static Pool, String>> = OnceLock::new();

/// Runs `work` on a pool thread.
///
/// # Errors
///
/// Not a single pool thread could be started (the first time).
pub fn run(work: Work) -> io::Result<()> {
    let pool = POOL
        .get_or_init(start)
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))?;
    pool.work
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(work);
    pool.ready.notify_one();
    Ok(())
}

/// Starts the threads; fails only when none starts.
fn start() -> Result<&'static Pool, String> {
    let pool: &'static Pool = Box::leak(Box::new(Pool {
        work: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    }));
    let mut started = 0;
    let mut failure = None;
    for _ in 0..WRITERS {
        match std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || serve(pool))
        {
            Ok(_) => started += 1,
            Err(e) => failure = Some(e),
        }
    }
    match (started, failure) {
        (0, Some(e)) => Err(format!("cannot start a spool writer thread: {e}")),
        (_, Some(e)) => {
            tracing::warn!(started, wanted = WRITERS, error = ?protocol::Chain(&e), "not every spool writer thread started");
            Ok(pool)
        }
        _ => Ok(pool),
    }
}

fn serve(pool: &Pool) {
    loop {
        let work = {
            let mut queue = pool.work.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match queue.pop_front() {
                    Some(work) => break work,
                    None => queue = pool.ready.wait(queue).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        // A panic ends that build's writing (its writer sees to its
        // handle), not the thread.
        if panic::catch_unwind(AssertUnwindSafe(work)).is_err() {
            tracing::error!("a spool writer panicked");
        }
    }
}
