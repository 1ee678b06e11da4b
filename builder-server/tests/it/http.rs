//! The farm on HTTP (issue 17), through the real server: access, the JSON
//! API, artifacts with ETag and Range, builder-web's URL shape, live
//! consoles over server-sent events with `Last-Event-ID`, the event stream
//! and the dashboard's escaping.

use std::path::Path;
use std::time::Duration;

use crate::common::{script, wait_for, Server, DEADLINE};
use futures_util::StreamExt;
use serde_json::Value;

/// A temp dir and a server with `--http 127.0.0.1:0` and `extra` flags.
fn setup(extra: &[&str]) -> (tempfile::TempDir, Server, String) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("worker-tmp")).unwrap();
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    // The real binary: the --http flags are part of what is tested.
    let server = Server::binary(&tmp.path().join("state"), &args);
    let base = http_base(&server);
    (tmp, server, base)
}

/// `http://ADDR` of the server's HTTP listener, from its log.
fn http_base(server: &Server) -> String {
    wait_for("the HTTP address", || {
        let log = server.log();
        let rest = log.split(" http=").nth(1)?;
        Some(format!("http://{}", rest.split_whitespace().next()?))
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client that does not follow redirects.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// One request: `method` `url` with `headers`.
fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    rt().block_on(async {
        let mut req = client().request(method.parse().unwrap(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = req.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    })
}

fn get(url: &str) -> Answer {
    request("GET", url, &[])
}

fn schedule(server: &Server, job: &str, platform: &str, script: &Path) {
    server.client_ok(&[
        "schedule",
        job,
        platform,
        script.to_str().unwrap(),
        "--period",
        "never",
    ]);
}

/// Runs one worker for `platform` until it has done one job.
fn run_one(server: &Server, tmp: &Path, platform: &str) {
    let mut worker = server.worker(platform, &tmp.join("worker-tmp"), &[]);
    assert!(worker.wait_exit().success(), "{}", worker.log());
}

#[test]
fn tokens_guard_reads_and_writes_and_the_worker_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let client_token = tmp.path().join("client.token");
    let worker_token = tmp.path().join("worker.token");
    std::fs::write(&client_token, "c-secret\n").unwrap();
    std::fs::write(&worker_token, "w-secret\n").unwrap();
    let tokens = [
        "--client-token-file",
        client_token.to_str().unwrap(),
        "--worker-token-file",
        worker_token.to_str().unwrap(),
    ];
    let (_t, _server, base) = setup(&tokens);
    let jobs = format!("{base}/api/v1/jobs");

    assert_eq!(get(&format!("{base}/healthz")).status, 200);
    assert_eq!(get(&format!("{base}/metrics")).status, 200);
    let missing = get(&jobs);
    assert_eq!(missing.status, 401);
    assert!(missing.json()["error"].as_str().unwrap().contains("token"));
    assert_eq!(missing.header("www-authenticate"), "Bearer");
    let wrong = request("GET", &jobs, &[("authorization", "Bearer nope")]);
    assert_eq!(
        (wrong.status, wrong.json()["error"].as_str()),
        (401, Some("bad token"))
    );
    let worker = request("GET", &jobs, &[("authorization", "Bearer w-secret")]);
    assert_eq!(worker.status, 403);
    assert!(worker.json()["error"]
        .as_str()
        .unwrap()
        .contains("worker token"));
    let ok = request("GET", &jobs, &[("authorization", "Bearer c-secret")]);
    assert_eq!((ok.status, ok.json()), (200, serde_json::json!([])));
    // The dashboard is a read too.
    assert_eq!(get(&format!("{base}/")).status, 401);
    let execute = format!("{base}/api/v1/jobs/x/execute");
    assert_eq!(
        request("POST", &execute, &[("authorization", "Bearer w-secret")]).status,
        403
    );
    let nojob = request("POST", &execute, &[("authorization", "Bearer c-secret")]);
    assert_eq!(nojob.status, 404, "{}", nojob.text());

    // Public reads: reads are open, writes still need the client token.
    let mut public = tokens.to_vec();
    public.push("--http-public-read");
    let (_t2, _server2, base) = setup(&public);
    assert_eq!(get(&format!("{base}/api/v1/jobs")).status, 200);
    assert_eq!(get(&format!("{base}/")).status, 200);
    let execute = format!("{base}/api/v1/jobs/x/execute");
    assert_eq!(request("POST", &execute, &[]).status, 401);
    assert_eq!(
        request("POST", &execute, &[("authorization", "Bearer w-secret")]).status,
        403
    );
}

#[test]
fn http_beyond_loopback_needs_tokens_or_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::common::bin("builder-server"))
        .args(["--port", "0", "--http", "0.0.0.0:0", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--http") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn the_api_serves_jobs_builds_artifacts_and_builder_web_urls() {
    let (tmp, server, base) = setup(&[]);
    let build = script(
        tmp.path(),
        "build.sh",
        "#!/bin/sh\necho hello\nmkdir -p bin doc\nprintf '0123456789' > bin/app\necho readme > doc/README\n",
    );
    schedule(&server, "app", "linux", &build);
    run_one(&server, tmp.path(), "linux");
    server.wait_records("app", 1);

    let jobs = get(&format!("{base}/api/v1/jobs")).json();
    assert_eq!(jobs[0]["name"], "app");
    assert_eq!(jobs[0]["platform"], "linux");
    assert_eq!(jobs[0]["trigger"], "never");
    assert!(jobs[0].get("script").is_none(), "no script in the list");
    let job = get(&format!("{base}/api/v1/jobs/app")).json();
    assert_eq!(job["script"], std::fs::read_to_string(&build).unwrap());
    let missing = get(&format!("{base}/api/v1/jobs/nope"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no job named nope");

    let builds = get(&format!("{base}/api/v1/builds?job=app&state=finished")).json();
    let builds = builds.as_array().unwrap();
    assert_eq!(builds.len(), 1);
    let uuid = builds[0]["uuid"].as_str().unwrap().to_owned();
    assert_eq!(builds[0]["state"], "finished");
    assert_eq!(
        builds[0]["outcome"],
        serde_json::json!({"kind": "exited", "code": 0})
    );
    assert!(builds[0]["started"].as_str().unwrap().ends_with('Z'));
    // The same fields as `results --json`.
    let results: Value =
        serde_json::from_slice(&server.client_ok(&["results", "--json"]).stdout).unwrap();
    for field in [
        "uuid",
        "job",
        "platform",
        "started",
        "finished",
        "duration_secs",
        "attempts",
        "outcome",
        "result",
        "upload",
    ] {
        assert_eq!(builds[0][field], results[0][field], "{field}");
    }
    assert_eq!(
        get(&format!("{base}/api/v1/builds?state=running")).json(),
        serde_json::json!([])
    );
    assert_eq!(
        get(&format!("{base}/api/v1/builds?state=bogus")).status,
        400
    );
    assert_eq!(
        get(&format!("{base}/api/v1/builds?platform=other")).json(),
        serde_json::json!([])
    );

    let one = get(&format!("{base}/api/v1/builds/{uuid}")).json();
    let mut artifacts: Vec<(String, u64)> = one["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_owned(),
                a["size"].as_u64().unwrap(),
            )
        })
        .collect();
    artifacts.sort();
    assert_eq!(
        artifacts,
        [("bin/app".to_owned(), 10), ("doc/README".to_owned(), 7)]
    );
    let sha = one["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == "bin/app")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sha, "84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882",
        "sha256 of 0123456789"
    );
    assert_eq!(
        get(&format!("{base}/api/v1/builds/{}", uuid::Uuid::new_v4())).status,
        404
    );
    assert_eq!(get(&format!("{base}/api/v1/builds/not-a-uuid")).status, 400);

    // Artifacts: whole, ETag, Range, conditional, traversal refused.
    let url = format!("{base}/api/v1/builds/{uuid}/artifacts/bin/app");
    let whole = get(&url);
    assert_eq!(
        (whole.status, whole.body.as_slice()),
        (200, &b"0123456789"[..])
    );
    assert_eq!(whole.header("content-length"), "10");
    assert_eq!(whole.header("etag"), format!("\"{sha}\""));
    let part = request("GET", &url, &[("range", "bytes=2-5")]);
    assert_eq!((part.status, part.body.as_slice()), (206, &b"2345"[..]));
    assert_eq!(part.header("content-range"), "bytes 2-5/10");
    let tail = request("GET", &url, &[("range", "bytes=-3")]);
    assert_eq!(tail.body, b"789");
    assert_eq!(request("GET", &url, &[("range", "bytes=10-")]).status, 416);
    let etag = format!("\"{sha}\"");
    assert_eq!(
        request("GET", &url, &[("if-none-match", &etag)]).status,
        304
    );
    for bad in [
        "..%2Fstate.db",
        "%2Fetc%2Fpasswd",
        "bin%2F..%2F..%2Fx",
        "a%00b",
    ] {
        let refused = get(&format!("{base}/api/v1/builds/{uuid}/artifacts/{bad}"));
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert!(refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("invalid artifact path"));
    }
    assert_eq!(
        get(&format!("{base}/api/v1/builds/{uuid}/artifacts/bin/none")).status,
        404
    );

    // The record, as stored.
    let record = get(&format!("{base}/api/v1/builds/{uuid}/record"));
    let stored = std::fs::read(&server.records("app")[0]).unwrap();
    assert_eq!(record.status, 200);
    assert_eq!(record.header("content-length"), stored.len().to_string());
    assert_eq!(record.body, stored);

    // The console as text.
    let console = get(&format!("{base}/api/v1/builds/{uuid}/console"));
    assert_eq!(console.text(), "hello\n");

    // builder-web's shape.
    let page = get(&format!("{base}/job/app/build/{uuid}"));
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.text().contains("bin/app"));
    let json = request(
        "GET",
        &format!("{base}/job/app/build/{uuid}"),
        &[("accept", "application/json")],
    );
    assert_eq!(json.json()["uuid"], uuid.as_str());
    assert_eq!(get(&format!("{base}/job/other/build/{uuid}")).status, 404);
    let file = get(&format!("{base}/job/app/build/{uuid}/f/doc/README"));
    assert_eq!(file.body, b"readme\n");
    // Two artifacts, one under bin/: that one is the main binary.
    let main = get(&format!("{base}/job/app/build/{uuid}/main-binary"));
    assert_eq!(
        (main.status, main.body.as_slice()),
        (200, &b"0123456789"[..])
    );

    // Platforms and workers; execute queues at the front.
    let queued = request("POST", &format!("{base}/api/v1/jobs/app/execute"), &[]);
    assert_eq!(queued.status, 202, "{}", queued.text());
    let queued = queued.json();
    assert_eq!(queued["queued"][0]["platform"], "linux");
    let new_uuid = queued["queued"][0]["uuid"].as_str().unwrap().to_owned();
    let platforms = get(&format!("{base}/api/v1/platforms")).json();
    assert_eq!(platforms[0]["platform"], "linux");
    assert_eq!(platforms[0]["dropped"], false);
    assert_eq!(
        platforms[0]["queued"],
        serde_json::json!([{"job": "app", "uuid": new_uuid}])
    );
    let queued_build = get(&format!("{base}/api/v1/builds/{new_uuid}")).json();
    assert_eq!(queued_build["state"], "queued");
    assert_eq!(
        get(&format!("{base}/api/v1/workers")).json(),
        serde_json::json!([])
    );
    let body = request("POST", &format!("{base}/api/v1/jobs/app/execute"), &[]);
    assert_eq!(body.status, 202);
}

#[test]
fn latest_skips_a_failed_newer_build_and_main_binary_needs_one_candidate() {
    let (tmp, server, base) = setup(&[]);
    let flag = tmp.path().join("fail");
    let build = script(
        tmp.path(),
        "build.sh",
        &format!(
            "#!/bin/sh\nmkdir -p bin\necho a > bin/a\necho b > bin/b\nif [ -e '{}' ]; then exit 3; fi\n",
            flag.display()
        ),
    );
    schedule(&server, "two", "linux", &build);
    run_one(&server, tmp.path(), "linux");
    server.wait_records("two", 1);
    let good = get(&format!("{base}/api/v1/builds?job=two")).json()[0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&flag, "").unwrap();
    server.client_ok(&["execute", "two"]);
    run_one(&server, tmp.path(), "linux");
    server.wait_records("two", 2);
    let builds = get(&format!("{base}/api/v1/builds?job=two")).json();
    assert_eq!(
        builds[0]["outcome"]["code"], 3,
        "the newest failed: {builds}"
    );

    let latest = get(&format!("{base}/job/two/build/latest"));
    assert_eq!(latest.status, 307);
    assert_eq!(
        latest.header("location"),
        format!("{base}/job/two/build/{good}")
    );
    let rest = get(&format!(
        "{base}/job/two/build/latest/f/bin/a?platform=linux"
    ));
    assert_eq!(
        rest.header("location"),
        format!("{base}/job/two/build/{good}/f/bin/a")
    );
    assert_eq!(
        get(&format!("{base}/job/two/build/latest?platform=other")).status,
        404
    );
    assert_eq!(get(&format!("{base}/job/none/build/latest")).status, 404);
    // Two files under bin/: ambiguous.
    let main = get(&format!("{base}/job/two/build/{good}/main-binary"));
    assert_eq!(main.status, 404);
    assert!(main.json()["error"].as_str().unwrap().contains("ambiguous"));
}

#[test]
fn bounds_refuse_large_bodies_and_extra_connections_and_close_idle_ones() {
    let (_tmp, _server, base) = setup(&[
        "--http-max-connections",
        "2",
        "--http-max-body",
        "16",
        "--http-idle-timeout",
        "1",
    ]);
    // Two silent connections take the budget: the next is refused.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut silent: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let busy = wait_for("a connection over the budget refused", || {
        let answer = get(&format!("{base}/healthz"));
        (answer.status == 503).then_some(answer)
    });
    assert!(busy.json()["error"]
        .as_str()
        .unwrap()
        .contains("--http-max-connections"));
    // Nothing moved on them for the idle timeout: closed, and the budget
    // is free again.
    for stream in &mut silent {
        use std::io::Read;
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).unwrap(), 0, "closed by the server");
    }
    assert_eq!(get(&format!("{base}/healthz")).status, 200);

    let big = rt().block_on(async {
        client()
            .post(format!("{base}/api/v1/jobs/x/execute"))
            .body(format!("{{\"commit\": \"{}\"}}", "a".repeat(100)))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(big.status().as_u16(), 413);
}

#[test]
fn a_request_head_that_never_ends_is_cut_at_the_header_timeout() {
    // The idle timeout is far away: only the header timeout can close it.
    let (_tmp, _server, base) =
        setup(&["--http-header-timeout", "1", "--http-idle-timeout", "600"]);
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    // Whatever hyper says first (a 408 or nothing), the connection ends.
    stream
        .read_to_end(&mut answer)
        .expect("closed before the test's deadline");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn the_metrics_port_serves_no_api() {
    let (_tmp, server, base) = setup(&["--metrics", "127.0.0.1:0"]);
    let metrics = wait_for("the metrics address", || {
        let log = server.log();
        let rest = log.split("metrics=").nth(1)?;
        Some(format!("http://{}", rest.split_whitespace().next()?))
    });
    assert_eq!(get(&format!("{metrics}/healthz")).status, 200);
    assert_eq!(get(&format!("{metrics}/api/v1/jobs")).status, 404);
    assert_eq!(get(&format!("{metrics}/")).status, 404);
    // The HTTP listener serves both.
    assert_eq!(get(&format!("{base}/metrics")).status, 200);
    assert_eq!(get(&format!("{base}/api/v1/jobs")).status, 200);
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    event: String,
    id: Option<String>,
    data: String,
}

/// Reads server-sent events from `url` until `stop` says so; returns them.
async fn read_events(
    url: &str,
    headers: &[(&str, &str)],
    mut on_event: impl FnMut(&Sse) -> bool,
) -> Vec<Sse> {
    let mut req = client().get(url).header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = req.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut e = Sse {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        e.event = v.trim_start().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        e.id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data = v.strip_prefix(' ').unwrap_or(v).to_owned();
                        any = true;
                    }
                }
                if any {
                    let done = on_event(&e);
                    events.push(e);
                    if done {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("events in time");
    events
}

#[test]
fn a_console_streams_live_then_resumes_after_last_event_id() {
    let (tmp, server, base) = setup(&[]);
    let flag = tmp.path().join("go");
    let build = script(
        tmp.path(),
        "build.sh",
        &format!(
            "#!/bin/sh\ni=1; while [ $i -le 50 ]; do echo \"line $i\"; i=$((i+1)); done\necho '<script>alert(1)</script>'\nwhile [ ! -e '{0}' ]; do sleep 0.05; done\ni=52; while [ $i -le 100 ]; do echo \"line $i\"; i=$((i+1)); done\n",
            flag.display()
        ),
    );
    schedule(&server, "live", "linux", &build);
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let uuid = wait_for("the build to run", || {
        let running = get(&format!("{base}/api/v1/builds?state=running")).json();
        running[0]["uuid"].as_str().map(str::to_owned)
    });
    let url = format!("{base}/api/v1/builds/{uuid}/console");

    // Live: 51 lines arrive while the build waits for the flag; then the
    // rest and the end.
    let flag2 = flag.clone();
    let events = rt().block_on(read_events(&url, &[], move |e| {
        if e.id.as_deref() == Some("51") {
            std::fs::write(&flag2, "").unwrap();
        }
        e.event == "finished"
    }));
    assert!(worker.wait_exit().success(), "{}", worker.log());
    let lines: Vec<&Sse> = events.iter().filter(|e| e.event == "line").collect();
    assert_eq!(lines.len(), 100);
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e.id.as_deref(), Some((i + 1).to_string().as_str()));
    }
    assert_eq!(lines[0].data, "line 1");
    assert_eq!(lines[50].data, "<script>alert(1)</script>");
    assert_eq!(lines[99].data, "line 100");
    let end: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(
        end["outcome"],
        serde_json::json!({"kind": "exited", "code": 0})
    );

    // Resumed after line 30 (now replayed from the record): no loss, no
    // duplicate.
    let resumed = rt().block_on(read_events(&url, &[("last-event-id", "30")], |e| {
        e.event == "finished"
    }));
    let ids: Vec<u64> = resumed
        .iter()
        .filter(|e| e.event == "line")
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (31..=100).collect::<Vec<u64>>());
    assert_eq!(resumed.last().unwrap().event, "finished");
    let bad = request(
        "GET",
        &url,
        &[("accept", "text/event-stream"), ("last-event-id", "x")],
    );
    assert_eq!(bad.status, 400);

    // The build page escapes what the build printed.
    let page = get(&format!("{base}/builds/{uuid}")).text();
    assert!(!page.contains("<script>alert"), "{page}");
}

