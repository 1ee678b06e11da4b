//! A test peer: a worker (or client) written directly against the protocol
//! crate, over real TCP, that does what a hostile or broken peer would:
//! holds a build with heartbeats only, floods artifacts, lies about times,
//! sends half a frame. The real server must bound every one of these.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::{
    Hello, HelloReply, JobAssignment, Role, ServerToWorker, WorkerMessage, PROTOCOL_VERSION,
};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::DEADLINE;

/// A worker connection after an accepted hello.
pub async fn worker(addr: &str, platform: &str) -> Connection {
    let mut conn = Connection::connect(addr, DEFAULT_MAX_FRAME).await.unwrap();
    conn.send(&Hello {
        version: PROTOCOL_VERSION,
        role: Role::Worker {
            platform: platform.into(),
            host: "hostile-peer".into(),
        },
        token: None,
        software: "test peer".into(),
    })
    .await
    .unwrap();
    match conn.recv::<HelloReply>().await.unwrap() {
        Some(HelloReply::Welcome(_)) => conn,
        other => panic!("hello refused: {other:?}"),
    }
}

/// Asks for a job and waits for it (answering nothing but heartbeats).
pub async fn take_job(conn: &mut Connection) -> JobAssignment {
    conn.send(&WorkerMessage::RequestJob).await.unwrap();
    loop {
        let msg = tokio::time::timeout(DEADLINE, conn.recv::<ServerToWorker>())
            .await
            .expect("a job in time")
            .unwrap();
        match msg {
            Some(ServerToWorker::Job(job)) => return job,
            Some(ServerToWorker::Heartbeat) => conn.send(&WorkerMessage::Heartbeat).await.unwrap(),
            other => panic!("expected a job, got {other:?}"),
        }
    }
}

/// What the server said last before it closed the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// A failure frame with this reason, then the close.
    Failure(String),
    /// Closed (or reset) without saying why.
    Silently,
}

/// Sends heartbeats (and nothing else) until the server drops the worker.
pub async fn heartbeats_until_dropped(conn: &mut Connection, every: Duration) -> Dropped {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut failure = None;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server kept a heartbeat-only worker for {DEADLINE:?}"
        );
        match tokio::time::timeout(every, conn.recv::<ServerToWorker>()).await {
            Err(_) => {
                if conn.send(&WorkerMessage::Heartbeat).await.is_err() {
                    break;
                }
            }
            Ok(Ok(Some(ServerToWorker::Failure { reason }))) => failure = Some(reason),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    failure.map_or(Dropped::Silently, Dropped::Failure)
}

/// Reads until the server closes; returns the last failure reason it gave.
pub async fn read_until_closed(conn: &mut Connection) -> Dropped {
    let mut failure = None;
    loop {
        match tokio::time::timeout(DEADLINE, conn.recv::<ServerToWorker>())
            .await
            .expect("the server closes the connection in time")
        {
            Ok(Some(ServerToWorker::Failure { reason })) => failure = Some(reason),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    failure.map_or(Dropped::Silently, Dropped::Failure)
}

/// A raw TCP connection from a chosen loopback address (127.0.0.0/8 is all
/// loopback on Linux), to tell peers apart by address.
pub async fn raw_from(source: Ipv4Addr, addr: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr.parse().unwrap()).await
}

/// The resident memory of a process, in bytes (`VmRSS` in /proc).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .expect("VmRSS in /proc/PID/status")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}
