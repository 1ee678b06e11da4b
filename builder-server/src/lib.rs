//! builder-server: keeps the schedule and the per-platform queues, hands jobs
//! to workers, streams their console to observers, stores every finished
//! build and uploads it to builder-web.
//!
//! Map:
//! - [`run`] (this file): start-up, the accept loop, the hello, shutdown.
//! - [`admission`]: connection budgets before and after the hello.
//! - [`bounds`]: limits on what a worker sends (artifacts, console lines,
//!   messages, times).
//! - [`db`]: all durable state in SQLite.
//! - [`worker`]: a worker's connection: dispatch, console, artifacts, result.
//! - [`client`]: one module per client request.
//! - [`scheduler`]: queues jobs when they are due.
//! - [`store`]: `DIR/<job>/<uuid>/full` records.
//! - [`layout`]: the server's own files, `DIR/.builder/` (lock, `state.db`).
//! - [`live`]: running builds and their observers.
//! - [`spool`]: a running build's console and artifacts on disk, written
//!   by its writer thread.
//! - [`metrics`]: `--metrics`: Prometheus `/metrics` and `/healthz`.
//! - [`http`]: `--http`: the JSON API, live consoles, builder-web's URL
//!   shape and the dashboard.
//! - [`events`]: the farm's event stream.
//! - [`upload`]: delivers records to builder-web.
//! - [`templates`]: orb-build templates.
//! - [`state`]: what the tasks share.
//! - [`legacy`]: the reference's (OCaml builder's) workers and clients on
//!   the same port, and `--import-state`.

pub mod admission;
pub mod bounds;
pub mod build;
pub mod cli;
pub mod client;
pub mod db;
pub mod events;
pub mod http;
pub mod layout;
pub mod legacy;
pub mod live;
pub mod metrics;
pub mod scheduler;
pub mod spool;
pub mod state;
pub mod store;
pub mod templates;
pub mod upload;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use protocol::codec::Connection;
use protocol::message::{self, Hello, HelloReply, Role, ServerHello, PROTOCOL_VERSION};
use protocol::Chain;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::state::Shared;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory: `<job>/<uuid>/full` records, and the server's lock
    /// and `state.db` in `.builder/` (see [`layout`]).
    pub dir: PathBuf,
    /// Where `orb-build.template.<platform>` files are.
    pub config_dir: PathBuf,
    /// Default job timeout.
    pub job_timeout: Duration,
    /// Largest frame accepted from a peer.
    pub max_frame: usize,
    /// Most console bytes kept in memory (and in the record) per build; see
    /// [`live`].
    pub max_console: usize,
    /// Heartbeat interval on worker connections; silent for three of these
    /// means lost.
    pub heartbeat: Duration,
    /// Most connections whose hello was accepted, served at once; more are
    /// refused with a reason.
    pub max_connections: usize,
    /// Most connections that have not said hello yet (see [`admission`]).
    pub max_unauthenticated: usize,
    /// Most connections from one address that have not said hello yet.
    pub max_unauthenticated_per_ip: usize,
    /// How long a peer has to send its hello.
    pub hello_timeout: Duration,
    /// How long a frame may take to arrive once it has started, after the
    /// hello (idle time between frames is not limited).
    pub frame_timeout: Duration,
    /// Limits on what one build's worker may send.
    pub limits: bounds::BuildLimits,
    /// Token clients must present, if set.
    pub client_token: Option<String>,
    /// Token workers must present, if set.
    pub worker_token: Option<String>,
    /// Where and how to deliver records, if anywhere.
    pub upload: Option<upload::UploadConfig>,
    /// Networks from which the reference's peers, which cannot send a
    /// token, are accepted when a token is required (see [`legacy`]).
    pub legacy_peers: Vec<legacy::peers::Cidr>,
    /// Where to serve `/metrics` and `/healthz`, if anywhere (checked for
    /// loopback by the caller).
    pub metrics: Option<std::net::SocketAddr>,
    /// On shutdown, how long running builds may go on to finish; no new
    /// build is handed out meanwhile. Zero: stop at once (they are requeued
    /// at the next start).
    pub drain_timeout: Duration,
    /// The HTTP listener (`--http`), if any (checked for loopback by the
    /// caller).
    pub http: Option<http::HttpConfig>,
}

impl Config {
    /// Defaults for a state directory (used by tests and the CLI).
    pub fn new(dir: PathBuf) -> Config {
        Config {
            dir,
            config_dir: PathBuf::from(default_config_dir()),
            job_timeout: Duration::from_secs(3600),
            max_frame: protocol::codec::DEFAULT_MAX_FRAME,
            max_console: DEFAULT_MAX_CONSOLE,
            heartbeat: Duration::from_secs(5),
            max_connections: 4096,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_ip: DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            limits: bounds::BuildLimits::default(),
            client_token: None,
            worker_token: None,
            upload: None,
            legacy_peers: Vec::new(),
            metrics: None,
            drain_timeout: Duration::ZERO,
            http: None,
        }
    }
}