#[test]
fn the_event_stream_tells_of_queued_started_and_finished_builds() {
    let (tmp, server, base) = setup(&[]);
    let build = script(tmp.path(), "build.sh", "#!/bin/sh\necho hi\n");
    schedule(&server, "ev", "linux", &build);
    let url = format!("{base}/api/v1/events");
    let base2 = base.clone();
    let server_addr = server.addr.clone();
    let worker_tmp = tmp.path().join("worker-tmp");
    let events = rt().block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let reader = tokio::spawn(async move {
            let mut started = false;
            read_events(&url, &[], move |e| {
                if !started {
                    started = true;
                    let _ = tx.send(());
                }
                e.event == "build_finished"
            })
            .await
        });
        // Queue and run once the stream is open: poll until an event shows
        // that it is (a queued build).
        let http = client();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = http
                .post(format!("{base2}/api/v1/jobs/ev/execute"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status().as_u16(), 202);
            if tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_ok()
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no event arrived");
        }
        let mut worker = tokio::process::Command::new(crate::common::bin("builder-worker"))
            .args(["linux", "--remote", &server_addr])
            .env("TMPDIR", &worker_tmp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let events = reader.await.unwrap();
        let _ = worker.wait().await;
        events
    });
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(names.contains(&"build_queued"), "{names:?}");
    assert!(names.contains(&"worker_connected"), "{names:?}");
    assert!(names.contains(&"build_started"), "{names:?}");
    let finished: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(finished["job"], "ev");
    assert_eq!(finished["result"], "exited 0");
}

