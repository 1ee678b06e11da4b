//! `builder-inspect FILE`: see [`builder_client::inspect`] and
//! `builder-inspect --help`.

use std::process::ExitCode;

use builder_client::inspect::InspectArgs;
use builder_logging::exit;

fn main() -> ExitCode {
    let args = match exit::parse_args::<InspectArgs>(false) {
        Ok(args) => args,
        Err(code) => return code,
    };
    builder_client::init_logging(args.verbose);
    match builder_client::inspect::run(&args) {
        Ok(code) => code,
        Err(e) if builder_client::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => exit::failure(&e, false),
    }
}
