//! `builder-client`: see [`builder_client`] and `builder-client --help`.
//!
//! Errors: one `error: ...` line on stderr and exit status 1 (2 for a usage
//! error, as clap has it). With `--json` the error is a JSON object on
//! stderr instead, `{"error": "..."}`, with the same exit status.

use std::process::ExitCode;

use builder_client::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let json = std::env::args_os().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return builder_client::usage_error(e, json),
    };
    builder_client::init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return builder_client::report_error(
                &anyhow::anyhow!(e).context("cannot start the async runtime"),
                json,
            )
        }
    };
    match runtime.block_on(builder_client::run(cli)) {
        Ok(code) => code,
        Err(e) if builder_client::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => builder_client::report_error(&e, json),
    }
}
