//! The logging set-up of builder's programs (server, worker, client,
//! builder-inspect), in one place so `-v`, `RUST_LOG`, colours and the log
//! format mean the same in all four. Only binaries call [`init`]; libraries
//! only emit `tracing` events.
//!
//! - Level: info by default, `-v` debug, `-vv` (or more) trace; a set
//!   `RUST_LOG` overrides `-v` entirely.
//! - Colours only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>).
//! - [`LogFormat::Text`]: tracing's default line format, where string values
//!   are written quoted (`job="a b"`) and so parse as logfmt;
//!   [`LogFormat::Json`]: one JSON object per line.
//!
//! [`exit`] owns the other thing the four programs must do alike: how they
//! report an error and which exit status they end with.

pub mod exit;

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`LEVEL target: message key=value ...`).
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The level filter for `-v` given `verbose` times.
pub fn default_level(verbose: u8) -> &'static str {
    match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Whether to colour output: only for a terminal, and never when
/// `no_color` (the value of `NO_COLOR`) is set and not empty.
pub fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: stderr, level from `verbose` unless
/// `RUST_LOG` is set, in `format`. Call once, from `main`.
pub fn init(verbose: u8, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level(verbose)));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn verbosity_is_info_debug_trace() {
        assert_eq!(default_level(0), "info");
        assert_eq!(default_level(1), "debug");
        assert_eq!(default_level(2), "trace");
        assert_eq!(default_level(9), "trace");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json"));
        assert_eq!(LogFormat::Json.to_string(), "json");
    }
}
