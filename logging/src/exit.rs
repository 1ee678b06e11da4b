//! How builder's four programs end on an error, in one place so that
//! builder-server, builder-worker, builder-client and builder-inspect look
//! alike (`tail -1` and log scrapers see the error in every one):
//!
//! - **Usage error** (the command line is wrong), exit status 2:
//!
//!   ```text
//!   Usage: builder-client schedule [OPTIONS] <NAME> <PLATFORM> <SCRIPT_FILE>
//!   For more information, try 'builder-client schedule --help'.
//!   tip: a similar argument exists: '--timeout'
//!   error: unexpected argument '--timeot' found
//!   ```
//!
//!   The usage line is the command's own (clap's error would list the
//!   options that were given, `--remote` from `BUILDER_REMOTE` included, as
//!   if they were required); clap's tips are kept, one line each, just
//!   before the error. `--help` and `--version` print on stdout and exit 0.
//! - **Any other error**, exit status 1: exactly one line, `error: ...`,
//!   the whole cause chain joined by `: ` (anyhow's `{:#}`).
//!
//! With `--json` (builder-client) either error is one line on stderr,
//! `{"error": "..."}`, with the same exit status.

use std::fmt;
use std::process::ExitCode;

use clap::error::ErrorKind;

/// Exit status of a usage error (clap's and the BSD convention).
pub const USAGE_STATUS: u8 = 2;

/// Parses the process's command line into `P`; on a usage error, or on
/// `--help`/`--version`, prints as described in the module docs and returns
/// the exit status to end with.
///
/// # Errors
/// The exit status when the program should end now: 0 after help or
/// version, [`USAGE_STATUS`] after a usage error.
pub fn parse_args<P: clap::Parser>(json: bool) -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| usage_error(e, P::command(), json))
}

/// Reports a command-line error of `command`, the program's root command
/// as parsed from the process's arguments (help and version on stdout with
/// status 0; anything else as a usage error, status 2).
pub fn usage_error(err: clap::Error, command: clap::Command, json: bool) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let report = UsageReport::new(&err, command, &args);
    if json {
        eprintln!("{}", json_error(&report.message));
    } else {
        eprint!("{report}");
    }
    ExitCode::from(USAGE_STATUS)
}

/// Reports an error that is not a usage error: one line `error: ...` (or
/// `{"error": "..."}` with `json`). Returns exit status 1.
///
/// `err` is formatted with `{:#}`, so an `anyhow::Error` shows its whole
/// cause chain.
pub fn failure(err: &dyn fmt::Display, json: bool) -> ExitCode {
    let message = one_line(&format!("{err:#}"));
    if json {
        eprintln!("{}", json_error(&message));
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::FAILURE
}

/// `{"error": "MESSAGE"}`.
fn json_error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Joins the lines of `text` with spaces, so an error is one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A usage error, laid out: what goes before the `error:` line, and the
/// message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// The lines before the error: usage (or, when nothing was given, the
    /// whole help), where to read more, clap's tips.
    pub before: Vec<String>,
    /// The error, one line, without `error: `.
    pub message: String,
}

impl UsageReport {
    /// Lays out `err`, a usage error of `command` (the program's root
    /// command) on the command line `args` (program name first), which
    /// says which subcommand's usage to show.
    pub fn new(err: &clap::Error, mut command: clap::Command, args: &[String]) -> UsageReport {
        let rendered = err.render().to_string();
        command.build();
        let path = command_path(args, &command);
        let mut sub = &mut command;
        for name in &path {
            sub = sub
                .find_subcommand_mut(name)
                .expect("the path was found among the subcommands");
        }
        let bin = sub
            .get_bin_name()
            .unwrap_or_else(|| sub.get_name())
            .to_owned();
        if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            // Nothing given at all: the help is the most useful answer.
            let help = sub.render_help().to_string();
            let what = if sub.has_subcommands() {
                "no command given: choose one of the commands above"
            } else {
                "no arguments given: see the usage above"
            };
            return UsageReport {
                before: help.trim_end().lines().map(str::to_owned).collect(),
                message: what.to_owned(),
            };
        }
        let mut before: Vec<String> = sub
            .render_usage()
            .to_string()
            .trim_end()
            .lines()
            .map(str::to_owned)
            .collect();
        before.push(format!("For more information, try '{bin} --help'."));
        let (message, tips) = message_and_tips(&rendered);
        before.extend(tips);
        UsageReport { before, message }
    }
}

impl fmt::Display for UsageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.before {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "error: {}", self.message)
    }
}

