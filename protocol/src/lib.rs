//! Everything that crosses a socket or a file in builder.
//!
//! - [`api`]: the JSON model shared by `--json` output and the HTTP API.
//! - [`message`]: the messages servers, workers and clients exchange, and
//!   [`PROTOCOL_VERSION`].
//! - [`codec`]: framing (8-byte big-endian length + bincode 2 payload) with a
//!   receiver-side size limit.
//! - [`record`]: the DER `exec` build record (`full` files and the builder-web
//!   upload body), byte-compatible with the reference implementation.
//! - [`legacy`]: the reference implementation's DER wire commands and
//!   `state` file, for serving its workers and clients and importing its
//!   state during a migration.
//! - [`signal`]: signals as they cross the wire and the reference's portable
//!   signal numbering.
//! - [`trigger`]: when a scheduled job runs (periods and cron expressions).
//! - [`chain`]: an error with its causes on one line, for logs.
//! - [`token`]: the token file rule shared by server, client and worker.
//! - [`handshake`]: the connecting side of the hello, and the default
//!   remote and port.
//! - [`info`]: the `info` answer cut into parts and put together again.

pub mod api;
pub mod chain;
pub mod codec;
pub mod handshake;
pub mod info;
pub mod legacy;
pub mod message;
pub mod record;
pub mod signal;
pub mod token;
pub mod trigger;

pub use chain::Chain;
pub use handshake::{DEFAULT_PORT, DEFAULT_REMOTE};
pub use message::PROTOCOL_VERSION;
