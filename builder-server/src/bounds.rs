//! Bounds on what a worker sends about a build. A worker is a peer like any
//! other: nothing it says is stored unbounded or taken as given.
//!
//! - Artifacts: at most `--max-artifacts` files and `--max-artifact-bytes`
//!   bytes per build, counted from the bytes that arrive (an announced
//!   length is only the worker's word). Past either, the build is aborted
//!   with a reason naming the flag; a path sent twice aborts it naming the
//!   path ([`ArtifactBudget`]).
//! - Console lines: at most [`MAX_CONSOLE_LINE`] bytes each (what an honest
//!   worker sends at most); a longer one is cut there and followed by a line
//!   saying so ([`bound_lines`]).
//! - Abort messages: at most [`MAX_ABORT_MESSAGE`] bytes; a longer one is
//!   cut and says so ([`bound_outcome`]).
//! - Times: the build's start and end are clamped to what the server saw,
//!   from the job's assignment until now ([`clamp`]), so a worker cannot
//!   date a build in 1677 or 2262 and reorder `results`.
//! - The job's timeout: the server drops a worker that holds a build past
//!   its timeout plus [`BuildLimits::timeout_grace`] (see the worker
//!   handler) and records the build aborted `timeout`.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::hash::RandomState;
use std::time::Duration;

use protocol::message::{JobOutcome, OutputLine, Timestamp, MAX_CONSOLE_LINE};

/// The longest abort message stored, in bytes.
pub const MAX_ABORT_MESSAGE: usize = 4096;

/// Per-build limits (server flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// `--max-artifact-bytes`: total artifact bytes per build.
    pub max_artifact_bytes: u64,
    /// `--max-artifacts`: artifacts per build.
    pub max_artifacts: usize,
    /// `--timeout-grace`: how long past a job's timeout the server waits for
    /// the worker's result before it drops the worker (the worker's kill
    /// grace, the artifacts' transfer, and a margin).
    pub timeout_grace: Duration,
}

/// The default of [`BuildLimits::max_artifact_bytes`]: 8 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 8 << 30;

/// The default of [`BuildLimits::max_artifacts`].
pub const DEFAULT_MAX_ARTIFACTS: usize = 10_000;

/// The default of [`BuildLimits::timeout_grace`]: 5 minutes.
pub const DEFAULT_TIMEOUT_GRACE: Duration = Duration::from_secs(300);

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            max_artifacts: DEFAULT_MAX_ARTIFACTS,
            timeout_grace: DEFAULT_TIMEOUT_GRACE,
        }
    }
}

/// Counts one build's artifacts against the limits, and refuses a path sent
/// twice (a record holding two artifacts of one path cannot be unpacked).
#[derive(Debug)]
pub struct ArtifactBudget {
    limits: BuildLimits,
    count: usize,
    bytes: u64,
    /// The paths seen, hashed: a path may be as long as a frame, so keeping
    /// them would hold up to `--max-artifacts` frames. The hasher's keys are
    /// random per process, so a worker cannot make two paths collide on
    /// purpose; by chance, with 10 000 paths, the odds are about 1 in 10^11.
    paths: HashSet<u64>,
    hasher: RandomState,
}

impl ArtifactBudget {
    /// Nothing received yet.
    pub fn new(limits: BuildLimits) -> ArtifactBudget {
        ArtifactBudget {
            limits,
            count: 0,
            bytes: 0,
            paths: HashSet::new(),
            hasher: RandomState::new(),
        }
    }

    /// One more artifact starts at `path`. `Err` is the abort message.
    pub fn start(&mut self, path: &[u8]) -> Result<(), String> {
        if self.count >= self.limits.max_artifacts {
            return Err(format!(
                "more than {} artifacts (--max-artifacts)",
                self.limits.max_artifacts
            ));
        }
        if !self.paths.insert(self.hasher.hash_one(path)) {
            let shown: String = protocol::record::lossy(path).chars().take(256).collect();
            return Err(format!("artifact {shown:?} sent twice"));
        }
        self.count += 1;
        Ok(())
    }

    /// `len` more artifact bytes arrived. `Err` is the abort message.
    pub fn bytes(&mut self, len: usize) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(len as u64);
        if self.bytes > self.limits.max_artifact_bytes {
            return Err(format!(
                "artifacts exceed {} bytes (--max-artifact-bytes)",
                self.limits.max_artifact_bytes
            ));
        }
        Ok(())
    }
}

/// `t`, moved into `earliest..=latest`.
pub fn clamp(t: Timestamp, earliest: Timestamp, latest: Timestamp) -> Timestamp {
    t.max(earliest).min(latest.max(earliest))
}

