//! The server's integration tests, in one test binary (`cargo test -p
//! builder-server --test it`): one module per area, one [`common`] harness.
//! Linking one binary instead of one per file is what keeps `cargo test`
//! and CI's disk small (issue 16).
//!
//! Servers run in this process ([`common::Server::start`], through
//! `builder_server::run`) unless a test sends the server a signal, kills it
//! with SIGKILL, or checks its exit status or the real binary's own log
//! output: those use [`common::Server::binary`]. Workers and clients are
//! always the real binaries.
//!
//! To add a module: put the tests in `tests/it/NAME.rs`, start it with a
//! `//!` line saying what it covers, `use crate::common::*;` (and
//! `crate::peer` for a hostile peer), and add `mod NAME;` below. Do not
//! copy helpers: what two modules need goes into `common.rs`, and every
//! wait uses [`common::DEADLINE`]. Run one module with
//! `cargo test -p builder-server --test it NAME::`.
//!
//! A test file written for the old layout (`tests/NAME.rs` with its own
//! `mod common;`) folds in as `tests/it/NAME.rs` with `mod common;` and
//! `mod peer;` removed, `common::` read as `crate::common::`, and:
//! - `Server::start(dir, &[])` becomes `Server::start(dir)`, and
//!   `Server::start(dir, &["--flag", "v"])` becomes
//!   `Server::start_with(dir, |c| c.field = v)` (or `Server::binary(dir,
//!   &["--flag", "v"])` where the flag's parsing, a signal, SIGKILL, the
//!   exit status or the binary's log is what the test checks);
//! - `server.proc.log()`, `.kill()`, `.wait_exit()` and `.child.id()`
//!   become `server.log()`, `server.kill()`, `server.wait_exit()` and
//!   `server.pid()` (the last three only on a binary);
//! - its own `setup()`, `runtime()` and `fixtures()` give way to those of
//!   `common`, and `peer::WAIT` to `DEADLINE`.

mod common;
mod peer;

mod admission;
mod commands;
mod config;
mod e2e;
mod error_chains;
mod error_style;
mod hostile;
mod http;
mod info;
mod legacy_import;
mod legacy_peers;
mod legacy_wire;
mod lifecycle;
mod notice;
mod old_hello;
mod ops;
mod schedule;
mod storage;
mod upload;
