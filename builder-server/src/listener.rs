//! The front door: [`run`] starts the server's tasks and accepts
//! connections until shutdown (with the `--drain-timeout` drain); each
//! connection gets an [admission](crate::admission) slot, says hello
//! ([`read_hello`]: version, token, platform) within `--hello-timeout`, and
//! is handed to its role's handler ([`crate::client`], [`crate::worker`],
//! or [`crate::legacy`] for the reference's peers).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::codec::Connection;
use protocol::message::{self, Hello, HelloReply, Role, ServerHello, PROTOCOL_VERSION};
use protocol::Chain;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Eviction, Unauthenticated};
use crate::config::Config;
use crate::db::Db;
use crate::state::Shared;
use crate::{client, layout, legacy, memory, metrics, scheduler, templates, upload, worker};

/// The largest frame accepted before the hello succeeds: a hello is a few
/// hundred bytes, so an unauthenticated peer never makes the server buffer
/// more than this.
pub const PRE_HELLO_MAX_FRAME: usize = 64 * 1024;

/// Runs the server on `listener` until `shutdown` completes. Returns an error
/// if the state cannot be opened or stops being writable.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let _lock = layout::open(&config.dir)?;
    let db = Db::open(&layout::db_path(&config.dir))?;
    let token = CancellationToken::new();
    let shared = Arc::new(Shared::new(config, db, token.clone()));

    crate::build::recover(&shared).await?;

    let mut tasks = JoinSet::new();
    tasks.spawn(scheduler::run(shared.clone()));
    tasks.spawn(memory::trim_after_large_frames(shared.shutdown.clone()));
    if shared.config.upload.is_some() {
        tasks.spawn(upload::run(shared.clone()));
    }
    let metrics_addr = match shared.config.metrics {
        Some(addr) => {
            let metrics = TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}: cannot listen"))?;
            let bound = metrics.local_addr().ok();
            tasks.spawn(metrics::serve(
                shared.clone(),
                metrics,
                shared.shutdown.clone(),
            ));
            bound
        }
        None => None,
    };
    if let Some(http) = &shared.config.http {
        crate::http::start(&shared, http, &mut tasks).await?;
    }

    log_start(&shared.config, &listener, metrics_addr);
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    let admission = Arc::new(Admission::new(
        shared.config.max_unauthenticated,
        shared.config.max_unauthenticated_per_ip,
        shared.config.max_connections,
    ));
    // Set once the shutdown signal came with a --drain-timeout.
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut drain_check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = &mut shutdown, if drain_until.is_none() => {
                let timeout = shared.config.drain_timeout;
                if timeout.is_zero() {
                    break;
                }
                tracing::info!(running = shared.live.len(), timeout_secs = timeout.as_secs(), "draining: no new builds; waiting for the running ones to finish");
                shared.draining.cancel();
                drain_until = Some(tokio::time::Instant::now() + timeout);
            }
            _ = drain_check.tick(), if drain_until.is_some() => {
                if shared.live.is_empty() {
                    tracing::info!("drained: no build running");
                    break;
                }
                if drain_until.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    tracing::warn!(running = shared.live.len(), "drain timeout: the builds still running are requeued at the next start");
                    break;
                }
            }
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Never refused here: a full budget evicts its oldest.
                    let slot = admission.accept(peer.ip());
                    let shared = shared.clone();
                    let admission = admission.clone();
                    connections.spawn(async move {
                        handle_connection(shared, &admission, slot, stream).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::error!(error = ?Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!("shutting down");
    token.cancel();
    drop(listener);
    // Handlers stop at their next frame boundary; state is committed per
    // change, so nothing is left to flush but what they are writing now.
    let drain = async {
        while connections.join_next().await.is_some() {}
        while tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10 s");
    }
    match shared.take_fatal() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The start-up line: where the server listens, where its state and
/// templates are, where records go (never the password) and who may connect.
fn log_start(config: &Config, listener: &TcpListener, metrics: Option<std::net::SocketAddr>) {
    let tokens = match (&config.client_token, &config.worker_token) {
        (Some(_), Some(_)) => "client and worker tokens",
        (Some(_), None) => "client token only",
        (None, Some(_)) => "worker token only",
        (None, None) => "none",
    };
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        dir = ?config.dir,
        config_dir = ?config.config_dir,
        upload = config.upload.as_ref().map_or("none", |u| u.url.as_str()),
        tokens,
        metrics = %metrics.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        drain_timeout_secs = config.drain_timeout.as_secs(),
        "builder-server listening"
    );
}

/// How long the server tries to tell a peer it refuses before the hello
/// why it does: a refusal is one small frame into an empty socket buffer,
/// so this passes only for a peer that does not read at all.
const REFUSAL_WITHIN: Duration = Duration::from_secs(1);

/// Tells a peer that has not said hello why it is turned away (best
/// effort, within [`REFUSAL_WITHIN`]); the caller then closes the
/// connection.
async fn refuse(conn: &mut Connection, reason: String) {
    let _ = tokio::time::timeout(REFUSAL_WITHIN, conn.send(&HelloReply::Refused { reason })).await;
}

/// How a connection's hello phase ended.
enum HelloPhase {
    /// [`read_hello`] finished (or timed out).
    Read(Result<Result<First, String>, tokio::time::error::Elapsed>),
    /// A newer connection took this one's slot first.
    Evicted(Eviction),
}

async fn handle_connection(
    shared: Arc<Shared>,
    admission: &Admission,
    mut slot: Unauthenticated,
    stream: TcpStream,
) {
    // Until the hello is accepted: a small frame limit and a short timeout.
    let mut conn = match Connection::from_tcp(stream, PRE_HELLO_MAX_FRAME) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = ?Chain(&e), "cannot set up connection");
            return;
        }
    };
    let peer = conn.peer().to_owned();
    let hello_timeout = shared.config.hello_timeout;
    let phase = tokio::select! {
        read = tokio::time::timeout(hello_timeout, read_hello(&shared, &mut conn)) => HelloPhase::Read(read),
        why = slot.evicted() => HelloPhase::Evicted(why),
    };
    let hello = match phase {
        HelloPhase::Read(Ok(Ok(First::Hello(hello)))) => hello,
        HelloPhase::Read(Ok(Ok(First::Reference(frame)))) => {
            return Box::pin(legacy::serve(&shared, conn, &frame, admission, slot)).await
        }
        HelloPhase::Read(Ok(Err(reason))) => {
            tracing::warn!(%peer, %reason, "refused connection");
            return refuse(&mut conn, reason).await;
        }
        HelloPhase::Read(Err(_)) => {
            tracing::warn!(%peer, timeout = ?hello_timeout, "no hello in time");
            return refuse(&mut conn, "no hello received in time".into()).await;
        }
        HelloPhase::Evicted(why) => {
            tracing::warn!(%peer, reason = %why, "closing a connection that has not said hello");
            return refuse(&mut conn, why.to_string()).await;
        }
    };
    let _slot = match admission.authenticate(slot) {
        Ok(slot) => slot,
        Err(busy) => {
            tracing::warn!(%peer, reason = %busy, "refusing connection");
            return refuse(&mut conn, busy.to_string()).await;
        }
    };
    conn.set_max_frame(shared.config.max_frame);
    if hello.role == Role::Client {
        // A worker needs no frame timeout: it cannot send a heartbeat in
        // the middle of a frame, so one that stalls there is lost after
        // three heartbeat intervals anyway.
        conn.set_frame_timeout(Some(shared.config.frame_timeout));
    }
    let welcome = HelloReply::Welcome(ServerHello {
        version: PROTOCOL_VERSION,
        software: format!("builder-server {}", env!("CARGO_PKG_VERSION")),
        heartbeat_ms: shared.config.heartbeat.as_millis() as u64,
    });
    if let Err(e) = conn.send(&welcome).await {
        tracing::debug!(%peer, error = ?Chain(&e), "peer left during hello");
        return;
    }
    // Boxed: a task's future is as large as the largest state it can be
    // in, and every connection pays for it while idle (a worker's build
    // state, a client's observer). Each role's own future is sized for it.
    let result = match hello.role {
        Role::Client => Box::pin(client::serve(&shared, &mut conn)).await,
        Role::Worker { platform, host } => {
            Box::pin(worker::serve(&shared, &mut conn, &platform, &host)).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(%peer, error = ?protocol::Chain(&*e), "connection ended with an error");
    }
    conn.linger_close(LINGER).await;
}

