//! The everyday commands through the real client and worker (issue 13):
//! run and watch, one UUID per build, typo guards, update, reschedule into
//! the past, fetch, JSON errors.

use crate::common::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn execute_observe_and_observe_latest_wait_follow_the_run_from_its_first_line() {
    let (tmp, server) = setup();
    let script = script(
        tmp.path(),
        "run.sh",
        "#!/bin/sh\necho first line\nmkdir out\necho art > out/a.txt\nexit 3\n",
    );
    server.client_ok(&[
        "schedule",
        "obs",
        "linux",
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
    // No worker yet: nothing has run, and there is nothing to show.
    let waiting = server.spawn_client(&["observe-latest", "--wait", "--job", "obs"]);
    server.wait_log("observer waiting for the next build");
    let executed = server.spawn_client(&["execute", "obs", "--observe"]);
    // The one-shot worker starts once execute has moved the queued run to
    // the front (so that it is the build observed): started earlier, it
    // could take that run, and execute would queue and wait for another.
    server.wait_log("job queued at the front");
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);

    let (mut executed, mut waiting) = (executed, waiting);
    // Polled with a deadline: a client that never gets its end fails the
    // test instead of hanging it.
    wait_for("both observing clients to exit", || {
        (executed.try_wait().unwrap().is_some() && waiting.try_wait().unwrap().is_some())
            .then_some(())
    });
    let executed = executed.wait_with_output().unwrap();
    let waited = waiting.wait_with_output().unwrap();
    for (name, out) in [
        ("execute --observe", &executed),
        ("observe-latest --wait", &waited),
    ] {
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            "first line\n",
            "{name} from the first line"
        );
    }
    // execute names the build it queued, and that is the build stored.
    let stderr = text(&executed.stderr);
    let uuid = stderr
        .split("queued on linux as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no UUID in {stderr}"))
        .to_owned();
    let records = server.records("obs");
    assert_eq!(records.len(), 1);
    assert!(
        records[0].to_str().unwrap().contains(&uuid),
        "{records:?} vs {uuid}"
    );

    // fetch: the record byte for byte, and its artifacts.
    let out_dir = tmp.path().join("fetched");
    server.client_ok(&["fetch", &uuid, "--output", out_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out_dir.join("full")).unwrap(),
        std::fs::read(&records[0]).unwrap()
    );
    let again = server.client(&["fetch", &uuid, "--output", out_dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let art_dir = tmp.path().join("artifacts");
    server.client_ok(&[
        "fetch",
        &uuid,
        "--output",
        art_dir.to_str().unwrap(),
        "--artifacts",
    ]);
    assert_eq!(
        std::fs::read_to_string(art_dir.join("out/a.txt")).unwrap(),
        "art\n"
    );
    let unknown = server.client(&[
        "fetch",
        "00000000-0000-4000-8000-000000000000",
        "--output",
        "x",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no stored build"));

    // results shows the attempt.
    let out = server.client_ok(&["results", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["uuid"], uuid.as_str());
    assert_eq!(v[0]["attempts"], 1);
}

#[test]
fn typos_are_warned_about_and_every_command_says_what_it_did() {
    let (tmp, server) = setup();
    let script = script(tmp.path(), "s.sh", "true\n");
    let script = script.to_str().unwrap();
    let _worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    wait_for("the worker to connect", || {
        (!server.info().workers.is_empty()).then_some(())
    });

    // A platform no worker asked for: scheduled, with a warning.
    let out = server.client_ok(&["schedule", "typo", "debain-12", script]);
    assert!(
        text(&out.stderr).contains("warning: no worker has ever asked for platform debain-12"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "scheduled typo on debain-12 (daily); queued now\n"
    );
    // A platform a worker asked for: no warning.
    let out = server.client_ok(&["schedule", "fine", "linux", script, "--period", "weekly"]);
    assert_eq!(text(&out.stderr), "");

    // The duplicate name points to update.
    let out = server.client(&["schedule", "fine", "linux", script]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("`update fine`"),
        "{}",
        text(&out.stderr)
    );

    // update keeps the next run when the trigger does not change.
    let before = server
        .info()
        .schedule
        .into_iter()
        .find(|e| e.name == "fine")
        .unwrap();
    let new_script = crate::common::script(tmp.path(), "new.sh", "echo new\n");
    let out = server.client_ok(&[
        "update",
        "fine",
        "--script",
        new_script.to_str().unwrap(),
        "--timeout",
        "30",
        "--period",
        "weekly",
    ]);
    assert!(
        text(&out.stdout).contains("next run unchanged"),
        "{}",
        text(&out.stdout)
    );
    let after = server
        .info()
        .schedule
        .into_iter()
        .find(|e| e.name == "fine")
        .unwrap();
    assert_eq!(after.next_run, before.next_run);
    assert_eq!(after.timeout_secs, Some(30));
    assert!(
        matches!(server.show("fine").job.kind, protocol::message::JobKind::Script { ref script, .. } if script == "echo new\n")
    );
    let out = server.client_ok(&["update", "fine", "--period", "hourly"]);
    assert!(
        text(&out.stdout).contains("trigger hourly"),
        "{}",
        text(&out.stdout)
    );
    let hourly = server
        .info()
        .schedule
        .into_iter()
        .find(|e| e.name == "fine")
        .unwrap();
    assert_ne!(
        hourly.next_run, before.next_run,
        "a new trigger, a new phase"
    );

    // reschedule into the past is refused.
    let out = server.client(&["reschedule", "fine", "2020-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is in the past; use `execute fine` to run it now"),
        "{}",
        text(&out.stderr)
    );

    // drop-platform names what it removed; unknown and repeated drops say so.
    let out = server.client_ok(&["drop-platform", "debain-12"]);
    assert_eq!(
        text(&out.stdout),
        "dropped platform debain-12; removed script job typo\n"
    );
    let out = server.client_ok(&["drop-platform", "debain-12"]);
    assert!(
        text(&out.stdout).contains("already dropped"),
        "{}",
        text(&out.stdout)
    );
    let out = server.client_ok(&["drop-platform", "nonexist"]);
    assert!(
        text(&out.stderr).contains("platform nonexist was unknown"),
        "{}",
        text(&out.stderr)
    );
    let out = server.client_ok(&["undrop-platform", "nonexist"]);
    assert!(text(&out.stdout).contains("undropped platform nonexist"));
    let out = server.client_ok(&["undrop-platform", "nonexist"]);
    assert!(text(&out.stdout).contains("is not dropped; nothing changed"));

    // observe-latest that matches nothing repeats its filter.
    let out = server.client(&["observe-latest", "--job", "hello", "--platform", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no build matches --job hello --platform x"),
        "{}",
        text(&out.stderr)
    );

    // --json errors are JSON, with the same exit status.
    let out = server.client(&["--json", "unschedule", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"], "no job named missing");
}
