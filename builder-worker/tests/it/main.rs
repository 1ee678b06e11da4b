//! The worker's integration tests, in one test binary (`cargo test -p
//! builder-worker --test it`): the real worker binary against a scripted
//! server ([`common`]).
//!
//! To add a module: put the tests in `tests/it/NAME.rs`, `use
//! crate::common::*;`, and add `mod NAME;` below; shared helpers go into
//! `common.rs`, and every wait uses [`common::DEADLINE`].

mod common;

mod retry;
mod worker;
