//! `info` stays within the frame limit whatever the schedule holds, and
//! `show NAME` returns a job's whole script (issue 9, finding 6).

use crate::common::{client_conn, runtime, Server};
use protocol::message::{ClientRequest, JobKind, JobSpec, JobSummaryKind, ServerToClient};
use protocol::trigger::Trigger;

const MIB: usize = 1024 * 1024;

/// A script of `len` bytes whose lines are numbered, so a lost or
/// reordered piece shows.
fn big_script(len: usize, tag: &str) -> String {
    let mut s = String::from("#!/bin/sh\n");
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!(
            "# {tag} line {i:09} .................................\n"
        ));
        i += 1;
    }
    s.truncate(len - 1);
    s.push('\n');
    s
}

#[test]
fn two_nine_mib_scripts_leave_info_working_and_show_returns_each_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("state"));
    let scripts: Vec<(String, String)> = ["big1", "big2"]
        .iter()
        .map(|name| (name.to_string(), big_script(9 * MIB, name)))
        .collect();
    for (name, script) in &scripts {
        let file = tmp.path().join(name);
        std::fs::write(&file, script).unwrap();
        // Accepted with the default frame limit (16 MiB).
        server.client_ok(&["schedule", name, "linux", file.to_str().unwrap()]);
    }

    // Together the scripts are over 16 MiB: an info answer carrying them
    // could not be one frame. It carries none of them.
    let out = server.client_ok(&["info", "--json"]);
    assert!(out.stdout.len() < 64 * 1024, "{} bytes", out.stdout.len());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["schedule"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for (job, (name, _)) in jobs.iter().zip(&scripts) {
        assert_eq!(job["name"], name.as_str());
        assert_eq!(job["script_bytes"], 9 * MIB as u64);
        assert!(job.get("script").is_none());
    }
    let text = server.client_ok(&["info"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("big1") && text.contains("big2"), "{text}");
    assert!(text.contains("linux: big1, big2"), "{text}");

    // show returns each script whole, as text and as JSON.
    for (name, script) in &scripts {
        let out = server.client_ok(&["show", name, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["name"], name.as_str());
        assert!(
            v["script"].as_str() == Some(script.as_str()),
            "{name}: script differs"
        );
        let out = server.client_ok(&["show", name]);
        assert!(
            out.stdout.ends_with(script.as_bytes()),
            "{name}: text differs"
        );
    }
    let entry = server.show("big2");
    assert_eq!(
        entry.job.kind,
        JobKind::Script {
            platform: "linux".into(),
            script: scripts[1].1.clone()
        }
    );

    let out = server.client(&["show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no job named nope\n"
    );
}

#[test]
fn an_info_too_big_for_one_frame_arrives_whole_in_parts() {
    // A small frame limit on the server: 400 jobs with 200-byte names make
    // an answer of about 100 KiB, 25 times the limit.
    const MAX_FRAME: usize = 4096;
    const JOBS: usize = 400;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("state"), |c| c.max_frame = MAX_FRAME);
    let name = |i: usize| format!("{i:0>200}");
    runtime().block_on(async {
        let mut conn = client_conn(&server.addr).await;
        for i in 0..JOBS {
            conn.send(&ClientRequest::Schedule {
                job: JobSpec {
                    name: name(i),
                    kind: JobKind::Script {
                        platform: "linux".into(),
                        script: "true\n".into(),
                    },
                },
                trigger: Trigger::Never,
                timeout_secs: None,
            })
            .await
            .unwrap();
            // A warning that no worker ever asked for `linux` comes first.
            loop {
                match conn.recv().await.unwrap() {
                    Some(ServerToClient::Notice { .. }) => continue,
                    Some(ServerToClient::Success { .. }) => break,
                    other => panic!("schedule {i}: {other:?}"),
                }
            }
        }
    });

    // Read with the server's own limit: every part fits it.
    let (info, parts) = server.info_parts(MAX_FRAME);
    assert!(parts >= 20, "only {parts} parts");
    let names: Vec<String> = info.schedule.iter().map(|j| j.name.clone()).collect();
    assert_eq!(names, (0..JOBS).map(name).collect::<Vec<_>>());
    assert!(info.schedule.iter().all(|j| matches!(
        &j.kind,
        JobSummaryKind::Script { platform, script_bytes: 5 } if platform == "linux"
    )));
    assert_eq!(info.queues.len(), 1);
    assert_eq!(info.queues[0].jobs, names, "the queue, front first");

    // And the real client shows all of it.
    let out = server.client_ok(&["info", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schedule"].as_array().unwrap().len(), JOBS);
    assert_eq!(v["queues"][0]["jobs"].as_array().unwrap().len(), JOBS);
}
