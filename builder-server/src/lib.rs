//! builder-server: keeps the schedule and the per-platform queues, hands jobs
//! to workers, streams their console to observers, stores every finished
//! build and uploads it to builder-web.
//!
//! This file holds the module tree only. Map:
//! - [`listener`]: [`run`]: start-up, the accept loop, the hello, shutdown.
//! - [`config`]: [`Config`], every default, and the command line's
//!   checks ([`cli`]: the flags themselves).
//! - [`admission`]: connection budgets before and after the hello; a full
//!   budget evicts the oldest connection that has not said hello.
//! - [`bounds`]: limits on what a worker sends (artifacts, console lines,
//!   messages, times).
//! - [`db`]: all durable state in SQLite.
//! - [`build`]: a build's life from its claim to its record, for both
//!   worker protocols: bounds, storing, requeueing, recovery.
//! - [`worker`]: a worker's connection, translated into [`build`]'s events.
//! - [`client`]: one module per client request.
//! - [`scheduler`]: queues jobs when they are due.
//! - [`store`]: `DIR/<job>/<uuid>/full` records.
//! - [`layout`]: the server's own files, `DIR/.builder/` (lock, `state.db`).
//! - [`live`]: running builds and their observers.
//! - [`spool`]: a running build's console and artifacts on disk, written
//!   by a small pool of writer threads.
//! - [`metrics`]: `--metrics`: Prometheus `/metrics` and `/healthz`, from
//!   a snapshot the server's state provides.
//! - [`memory`]: gives memory back to the system after large frames.
//! - [`names`]: which job and platform names are valid.
//! - [`http`]: `--http`: the JSON API, live consoles, builder-web's URL
//!   shape and the dashboard.
//! - [`events`]: the farm's event stream.
//! - [`upload`]: delivers records to builder-web.
//! - [`templates`]: orb-build templates.
//! - [`state`]: what the tasks share.
//! - [`legacy`]: the reference's (OCaml builder's) workers and clients on
//!   the same port, and `--import-state`.

pub mod admission;
pub mod bounds;
pub mod build;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod layout;
pub mod legacy;
pub mod listener;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod scheduler;
pub mod spool;
pub mod state;
pub mod store;
pub mod templates;
pub mod upload;
pub mod worker;

pub use config::Config;
pub use listener::run;