/// How long a connection that the server ends may take to close after it:
/// the peer reads the server's last word (a failure's reason) meanwhile.
pub const LINGER: Duration = Duration::from_secs(2);

/// A connection's first frame.
enum First {
    /// This project's hello, checked.
    Hello(Hello),
    /// A reference peer's command, for [`legacy::serve`].
    Reference(bytes::BytesMut),
}

/// Reads and checks the hello; `Err` carries the reason sent back.
async fn read_hello(shared: &Shared, conn: &mut Connection) -> Result<First, String> {
    let frame = match conn.recv_frame().await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err("connection closed before hello".into()),
        Err(e) => return Err(format!("bad first frame: {}", Chain(&e))),
    };
    if protocol::legacy::dialect(&frame) == protocol::legacy::Dialect::Reference {
        return Ok(First::Reference(frame));
    }
    let hello: Hello = match message::decode(&frame) {
        Ok(hello) => hello,
        Err(e) => {
            let mut reason = format!(
                "expected a hello for protocol version {PROTOCOL_VERSION}: {}",
                Chain(&e)
            );
            if let Some(v) = message::peek_hello_version(&frame).filter(|v| *v != PROTOCOL_VERSION)
            {
                reason.push_str(&format!(" (the peer may speak protocol version {v})"));
            }
            return Err(reason);
        }
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "unsupported protocol version {} (this server speaks {PROTOCOL_VERSION})",
            hello.version
        ));
    }
    let expected = match hello.role {
        Role::Client => &shared.config.client_token,
        Role::Worker { .. } => &shared.config.worker_token,
    };
    if let Some(expected) = expected {
        let given = hello.token.as_deref().unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(if hello.token.is_none() {
                "a token is required".into()
            } else {
                "bad token".into()
            });
        }
    }
    if let Role::Worker { platform, .. } = &hello.role {
        if !templates::valid_platform(platform) {
            return Err(format!("invalid platform name {platform:?}"));
        }
        match shared.db.is_dropped(platform).await {
            Ok(true) => return Err(format!("platform {platform} is dropped")),
            Ok(false) => {}
            Err(e) => return Err(shared.refuse_or_stop(e).to_string()),
        }
    }
    Ok(First::Hello(hello))
}

/// Compares a token in time that does not depend on where it differs.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