/// The default of [`Config::max_console`]: 256 MiB.
pub const DEFAULT_MAX_CONSOLE: usize = 256 * 1024 * 1024;

/// `/etc/builder`, or `/usr/local/etc/builder` on FreeBSD.
pub fn default_config_dir() -> &'static str {
    if cfg!(target_os = "freebsd") {
        "/usr/local/etc/builder"
    } else {
        "/etc/builder"
    }
}

/// `/var/lib/builder`, or `/var/db/builder` on FreeBSD.
pub fn default_state_dir() -> &'static str {
    if cfg!(target_os = "freebsd") {
        "/var/db/builder"
    } else {
        "/var/lib/builder"
    }
}

/// The default of [`Config::max_unauthenticated`].
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;

/// The default of [`Config::max_unauthenticated_per_ip`].
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_IP: usize = 64;

/// The default of [`Config::hello_timeout`].
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`Config::frame_timeout`].
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

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

    build::recover(&shared).await?;

    let mut tasks = JoinSet::new();
    tasks.spawn(scheduler::run(shared.clone()));
    if shared.config.upload.is_some() {
        tasks.spawn(upload::run(shared.clone()));
    }
    let metrics_addr = match shared.config.metrics {
        Some(addr) => {
            let metrics = TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}: cannot listen"))?;
            let bound = metrics.local_addr().ok();
            tasks.spawn(metrics::serve(shared.clone(), metrics));
            bound
        }
        None => None,
    };
    if let Some(http) = &shared.config.http {
        http::start(&shared, http, &mut tasks).await?;
    }

    log_start(&shared.config, &listener, metrics_addr);
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    let admission = Arc::new(admission::Admission::new(
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
                    let shared = shared.clone();
                    match admission.accept(peer.ip()) {
                        Ok(slot) => {
                            let admission = admission.clone();
                            connections.spawn(async move {
                                handle_connection(shared, &admission, slot, stream).await;
                            });
                        }
                        Err(busy) => {
                            tracing::warn!(%peer, reason = ?busy.to_string(), "refusing connection");
                            connections.spawn(async move { refuse_busy(stream, busy).await });
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::error!(error = ?e.to_string(), "accept failed");
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

/// Tells a peer over a connection budget why it is turned away.
async fn refuse_busy(stream: TcpStream, busy: admission::Busy) {
    if let Ok(mut conn) = Connection::from_tcp(stream, PRE_HELLO_MAX_FRAME) {
        let reason = busy.to_string();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            conn.send(&HelloReply::Refused { reason }),
        )
        .await;
    }
}

async fn handle_connection(
    shared: Arc<Shared>,
    admission: &admission::Admission,
    slot: admission::Unauthenticated,
    stream: TcpStream,
) {
    // Until the hello is accepted: a small frame limit and a short timeout.
    let mut conn = match Connection::from_tcp(stream, PRE_HELLO_MAX_FRAME) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = ?e.to_string(), "cannot set up connection");
            return;
        }
    };
    let peer = conn.peer().to_owned();
    let hello_timeout = shared.config.hello_timeout;
    let hello = match tokio::time::timeout(hello_timeout, read_hello(&shared, &mut conn)).await {
        Ok(Ok(First::Hello(hello))) => hello,
        Ok(Ok(First::Reference(frame))) => {
            return Box::pin(legacy::serve(&shared, conn, &frame, admission, slot)).await
        }
        Ok(Err(reason)) => {
            tracing::warn!(%peer, ?reason, "refused connection");
            let _ = conn.send(&HelloReply::Refused { reason }).await;
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?hello_timeout, "no hello in time");
            let _ = conn
                .send(&HelloReply::Refused {
                    reason: "no hello received in time".into(),
                })
                .await;
            return;
        }
    };
    let _slot = match admission.authenticate(slot) {
        Ok(slot) => slot,
        Err(busy) => {
            tracing::warn!(%peer, reason = ?busy.to_string(), "refusing connection");
            let reason = busy.to_string();
            let _ = conn.send(&HelloReply::Refused { reason }).await;
            return;
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
        tracing::debug!(%peer, error = ?Chain(&e).to_string(), "peer left during hello");
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
        tracing::warn!(%peer, error = ?format!("{e:#}"), "connection ended with an error");
    }
    conn.linger_close(LINGER).await;
}

/// How long a connection that the server ends may take to close after it:
/// the peer reads the server's last word (a failure's reason) meanwhile.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

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

/// Compares two secrets in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