#[test]
fn the_dashboard_lists_a_running_build_and_escapes_names() {
    let (tmp, server, base) = setup(&[]);
    let flag = tmp.path().join("go");
    let build = script(
        tmp.path(),
        "build.sh",
        &format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\n",
            flag.display()
        ),
    );
    schedule(&server, "a<b>&c", "linux", &build);
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let page = wait_for("the running build on the dashboard", || {
        let page = get(&format!("{base}/")).text();
        page.contains("running-build").then_some(page)
    });
    assert!(page.contains("a&lt;b&gt;&amp;c"), "{page}");
    assert!(!page.contains("a<b>"), "{page}");
    assert!(page.contains("<meta name=\"viewport\""));
    let css = get(&format!("{base}/assets/style.css"));
    assert!(css.header("content-type").starts_with("text/css"));
    std::fs::write(&flag, "").unwrap();
    assert!(worker.wait_exit().success(), "{}", worker.log());
}

// ---------------------------------------------------------------------------
// A real browser: Debian's chromium, driven headless over WebDriver
// (chromium-driver) with plain HTTP requests.

/// Set to skip the browser test where chromium cannot be installed; the
/// test says that it skipped.
const SKIP_BROWSER: &str = "BUILDER_SKIP_BROWSER_TEST";

/// The first of `names` found on PATH.
fn which(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A WebDriver session on a chromedriver of our own.
struct Browser {
    driver: std::process::Child,
    url: String,
    session: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        // The OS picks the port; chromedriver is told it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let rt = rt();
        let http = reqwest::Client::new();
        wait_for("chromedriver to answer", || {
            rt.block_on(http.get(format!("{url}/status")).send())
                .ok()
                .filter(|r| r.status().is_success())
        });
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1000,1000"],
            },
        }}});
        let answer: Value = rt.block_on(async {
            let answer = http
                .post(format!("{url}/session"))
                .header("content-type", "application/json")
                .body(caps.to_string())
                .send()
                .await
                .unwrap();
            serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
        });
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        Browser {
            driver,
            url,
            session,
            http,
            rt,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let answer: Value = self.rt.block_on(async {
            let mut req = self.http.request(method.parse().unwrap(), url);
            if !body.is_null() {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let answer = req.send().await.unwrap();
            serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
        });
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": script, "args": []}),
        )
    }

    /// Saves a PNG screenshot of the page.
    fn screenshot(&self, path: &Path) {
        let data = self.call("GET", "/screenshot", Value::Null);
        let png = base64_decode(data.as_str().expect("a screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.url, self.session);
        let _ = self.rt.block_on(self.http.delete(url).send());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (screenshots).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| u32::from(value(*c))).collect();
        let n = v
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | x << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn a_browser_sees_the_running_build_and_its_live_console() {
    let (Some(chromium), Some(chromedriver)) = (
        which(&["chromium", "chromium-browser"]),
        which(&["chromedriver"]),
    ) else {
        if std::env::var_os(SKIP_BROWSER).is_some() {
            eprintln!("SKIPPED: chromium or chromedriver missing and {SKIP_BROWSER} is set");
            return;
        }
        panic!(
            "chromium and chromedriver are needed for this test: `apt-get install -y chromium chromium-driver` (or set {SKIP_BROWSER}=1 to skip it)"
        );
    };
    let (tmp, server, base) = setup(&[]);
    let flag = tmp.path().join("go");
    let build = script(
        tmp.path(),
        "build.sh",
        &format!(
            "#!/bin/sh\necho '<script>document.title=\"pwned\"</script>'\ni=0\nwhile [ ! -e '{0}' ]; do echo \"tick $i\"; i=$((i+1)); sleep 0.1; done\necho 'printed after the page loaded'\nwhile [ ! -e '{0}.end' ]; do sleep 0.1; done\n",
            flag.display()
        ),
    );
    schedule(&server, "browsed", "linux", &build);
    let mut worker = server.worker("linux", &tmp.path().join("worker-tmp"), &[]);
    let uuid = wait_for("the build to run", || {
        let running = get(&format!("{base}/api/v1/builds?state=running")).json();
        running[0]["uuid"].as_str().map(str::to_owned)
    });

    let browser = Browser::start(&chromium, &chromedriver);
    browser.open(&format!("{base}/"));
    wait_for("the dashboard to list the running build", || {
        let text = browser.eval("return document.body.innerText");
        (text.as_str()?.contains(&uuid)).then_some(())
    });
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    browser.screenshot(&shots.join("dashboard.png"));

    browser.open(&format!("{base}/builds/{uuid}"));
    wait_for("the console to start", || {
        let text = browser.eval("return document.getElementById('console').textContent");
        text.as_str()?.contains("tick").then_some(())
    });
    // Printed only now, after the page loaded: it can only arrive live.
    std::fs::write(&flag, "").unwrap();
    let console = wait_for("the live line on the build page", || {
        let text = browser.eval("return document.getElementById('console').textContent");
        let text = text.as_str()?.to_owned();
        text.contains("printed after the page loaded")
            .then_some(text)
    });
    assert!(
        console.contains("<script>document.title=\"pwned\"</script>"),
        "the script line shows as text: {console}"
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#console *').length"),
        0
    );
    assert_ne!(browser.eval("return document.title"), "pwned");
    browser.screenshot(&shots.join("build-page.png"));
    eprintln!("screenshots: {}", shots.join("dashboard.png").display());

    std::fs::write(tmp.path().join("go.end"), "").unwrap();
    assert!(worker.wait_exit().success(), "{}", worker.log());
}
