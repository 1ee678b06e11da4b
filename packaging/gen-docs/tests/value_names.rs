//! The README's synopsis (`## Programs`) names every option and argument
//! as `--help` and the man pages do, since both of those come from the
//! clap definitions: each `--flag VALUE` the README shows has clap's value
//! name, each option that takes a value is in the README, and each
//! command's positional arguments are listed in clap's order and names.

use clap::CommandFactory;

/// The README's synopsis of `program`: its lines in the indented block
/// under `## Programs`, from `    PROGRAM ...` to the next program.
fn synopsis(program: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md at the repository's root");
    let section = readme
        .split("\n## Programs\n")
        .nth(1)
        .expect("a `## Programs` section");
    let block = section
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty());
    let mut lines = Vec::new();
    let mut inside = false;
    for line in block {
        if line.starts_with("    builder-") {
            inside = line[4..].starts_with(&format!("{program} "));
        }
        if inside && !line.trim().is_empty() {
            lines.push(line.to_owned());
        }
    }
    assert!(!lines.is_empty(), "no synopsis of {program} in the README");
    lines
}

/// The words of a synopsis line, brackets removed and `-r|--remote` split.
fn words(line: &str) -> Vec<String> {
    line.replace(['[', ']'], " ")
        .split_whitespace()
        .flat_map(|w| {
            if w == "|" {
                vec![w.to_owned()]
            } else {
                w.split('|')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
        })
        .collect()
}

/// clap's name for an argument's value.
fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(|| arg.get_id().as_str().to_uppercase(), |n| n.to_string())
}

/// The positional arguments listed after `command` (at the start of a
/// line or after a `|`), up to the first option.
fn listed_positionals(lines: &[String], command: &str) -> Option<Vec<String>> {
    for line in lines {
        let words = words(line);
        let at = words
            .iter()
            .enumerate()
            .position(|(i, w)| w == command && (i == 0 || words[i - 1] == "|"));
        if let Some(at) = at {
            return Some(
                words[at + 1..]
                    .iter()
                    .take_while(|w| !w.starts_with(['-', '|', '(']) && *w != "COMMAND")
                    .cloned()
                    .collect(),
            );
        }
    }
    None
}

fn check(program: &str, root: clap::Command) {
    let lines = synopsis(program);
    let all: Vec<String> = lines.iter().flat_map(|l| words(l)).collect();
    let mut commands = vec![(program.to_owned(), &root)];
    commands.extend(
        root.get_subcommands()
            .filter(|s| s.get_name() != "help")
            .map(|s| (s.get_name().to_owned(), s)),
    );
    let mut failures = Vec::new();
    for (name, command) in &commands {
        for arg in command.get_arguments() {
            let value = value_name(arg);
            if arg.is_positional() {
                continue;
            }
            let Some(long) = arg.get_long() else { continue };
            if !arg.get_action().takes_values() || ["help", "version"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            let shown: Vec<&String> = all
                .iter()
                .zip(all.iter().skip(1))
                .filter(|(w, _)| **w == flag)
                .map(|(_, v)| v)
                .collect();
            if shown.is_empty() {
                failures.push(format!("{name}: {flag} {value} is missing from the README"));
            }
            for v in shown {
                if *v != value {
                    failures.push(format!(
                        "{name}: the README shows {flag} {v}, --help shows {flag} <{value}>"
                    ));
                }
            }
        }
        let positionals: Vec<String> = command.get_positionals().map(value_name).collect();
        match listed_positionals(&lines, name) {
            Some(listed) if listed == positionals => {}
            listed => failures.push(format!(
                "{name}: the README lists {listed:?}, --help {positionals:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_worker_is_named_alike_in_help_and_readme() {
    check("builder-worker", builder_worker::cli::Cli::command());
}

#[test]
fn the_client_is_named_alike_in_help_and_readme() {
    check("builder-client", builder_client::cli::Cli::command());
}

#[test]
fn builder_inspect_is_named_alike_in_help_and_readme() {
    check(
        "builder-inspect",
        builder_client::inspect::InspectArgs::command(),
    );
}
