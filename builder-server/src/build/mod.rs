//! A build's life, from the claim to its stored record, for both worker
//! protocols. Every change of a build's state happens here:
//!
//! ```text
//! queued ──claim──▶ running (attempt n) ──result──▶ stored
//!   │  ▲                  │
//!   │  └── lost ──────────┘                 (same UUID, attempt n + 1)
//!   ├── cancel / unschedule / drop ──▶ cancelled  (index entry, no record)
//!   └── merged ──▶ another build of the same job, visibly
//! ```
//!
//! - [`wait`]: one wait-for-job loop ([`wait_for_job`]) for both protocols.
//! - [`attempt`]: the guard of a running attempt ([`Attempt`]): it applies
//!   every bound to what the worker says and cleans up once, even when its
//!   handler stops early.
//! - [`finish`]: storing a result (record, index, upload) and a lost
//!   worker's requeue.
//! - [`recover`]: at start-up, builds left running by a stopped server.
//!
//! The queue side of the machine (claim, requeue, merge, cancellation) is
//! in [`crate::db::queues`] and [`crate::db::ends`]. The protocol handlers
//! ([`crate::worker`], [`crate::legacy::worker`]) only translate their wire
//! messages into [`Attempt`]'s events.

pub mod attempt;
pub mod finish;
pub mod recover;
pub mod wait;

pub use attempt::{Attempt, Concluded, End, Settled};
pub use recover::recover;
pub use wait::{wait_for_job, Waiting};
