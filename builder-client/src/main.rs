//! `builder-client`: see [`builder_client`] and `builder-client --help`.
//!
//! Errors are reported as all four programs do ([`builder_logging::exit`]):
//! the last line on stderr is `error: ...`, exit status 1 (2 for a usage
//! error, after the usage). With `--json` the error is a JSON object on
//! stderr instead, `{"error": "..."}`, with the same exit status.

use std::process::ExitCode;

use builder_client::cli::Cli;
use builder_logging::exit;

fn main() -> ExitCode {
    let json = std::env::args_os().any(|a| a == "--json");
    let cli = match exit::parse_args::<Cli>(json) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    builder_client::init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return exit::failure(
                &anyhow::anyhow!(e).context("cannot start the async runtime"),
                json,
            )
        }
    };
    match runtime.block_on(builder_client::run(cli)) {
        Ok(code) => code,
        Err(e) if builder_client::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => exit::failure(&e, json),
    }
}
