//! `--http ADDR:PORT`: the farm on HTTP/1.1. One listener serves the JSON
//! API (`/api/v1/...`, see [`api`]), live consoles ([`sse`]), builder-web's
//! URL shape ([`web`]), the dashboard ([`dashboard`]), and `/metrics` and
//! `/healthz` (rendered by [`crate::metrics`]).
//!
//! This file owns the listener and its bounds, the router and access:
//! - Bounds: at most [`HttpConfig::max_connections`] connections (more are
//!   answered 503 and closed), request headers within
//!   [`HttpConfig::header_timeout`], a connection on which no byte moves
//!   for [`HttpConfig::idle_timeout`] is closed (event streams send
//!   keep-alive comments, so a quiet build is not cut), bodies of at most
//!   [`HttpConfig::max_body`] bytes, at most [`HttpConfig::max_sse`] event
//!   streams at once.
//! - Access (SPEC §8): `/healthz` and `/metrics` are open. With a client
//!   token configured, every other read needs `Authorization: Bearer
//!   TOKEN` unless [`HttpConfig::public_read`], and every write needs it.
//!   The worker token is refused (403) wherever a token is needed. Tokens
//!   are compared in constant time.

pub mod api;
mod artifacts;
mod dashboard;
mod sse;
mod web;

use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use protocol::api::ErrorView;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::db::DbError;
use crate::state::Shared;

/// Default of [`HttpConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`HttpConfig::max_sse`].
pub const DEFAULT_MAX_SSE: usize = 256;
/// Default of [`HttpConfig::max_body`]: 64 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Default of [`HttpConfig::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`HttpConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP listener's settings (`--http` and the `--http-*` flags).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen (checked for loopback by the caller).
    pub addr: SocketAddr,
    /// The address the outside world uses, for absolute links
    /// (`https://farm.example.org`, no trailing slash); by default the
    /// listener's own.
    pub public_url: Option<String>,
    /// Reads need no token even when a client token is configured.
    pub public_read: bool,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most event streams (console and farm events) at once.
    pub max_sse: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// How long a request's headers may take to arrive.
    pub header_timeout: Duration,
    /// A connection on which no byte moves for this long is closed.
    pub idle_timeout: Duration,
}

impl HttpConfig {
    /// Defaults for a listener on `addr`.
    pub fn new(addr: SocketAddr) -> HttpConfig {
        HttpConfig {
            addr,
            public_url: None,
            public_read: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sse: DEFAULT_MAX_SSE,
            max_body: DEFAULT_MAX_BODY,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What every handler shares.
pub(crate) struct Http {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: HttpConfig,
    /// Event streams open now.
    pub(crate) sse: Arc<Semaphore>,
    /// Stored builds' artifact locations and digests.
    pub(crate) artifacts: artifacts::Cache,
    /// `public_url`, or `http://` + the bound address.
    pub(crate) base_url: String,
}

/// The handlers' state.
pub(crate) type App = Arc<Http>;

/// Binds `--http` and serves it until the server shuts down; returns the
/// bound address.
pub async fn start(
    shared: &Arc<Shared>,
    config: &HttpConfig,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("--http {}: cannot listen", config.addr))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("--http {}: no local address", config.addr))?;
    let base_url = config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://{bound}"));
    let app = Arc::new(Http {
        shared: shared.clone(),
        config: config.clone(),
        sse: Arc::new(Semaphore::new(config.max_sse.max(1))),
        artifacts: artifacts::Cache::default(),
        base_url,
    });
    tracing::info!(http = %bound, public_url = %app.base_url, public_read = config.public_read, "HTTP listening");
    tasks.spawn(serve(app, listener));
    Ok(bound)
}

/// The whole router: open routes, then the rest behind [`auth`].
fn router(app: &App) -> Router {
    let open = Router::new()
        .route("/metrics", get(crate::metrics::metrics))
        .route("/healthz", get(crate::metrics::healthz))
        .with_state(app.shared.clone());
    let guarded = Router::new()
        .merge(api::routes())
        .merge(web::routes())
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app.clone());
    open.merge(guarded)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such page")
}

/// The accept loop: one task per connection within the budget.
async fn serve(app: App, listener: TcpListener) {
    let router = router(&app);
    let slots = Arc::new(Semaphore::new(app.config.max_connections.max(1)));
    let stop = app.shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::error!(error = ?protocol::Chain(&e), "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let (router, app) = (router.clone(), app.clone());
                tokio::spawn(async move {
                    connection(&app, router, stream).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "HTTP connection refused: --http-max-connections reached");
                tokio::spawn(refuse_busy(stream));
            }
        }
    }
}

/// Answers 503 to a connection over the budget, after its request's head
/// (at most 8 KiB, within a second): a client reads an answer to what it
/// sent, not one that came before.
async fn refuse_busy(mut stream: TcpStream) {
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 1024];
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = r#"{"error":"too many HTTP connections (--http-max-connections); try again later"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one connection: HTTP/1.1 with the header timeout; closed when no
/// byte moved for the idle timeout, or soon after shutdown.
async fn connection(app: &App, router: Router, stream: TcpStream) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        start,
        last: last.clone(),
    });
    let service = TowerToHyperService::new(
        router.map_request(|req: Request<hyper::body::Incoming>| req.map(axum::body::Body::new)),
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout);
    let mut conn = pin!(builder.serve_connection(io, service));
    let idle = app.config.idle_timeout;
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let stop = app.shared.shutdown.clone();
    let mut stopping: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = ?protocol::Chain(&e), "HTTP connection ended");
                }
                return;
            }
            _ = stop.cancelled(), if stopping.is_none() => {
                conn.as_mut().graceful_shutdown();
                stopping = Some(Instant::now());
            }
            _ = check.tick() => {
                let moved = Duration::from_millis(last.load(Ordering::Relaxed));
                if start.elapsed().saturating_sub(moved) >= idle {
                    tracing::debug!("HTTP connection idle past --http-idle-timeout; closed");
                    return;
                }
                if stopping.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                    return;
                }
            }
        }
    }
}

/// A connection that notes when a byte last moved either way.
struct Tracked {
    inner: TcpStream,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Access control (see the module docs).
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let config = &app.shared.config;
    let Some(client) = &config.client_token else {
        return next.run(req).await;
    };
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if !write && app.config.public_read {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        None => {
            let mut answer = error(
                StatusCode::UNAUTHORIZED,
                "a token is required: send `Authorization: Bearer TOKEN` with the client token",
            );
            answer
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            answer
        }
        Some(token) if crate::listener::constant_time_eq(token.as_bytes(), client.as_bytes()) => {
            next.run(req).await
        }
        Some(token)
            if config.worker_token.as_ref().is_some_and(|w| {
                crate::listener::constant_time_eq(token.as_bytes(), w.as_bytes())
            }) =>
        {
            error(
                StatusCode::FORBIDDEN,
                "the worker token is not accepted here; use the client token",
            )
        }
        Some(_) => error(StatusCode::UNAUTHORIZED, "bad token"),
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorView {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

/// A handler's failure: a status and a message.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// 404 with `message`.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }

    /// 400 with `message`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    /// The state database failed: 503 (a full disk, a refused request) or
    /// 500 (the server is stopping).
    pub(crate) fn db(shared: &Shared, e: DbError) -> ApiError {
        let e = shared.refuse_or_stop(e);
        let status = if e.is_disk_full() || e.is_refused() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(status, format!("state database: {}", protocol::Chain(&e)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// A handler's result.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Parses a UUID from a path.
pub(crate) fn parse_uuid(text: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| ApiError::bad_request(format!("invalid build UUID {text:?}")))
}
