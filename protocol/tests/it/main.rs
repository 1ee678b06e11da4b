//! The protocol crate's integration tests, in one test binary (`cargo test
//! -p builder-protocol --test it`): the golden vectors of `fixtures/` and
//! the checked-in frames of `tests/frames/`.
//!
//! To add a module: put the tests in `tests/it/NAME.rs`, `use
//! crate::common::...;`, and add `mod NAME;` below; shared helpers go into
//! `common.rs`.

mod common;

mod legacy_fixtures;
mod record_fixtures;
mod wire;
