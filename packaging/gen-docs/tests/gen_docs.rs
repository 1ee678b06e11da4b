//! Runs the real `builder-gen-docs` and checks what the packages install.

use std::fs;
use std::path::Path;
use std::process::Command;

fn run(out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_builder-gen-docs"))
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run builder-gen-docs");
    assert!(status.success(), "builder-gen-docs failed: {status}");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn man_pages_document_the_real_flags() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path());
    let man = dir.path().join("man/man1");
    let server = read(&man.join("builder-server.1"));
    assert!(
        server.starts_with(".ie \\n(.g .ds Aq"),
        "not roff: {server:.80}"
    );
    for flag in [
        "\\-\\-ip",
        "\\-\\-port",
        "\\-\\-dir",
        "\\-\\-config\\-dir",
        "\\-\\-upload",
    ] {
        assert!(server.contains(flag), "builder-server.1 lacks {flag}");
    }
    assert!(read(&man.join("builder-worker.1")).contains("BUILDER_REMOTE"));
    assert!(read(&man.join("builder-inspect.1")).contains("\\-\\-console"));
    // The client gets one page per command, like git.
    let client = read(&man.join("builder-client.1"));
    assert!(
        client.contains("orb\\-build"),
        "builder-client.1 lacks orb-build"
    );
    assert!(read(&man.join("builder-client-schedule.1")).contains("\\-\\-period"));
}

#[test]
fn completions_for_every_program_and_shell() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path());
    for prog in [
        "builder-server",
        "builder-worker",
        "builder-client",
        "builder-inspect",
    ] {
        let bash = read(&dir.path().join("bash-completion/completions").join(prog));
        assert!(
            bash.contains(&format!("complete -F _{}", prog.replace('-', "__"))),
            "{prog} bash"
        );
        let zsh = read(
            &dir.path()
                .join("zsh/vendor-completions")
                .join(format!("_{prog}")),
        );
        assert!(zsh.starts_with(&format!("#compdef {prog}")), "{prog} zsh");
        let fish = read(
            &dir.path()
                .join("fish/vendor_completions.d")
                .join(format!("{prog}.fish")),
        );
        assert!(fish.contains(&format!("complete -c {prog}")), "{prog} fish");
    }
    let fish = read(
        &dir.path()
            .join("fish/vendor_completions.d/builder-client.fish"),
    );
    assert!(
        fish.contains("observe-latest"),
        "client completion lacks its commands"
    );
}

#[test]
fn output_is_byte_identical_across_runs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(a.path());
    run(b.path());
    let page = "man/man1/builder-client.1";
    assert_eq!(
        fs::read(a.path().join(page)).unwrap(),
        fs::read(b.path().join(page)).unwrap()
    );
}

#[test]
fn without_outdir_it_prints_usage_and_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_builder-gen-docs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: builder-gen-docs OUTDIR"));
}
