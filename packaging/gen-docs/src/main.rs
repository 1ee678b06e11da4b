//! `builder-gen-docs OUTDIR`: writes the man pages and shell completions of
//! the four programs from their clap definitions, so they never go stale.
//!
//! Run at package-build time (`packaging/debian/create_package.sh`,
//! `packaging/FreeBSD/create_package.sh`); nothing it writes is checked in.
//! The layout under OUTDIR is the one the packages install, relative to
//! `/usr/share` (or `/usr/local/share`):
//!
//! ```text
//! man/man1/builder-server.1  builder-client.1  builder-client-schedule.1 ...
//! bash-completion/completions/builder-server ...
//! zsh/vendor-completions/_builder-server ...
//! fish/vendor_completions.d/builder-server.fish ...
//! ```
//!
//! The output is deterministic (no dates, sorted by clap's definition
//! order), so packages built from it are reproducible.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

/// The four programs, each with its clap definition.
fn commands() -> Vec<clap::Command> {
    vec![
        builder_server::cli::Args::command(),
        builder_worker::cli::Cli::command(),
        builder_client::cli::Cli::command(),
        builder_client::inspect::InspectArgs::command(),
    ]
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: builder-gen-docs OUTDIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every page and completion under `out`; returns the paths written.
fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = out.join("man/man1");
    let completion_dirs = [
        (Shell::Bash, out.join("bash-completion/completions")),
        (Shell::Zsh, out.join("zsh/vendor-completions")),
        (Shell::Fish, out.join("fish/vendor_completions.d")),
    ];
    for dir in std::iter::once(&man_dir).chain(completion_dirs.iter().map(|(_, d)| d)) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for cmd in commands() {
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        man_pages(&cmd, &man_dir, &mut written)?;
        let name = cmd.get_name().to_owned();
        for (shell, dir) in &completion_dirs {
            let file = match shell {
                Shell::Bash => dir.join(&name),
                Shell::Zsh => dir.join(format!("_{name}")),
                _ => dir.join(format!("{name}.fish")),
            };
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut cmd, &name, &mut buf);
            write(&file, &buf)?;
            written.push(file);
        }
    }
    Ok(written)
}

/// One page for the program and one for each visible subcommand
/// (`builder-client-schedule.1`, ...), as `man git-commit` does.
fn man_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("builder");
    let file = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf)
        .with_context(|| format!("cannot render {}", file.display()))?;
    write(&file, &buf)?;
    written.push(file);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, written)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