/// Cuts console lines longer than [`MAX_CONSOLE_LINE`], each followed by a
/// line saying how much was cut.
pub fn bound_lines(lines: Vec<OutputLine>) -> Vec<OutputLine> {
    if lines.iter().all(|l| l.data.len() <= MAX_CONSOLE_LINE) {
        return lines;
    }
    let mut bounded = Vec::with_capacity(lines.len() + 1);
    for mut line in lines {
        let len = line.data.len();
        if len <= MAX_CONSOLE_LINE {
            bounded.push(line);
            continue;
        }
        line.data.truncate(MAX_CONSOLE_LINE);
        line.data.shrink_to_fit();
        let delta_ns = line.delta_ns;
        bounded.push(line);
        bounded.push(OutputLine {
            delta_ns,
            data: format!(
                "[builder: the line above was cut to {MAX_CONSOLE_LINE} of its {len} bytes, the server's limit per line]"
            )
            .into_bytes(),
        });
    }
    bounded
}

/// An abort message longer than [`MAX_ABORT_MESSAGE`] is cut (at a
/// character boundary) and says so; other outcomes are kept.
pub fn bound_outcome(outcome: JobOutcome) -> JobOutcome {
    match outcome {
        JobOutcome::Aborted(msg) if msg.len() > MAX_ABORT_MESSAGE => {
            let mut end = MAX_ABORT_MESSAGE;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            JobOutcome::Aborted(format!(
                "{} [cut: {} bytes, over the server's limit of {MAX_ABORT_MESSAGE}]",
                &msg[..end],
                msg.len()
            ))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_artifacts: usize, max_artifact_bytes: u64) -> BuildLimits {
        BuildLimits {
            max_artifacts,
            max_artifact_bytes,
            ..BuildLimits::default()
        }
    }

    #[test]
    fn artifacts_are_counted_and_their_bytes_summed() {
        let mut budget = ArtifactBudget::new(limits(2, 10));
        budget.start(b"a").unwrap();
        budget.bytes(6).unwrap();
        budget.start(b"b").unwrap();
        budget.bytes(4).unwrap();
        let err = budget.bytes(1).unwrap_err();
        assert!(err.contains("--max-artifact-bytes"), "{err}");
        let err = budget.start(b"c").unwrap_err();
        assert!(
            err.contains("more than 2 artifacts (--max-artifacts)"),
            "{err}"
        );
    }

    #[test]
    fn a_path_sent_twice_is_refused_by_name() {
        let mut budget = ArtifactBudget::new(limits(10, 10));
        budget.start(b"bin/x").unwrap();
        budget.start(b"bin/y").unwrap();
        let err = budget.start(b"bin/x").unwrap_err();
        assert_eq!(err, "artifact \"bin/x\" sent twice");
    }

    #[test]
    fn times_are_clamped_to_what_the_server_saw() {
        let (lo, hi) = (Timestamp(100), Timestamp(200));
        assert_eq!(clamp(Timestamp(i64::MIN), lo, hi), lo);
        assert_eq!(clamp(Timestamp(i64::MAX), lo, hi), hi);
        assert_eq!(clamp(Timestamp(150), lo, hi), Timestamp(150));
        // A clock step backwards between the two readings.
        assert_eq!(clamp(Timestamp(150), hi, lo), hi);
    }

    #[test]
    fn long_lines_are_cut_and_say_so() {
        let line = |n: usize| OutputLine {
            delta_ns: 7,
            data: vec![b'x'; n],
        };
        let short = vec![line(10), line(MAX_CONSOLE_LINE)];
        assert_eq!(bound_lines(short.clone()), short);
        let got = bound_lines(vec![line(1), line(MAX_CONSOLE_LINE + 1), line(2)]);
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].data.len(), MAX_CONSOLE_LINE);
        let note = String::from_utf8(got[2].data.clone()).unwrap();
        assert!(
            note.contains(&format!("{}", MAX_CONSOLE_LINE + 1)),
            "{note}"
        );
        assert_eq!(got[3], line(2));
    }

    #[test]
    fn long_abort_messages_are_cut_and_say_so() {
        let ok = JobOutcome::Aborted("timeout".into());
        assert_eq!(bound_outcome(ok.clone()), ok);
        // A multi-byte character across the limit is not split.
        let long = format!(
            "{}é{}",
            "a".repeat(MAX_ABORT_MESSAGE - 1),
            "b".repeat(1 << 20)
        );
        let JobOutcome::Aborted(msg) = bound_outcome(JobOutcome::Aborted(long.clone())) else {
            panic!()
        };
        assert!(msg.len() < MAX_ABORT_MESSAGE + 100, "{}", msg.len());
        assert!(
            msg.ends_with(&format!(
                "[cut: {} bytes, over the server's limit of {MAX_ABORT_MESSAGE}]",
                long.len()
            )),
            "{msg}"
        );
        assert_eq!(bound_outcome(JobOutcome::Exited(3)), JobOutcome::Exited(3));
    }
}
