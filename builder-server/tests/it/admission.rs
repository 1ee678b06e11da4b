//! Connections that never say hello cannot lock anyone out: a full budget
//! evicts its oldest connection rather than refusing the newcomer. A real
//! server in this process (`builder_server::run`) on 127.0.0.1:0, real TCP.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use builder_server::Config;
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::{ClientRequest, HelloReply, ServerToClient};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::common::{client_conn, DEADLINE};

/// A server running in this process, stopped (and checked to end cleanly)
/// by [`InProcess::stop`].
struct InProcess {
    addr: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(tune: impl FnOnce(&mut Config)) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("state"));
        config.config_dir = dir.path().join("etc");
        // Long enough that every connection closed below was evicted, not
        // timed out.
        config.hello_timeout = Duration::from_secs(120);
        tune(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(builder_server::run(config, listener, async move {
            let _ = stopped.await;
        }));
        InProcess {
            addr,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .expect("the server ends without an error");
    }
}

/// Makes room for `needed` open files in this process (the soft limit is
/// raised towards the hard one), or fails saying what to raise.
fn ensure_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0,
        "getrlimit(RLIMIT_NOFILE) failed"
    );
    if limit.rlim_cur >= needed {
        return;
    }
    assert!(
        limit.rlim_max >= needed,
        "this test needs {needed} open files but the hard limit is {}: raise it (ulimit -Hn)",
        limit.rlim_max
    );
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads `raised`.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) },
        0,
        "cannot raise the open-file limit to {needed}: {}",
        std::io::Error::last_os_error()
    );
}

/// Opens `n` connections from `source` that never say hello.
async fn idle_connections(source: Ipv4Addr, addr: &str, n: usize) -> Vec<TcpStream> {
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(crate::peer::raw_from(source, addr).await.unwrap());
    }
    let took = started.elapsed();
    eprintln!(
        "{n} idle connections from {source} in {took:?} ({:.0} per second)",
        n as f64 / took.as_secs_f64()
    );
    held
}

/// `info` over the real protocol: the hello, then the answer. Returns how
/// long the hello took (connect to welcome).
async fn info(addr: &str) -> Duration {
    let started = Instant::now();
    let mut conn = tokio::time::timeout(DEADLINE, client_conn(addr))
        .await
        .expect("the hello in time");
    let hello = started.elapsed();
    conn.send(&ClientRequest::Info).await.unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, conn.recv::<ServerToClient>())
            .await
            .expect("the answer in time")
            .unwrap()
        {
            Some(ServerToClient::InfoPart(_)) => {}
            Some(ServerToClient::InfoEnd { .. }) => return hello,
            other => panic!("expected info, got {other:?}"),
        }
    }
}

/// What an idle connection was told: the reason of the refusal the server
/// sent before it closed.
async fn told(stream: TcpStream) -> String {
    let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME, "idle".into());
    match tokio::time::timeout(DEADLINE, conn.recv::<HelloReply>())
        .await
        .expect("the eviction notice in time")
    {
        Ok(Some(HelloReply::Refused { reason })) => reason,
        other => panic!("expected a refusal with a reason, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_served_from_the_address_of_1000_idle_connections() {
    const IDLE: usize = 1000;
    const PER_IP: usize = 64;
    // The idle connections, the server's side of those it holds, the
    // client, and room for the runtime and the database.
    ensure_open_files((IDLE + PER_IP + 256) as u64);
    let server = InProcess::start(|c| {
        c.max_unauthenticated_per_ip = PER_IP;
    })
    .await;
    // From 127.0.0.1, like the client.
    let mut idle = idle_connections(Ipv4Addr::LOCALHOST, &server.addr, IDLE).await;

    let hello = info(&server.addr).await;
    eprintln!("the client's hello took {hello:?} with {IDLE} idle connections");

    // The client took the slot of the oldest idle connection still held:
    // the 1000 evicted all but the newest 64 of themselves, the client one
    // more. Each was told why, in the order they came.
    let evicted = IDLE - PER_IP + 1;
    let rest = idle.split_off(evicted);
    for (i, stream) in idle.into_iter().enumerate() {
        let reason = told(stream).await;
        assert!(
            reason.contains("too many connections from 127.0.0.1 that have not said hello (64)")
                && reason.contains("the oldest"),
            "connection {i}: {reason}"
        );
    }
    // The newest ones still wait for their hello; letting them go ends
    // the test cleanly.
    assert_eq!(rest.len(), PER_IP - 1);
    drop(rest);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_global_budget_evicts_the_oldest_of_any_address() {
    const BUDGET: usize = 16;
    ensure_open_files(512);
    let server = InProcess::start(|c| {
        c.max_unauthenticated = BUDGET;
        c.max_unauthenticated_per_ip = 1000;
    })
    .await;
    // Two other addresses fill the budget, and more.
    let mut idle = idle_connections(Ipv4Addr::new(127, 0, 0, 2), &server.addr, BUDGET).await;
    idle.extend(idle_connections(Ipv4Addr::new(127, 0, 0, 3), &server.addr, BUDGET).await);

    // A client from a third address is served.
    info(&server.addr).await;

    // All of 127.0.0.2's connections went, then the oldest of 127.0.0.3.
    let rest = idle.split_off(BUDGET + 1);
    for (i, stream) in idle.into_iter().enumerate() {
        let reason = told(stream).await;
        assert!(
            reason.contains("server busy: 16 connections are saying hello"),
            "connection {i}: {reason}"
        );
    }
    drop(rest);
    server.stop().await;
}
