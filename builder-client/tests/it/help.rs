//! `schedule --help` carries the job contract (issue 13).

use std::process::Command;

#[test]
fn schedule_help_states_the_job_contract() {
    let out = Command::new(env!("CARGO_BIN_EXE_builder-client"))
        .args(["schedule", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "working directory",
        "BUILDER_TOKEN",
        "is an artifact",
        "does not isolate",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in:\n{help}");
    }
}
