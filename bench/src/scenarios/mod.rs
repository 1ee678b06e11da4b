//! The scenarios. Each starts its own farm, stops by itself (every wait is
//! bounded by the scenario's deadline) and returns its figures.

pub mod artifact;
pub mod console;
pub mod drain;
pub mod http;
pub mod idle;
pub mod jobs;
pub mod latency;
pub mod scale;
pub mod schedule_latency;

use std::path::PathBuf;
use std::time::Duration;

/// Options every scenario takes.
pub struct Common {
    /// Where the temporary directories go.
    pub tmpdir: PathBuf,
    /// Where the workers' job directories go, if not with the server's
    /// state under `tmpdir`.
    pub worker_tmpdir: Option<PathBuf>,
    /// How long a scenario may run before it gives up.
    pub deadline: Duration,
    /// More arguments for every `builder-server`.
    pub server_args: Vec<String>,
}

/// The platform the benchmark's jobs and workers use.
pub const PLATFORM: &str = "bench";
