//! Delivery to builder-web: a real HTTP server (axum) on 127.0.0.1:0 plays
//! builder-web; a real server (the binary where its flags, log or SIGKILL
//! are tested) and real worker processes produce the records.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::*;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use protocol::message::{ClientRequest, ServerToClient, UploadState};
use protocol::record::Exec;

/// One POST builder-web received.
#[derive(Clone, Debug)]
struct Received {
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    status: u16,
}

/// A stand-in for builder-web's `/upload`: answers 201 for a new record,
/// 409 for one it has, 503 while `down`, or the next programmed status.
#[derive(Default)]
struct Store {
    received: Mutex<Vec<Received>>,
    programmed: Mutex<VecDeque<u16>>,
    down: AtomicBool,
    stored: Mutex<HashSet<Vec<u8>>>,
}

impl Store {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Bodies accepted (2xx) in order.
    fn accepted(&self) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }
}

async fn upload(State(store): State<Arc<Store>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = if store.down.load(Ordering::SeqCst) {
        503
    } else if let Some(s) = store.programmed.lock().unwrap().pop_front() {
        s
    } else if store.stored.lock().unwrap().insert(body.to_vec()) {
        201
    } else {
        409
    };
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    store.received.lock().unwrap().push(Received {
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.to_vec(),
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

/// Starts the store on 127.0.0.1:0; returns it and its upload URL's host:port.
fn start_store() -> (Arc<Store>, String, tokio::runtime::Runtime) {
    let store = Arc::new(Store::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route("/upload", post(upload))
        .layer(DefaultBodyLimit::disable())
        .with_state(store.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    (store, addr, rt)
}

/// A server in this process delivering to `url`, retrying fast, with its
/// delivery settings changed by `configure`.
fn upload_server(
    state: &std::path::Path,
    url: &str,
    configure: impl FnOnce(&mut builder_server::upload::UploadConfig),
) -> Server {
    let mut upload = builder_server::upload::UploadConfig::parse(url, None).unwrap();
    upload.backoff_base = std::time::Duration::from_millis(50);
    upload.backoff_cap = std::time::Duration::from_secs(1);
    configure(&mut upload);
    Server::start_with(state, |c| c.upload = Some(upload))
}

/// The same with the real binary, its flags and `extra`.
fn upload_binary(state: &std::path::Path, url: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--upload",
        url,
        "--upload-backoff-min-ms",
        "50",
        "--upload-backoff-cap",
        "1",
    ];
    args.extend_from_slice(extra);
    Server::binary(state, &args)
}

fn run_jobs(server: &Server, tmp: &std::path::Path, names: &[&str]) {
    let work = tmp.join("worker-tmp");
    std::fs::create_dir_all(&work).unwrap();
    for name in names {
        let path = script(
            tmp,
            &format!("{name}.sh"),
            &format!("echo {name}\necho {name} > artifact\n"),
        );
        server.client_ok(&[
            "schedule",
            name,
            "linux",
            path.to_str().unwrap(),
            "--period",
            "never",
        ]);
        // One job at a time, so records finish in schedule order.
        let mut worker = server.worker("linux", &work, &[]);
        assert!(worker.wait_exit().success(), "{}", worker.log());
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn upload_states(server: &Server) -> Vec<(String, UploadState)> {
    match server.request(ClientRequest::Results {
        job: None,
        limit: 100,
    }) {
        ServerToClient::ResultList(r) => r
            .into_iter()
            .map(|e| (e.summary.job, e.summary.upload))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_is_posted_with_basic_auth_and_exactly_the_stored_bytes() {
    let (store, addr, _rt) = start_store();
    let tmp = tempfile::tempdir().unwrap();
    // user "us@er", password "p:ss w", percent-encoded in the URL.
    let url = format!("http://us%40er:p%3Ass%20w@{addr}/upload");
    // The binary: what it logs is checked.
    let server = upload_binary(&tmp.path().join("state"), &url, &[]);
    run_jobs(&server, tmp.path(), &["one"]);
    wait_for("the record to be delivered", || {
        (!store.received().is_empty()).then_some(())
    });

    let got = store.received().remove(0);
    assert_eq!(
        got.authorization,
        Some(format!("Basic {}", base64(b"us@er:p:ss w")))
    );
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/octet-stream")
    );
    let stored = std::fs::read(&server.records("one")[0]).unwrap();
    assert_eq!(got.body, stored, "the body is the stored full file");
    let exec = Exec::decode(&got.body).unwrap();
    assert_eq!(exec.job.name, b"one");
    wait_for("delivered state", || {
        matches!(upload_states(&server)[0].1, UploadState::Delivered { .. }).then_some(())
    });
    assert!(
        !server.log().contains("p:ss"),
        "the password is never logged"
    );
}

#[test]
fn credentials_can_come_from_a_file() {
    let (store, addr, _rt) = start_store();
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("credentials");
    std::fs::write(&creds, "builder:s3cret\n").unwrap();
    let url = format!("http://{addr}/upload");
    let server = upload_binary(
        &tmp.path().join("state"),
        &url,
        &["--upload-credentials", creds.to_str().unwrap()],
    );
    run_jobs(&server, tmp.path(), &["one"]);
    wait_for("the record to be delivered", || {
        (!store.received().is_empty()).then_some(())
    });
    assert_eq!(
        store.received()[0].authorization,
        Some(format!("Basic {}", base64(b"builder:s3cret")))
    );
}

#[test]
fn a_failed_upload_is_retried_and_409_counts_as_delivered() {
    let (store, addr, _rt) = start_store();
    store.programmed.lock().unwrap().extend([500, 201, 409]);
    let tmp = tempfile::tempdir().unwrap();
    let server = upload_server(
        &tmp.path().join("state"),
        &format!("http://{addr}/upload"),
        |_| {},
    );
    run_jobs(&server, tmp.path(), &["first"]);
    wait_for("500 then 201", || {
        (store.received().len() >= 2).then_some(())
    });
    run_jobs(&server, tmp.path(), &["second"]);
    wait_for("everything delivered", || {
        let states = upload_states(&server);
        (states.len() == 2
            && states
                .iter()
                .all(|(_, s)| matches!(s, UploadState::Delivered { .. })))
        .then_some(())
    });
    let statuses: Vec<u16> = store.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 201, 409]);
    let received = store.received();
    assert_eq!(
        received[0].body, received[1].body,
        "the retry sends the same record"
    );
}

#[test]
fn records_stored_while_the_store_is_down_are_delivered_oldest_first() {
    let (store, addr, _rt) = start_store();
    store.down.store(true, Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let server = upload_server(
        &tmp.path().join("state"),
        &format!("http://{addr}/upload"),
        |u| u.concurrency = 1,
    );
    let names = ["a", "b", "c", "d"];
    run_jobs(&server, tmp.path(), &names);
    wait_for("failed attempts", || {
        (store.received().len() >= 3).then_some(())
    });
    let states = upload_states(&server);
    let oldest = states.iter().find(|(job, _)| job == "a").unwrap();
    match &oldest.1 {
        UploadState::Pending {
            attempts,
            last_error,
        } => {
            assert!(*attempts >= 1);
            assert!(
                last_error.as_deref().unwrap_or("").contains("503"),
                "{last_error:?}"
            );
        }
        other => panic!("still pending while down, not {other:?}"),
    }
    store.down.store(false, Ordering::SeqCst);
    wait_for("all delivered", || {
        (store.accepted().len() == names.len()).then_some(())
    });
    let order: Vec<Vec<u8>> = store
        .accepted()
        .iter()
        .map(|body| Exec::decode(body).unwrap().job.name)
        .collect();
    assert_eq!(order, names.map(|n| n.as_bytes().to_vec()));
}

#[test]
fn pending_uploads_survive_a_server_killed_with_sigkill() {
    let (store, addr, _rt) = start_store();
    store.down.store(true, Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = format!("http://{addr}/upload");
    let mut server = upload_binary(&state, &url, &[]);
    run_jobs(&server, tmp.path(), &["x", "y", "z"]);
    wait_for("failed attempts", || {
        (!store.received().is_empty()).then_some(())
    });
    server.kill();

    store.down.store(false, Ordering::SeqCst);
    let server = upload_server(&state, &url, |_| {});
    wait_for("all delivered after restart", || {
        let states = upload_states(&server);
        (states.len() == 3
            && states
                .iter()
                .all(|(_, s)| matches!(s, UploadState::Delivered { .. })))
        .then_some(())
    });
    let mut jobs: Vec<Vec<u8>> = store
        .accepted()
        .iter()
        .map(|b| Exec::decode(b).unwrap().job.name)
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        [b"x".to_vec(), b"y".to_vec(), b"z".to_vec()],
        "each accepted exactly once"
    );
    assert!(store
        .received()
        .iter()
        .all(|r| [201, 409, 503].contains(&r.status)));
}

#[test]
fn delete_delivered_removes_the_record_but_keeps_the_index() {
    let (store, addr, _rt) = start_store();
    let tmp = tempfile::tempdir().unwrap();
    let server = upload_server(
        &tmp.path().join("state"),
        &format!("http://{addr}/upload"),
        |u| u.delete_delivered = true,
    );
    run_jobs(&server, tmp.path(), &["gone"]);
    wait_for("delivery", || (store.accepted().len() == 1).then_some(()));
    wait_for("the build directory to go", || {
        server.records("gone").is_empty().then_some(())
    });
    let states = upload_states(&server);
    assert_eq!(states.len(), 1);
    assert!(matches!(states[0].1, UploadState::Delivered { .. }));
}