/// The subcommand names on the command line `args` (program name first),
/// from the root down: every word that names a subcommand of the command
/// reached so far, skipping options and their values.
fn command_path(args: &[String], root: &clap::Command) -> Vec<String> {
    let mut path = Vec::new();
    let mut current = root;
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        if let Some(option) = word.strip_prefix('-') {
            if option.contains('=') {
                continue;
            }
            let arg = match option.strip_prefix('-') {
                Some(long) => current.get_arguments().find(|a| a.get_long() == Some(long)),
                // -r VALUE, not -rVALUE nor a cluster of flags.
                None if option.chars().count() == 1 => current
                    .get_arguments()
                    .find(|a| a.get_short().is_some_and(|c| option.starts_with(c))),
                None => None,
            };
            if arg.is_some_and(|a| a.get_action().takes_values()) {
                words.next();
            }
            continue;
        }
        if let Some(sub) = current.find_subcommand(word) {
            path.push(sub.get_name().to_owned());
            current = sub;
        }
    }
    path
}

/// Splits clap's rendered error into its message (the first paragraph,
/// without `error: `, on one line) and its tips (`tip: ...`, one line each).
fn message_and_tips(rendered: &str) -> (String, Vec<String>) {
    let text = rendered.trim();
    let first = text.split("\n\n").next().unwrap_or(text);
    let message = one_line(first.strip_prefix("error:").unwrap_or(first));
    let tips = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
        .map(str::to_owned)
        .collect();
    (message, tips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn program() -> Command {
        Command::new("prog")
            .arg(
                Arg::new("remote")
                    .long("remote")
                    .global(true)
                    .default_value("h:1"),
            )
            .subcommand_required(true)
            .arg_required_else_help(true)
            .subcommand(
                Command::new("schedule")
                    .arg(Arg::new("name").required(true))
                    .arg(Arg::new("period").long("period").conflicts_with("cron"))
                    .arg(Arg::new("cron").long("cron"))
                    .arg(Arg::new("timeout").long("timeout")),
            )
            .subcommand(
                Command::new("info").arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
            )
    }

    fn report(args: &[&str]) -> UsageReport {
        let err = program().try_get_matches_from(args).unwrap_err();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        UsageReport::new(&err, program(), &args)
    }

    #[test]
    fn usage_is_the_commands_own_and_the_error_comes_last() {
        let r = report(&[
            "prog", "--remote", "x:1", "schedule", "n", "--period", "a", "--cron", "b",
        ]);
        assert_eq!(
            r.before,
            [
                "Usage: prog schedule [OPTIONS] <name>",
                "For more information, try 'prog schedule --help'.",
            ]
        );
        assert!(r.message.starts_with("the argument '--period"), "{r:?}");
        let text = r.to_string();
        assert_eq!(
            text.lines().last(),
            Some(format!("error: {}", r.message).as_str())
        );
        assert!(!text.contains("--remote"), "{text}");
    }

    #[test]
    fn the_subcommand_is_found_past_options_and_their_values() {
        // `--remote schedule` is a value, not the subcommand; the error
        // (an invalid value) comes with no usage line from clap.
        let r = report(&[
            "prog", "--remote", "info", "-v", "schedule", "n", "--period",
        ]);
        assert_eq!(
            r.before[0], "Usage: prog schedule [OPTIONS] <name>",
            "{r:?}"
        );
        let r = report(&["prog", "--remote=x", "info", "--bad"]);
        assert_eq!(r.before[0], "Usage: prog info [OPTIONS]", "{r:?}");
    }

    #[test]
    fn tips_are_one_line_before_the_error() {
        let r = report(&["prog", "schedule", "n", "--timeot", "3"]);
        let tip = r.before.last().unwrap();
        assert!(
            tip.starts_with("tip: ") && tip.contains("--timeout"),
            "{r:?}"
        );
        assert!(r.message.contains("'--timeot'"), "{r:?}");
    }

    #[test]
    fn a_message_over_several_lines_becomes_one() {
        let r = report(&["prog", "schedule"]);
        assert_eq!(
            r.message,
            "the following required arguments were not provided: <name>"
        );
    }

    #[test]
    fn nothing_given_shows_the_help() {
        let r = report(&["prog"]);
        assert!(r.before.iter().any(|l| l.contains("schedule")), "{r:?}");
        assert_eq!(
            r.message,
            "no command given: choose one of the commands above"
        );
    }

    #[test]
    fn failures_are_one_line() {
        assert_eq!(one_line("a\n  b\n\nc"), "a b c");
        assert_eq!(json_error("say \"x\""), r#"{"error":"say \"x\""}"#);
    }
}
