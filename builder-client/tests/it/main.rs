//! The client's and `builder-inspect`'s integration tests, in one test
//! binary (`cargo test -p builder-client --test it`): the real binaries
//! against scripted servers and the fixtures ([`common`]).
//!
//! To add a module: put the tests in `tests/it/NAME.rs`, `use
//! crate::common::...;`, and add `mod NAME;` below; shared helpers go into
//! `common.rs`, and every wait uses [`common::DEADLINE`].

mod common;

mod client;
mod error_chains;
mod errors;
mod help;
mod inspect;
mod timeouts;
mod validation;
