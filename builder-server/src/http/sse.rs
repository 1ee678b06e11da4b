//! A build's console over HTTP: server-sent events (one `line` event per
//! console line, `id` its absolute number counted from 1, then one
//! `finished` event), or plain text.
//!
//! Both come from the observer of `observe` ([`crate::client::observe`])
//! through an [`ObserveSink`] that feeds a small channel: a slow HTTP reader
//! makes only its own observer wait, which pulls the lines it has not sent
//! from memory or the console's spool. It never slows the build or other
//! readers. `Last-Event-ID: N` resumes after line N: earlier lines are read
//! again and skipped, so nothing is lost or sent twice. When a worker is
//! lost and the build runs again, a `notice` event says so and the numbers
//! start again from 1, as the new attempt's console does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;
use protocol::api::{ErrorView, FinishedView};
use protocol::message::ServerToClient;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{ApiError, ApiResult, App};
use crate::client::observe::{observe, ObserveSink};

/// Observer messages buffered per reader (each up to a batch of 1024
/// lines): two keep the socket fed while the observer reads the next batch,
/// and bound what a slow reader holds.
const BUFFER: usize = 2;

/// One of the `--http-max-sse` event streams, or 503.
pub(crate) fn sse_slot(app: &App) -> ApiResult<OwnedSemaphorePermit> {
    app.sse.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many event streams open ({}, --http-max-sse); try again later",
                app.config.max_sse
            ),
        )
    })
}

/// How often a quiet stream sends a comment: well within the idle timeout.
pub(crate) fn keep_alive(app: &App) -> Duration {
    (app.config.idle_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(15))
}

/// The observer's messages, into a channel.
struct ChannelSink(mpsc::Sender<ServerToClient>);

impl ObserveSink for ChannelSink {
    async fn send(&mut self, msg: &ServerToClient) -> anyhow::Result<()> {
        self.0
            .send(msg.clone())
            .await
            .map_err(|_| anyhow::anyhow!("the HTTP reader left"))
    }
}

/// Starts observing `uuid`; its messages arrive on the returned channel.
fn observe_into_channel(app: &App, uuid: Uuid) -> mpsc::Receiver<ServerToClient> {
    let (tx, rx) = mpsc::channel(BUFFER);
    let shared = app.shared.clone();
    tokio::spawn(async move {
        let mut sink = ChannelSink(tx);
        if let Err(e) = observe(&shared, &mut sink, uuid).await {
            tracing::debug!(%uuid, error = ?protocol::Chain(&*e), "HTTP console reader ended");
        }
    });
    rx
}

/// The console as server-sent events, after line `after`.
pub(crate) fn console_events(app: &App, uuid: Uuid, after: u64) -> ApiResult<Response> {
    let slot = sse_slot(app)?;
    let rx = observe_into_channel(app, uuid);
    let stream = EventStream {
        rx,
        line: 0,
        after,
        _slot: Arc::new(slot),
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        loop {
            let msg = s.rx.recv().await?;
            let events = s.translate(msg);
            if !events.is_empty() {
                return Some((futures_util::stream::iter(events), s));
            }
        }
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive(app)))
        .into_response())
}

/// The observer's messages as events.
struct EventStream {
    rx: mpsc::Receiver<ServerToClient>,
    /// Lines seen so far (the last one's number).
    line: u64,
    /// Lines up to this number are not sent (`Last-Event-ID`).
    after: u64,
    _slot: Arc<OwnedSemaphorePermit>,
}

impl EventStream {
    fn translate(&mut self, msg: ServerToClient) -> Vec<Event> {
        match msg {
            ServerToClient::Console(lines) => {
                let mut out = Vec::with_capacity(lines.len());
                for l in lines {
                    self.line += 1;
                    if self.line > self.after {
                        out.push(
                            Event::default()
                                .event("line")
                                .id(self.line.to_string())
                                .data(line_text(&l.data)),
                        );
                    }
                }
                out
            }
            // Dropped by the console limit: they keep their numbers.
            ServerToClient::Dropped { lines } => {
                self.line += lines;
                vec![Event::default().comment(format!("{lines} lines dropped"))]
            }
            ServerToClient::ObserveEnd { finished, outcome } => {
                let view = FinishedView::new(finished, &outcome);
                vec![Event::default()
                    .event("finished")
                    .json_data(&view)
                    .unwrap_or_default()]
            }
            ServerToClient::Failure { reason } => vec![Event::default()
                .event("error")
                .json_data(&ErrorView { error: reason })
                .unwrap_or_default()],
            // A lost worker: the build runs again from its first line, the
            // console a reconnecting reader would see (and the record keeps).
            ServerToClient::Notice { message } => {
                if message.starts_with("worker lost") {
                    self.line = 0;
                    self.after = 0;
                }
                vec![Event::default().event("notice").data(message)]
            }
            _ => Vec::new(),
        }
    }
}

/// A console line as text: invalid UTF-8 replaced, and no line breaks
/// (which SSE data cannot carry on one line).
fn line_text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).replace(['\r', '\n'], " ")
}

/// The console as `text/plain`: every line, live until the build ends.
pub(crate) fn console_text(app: &App, uuid: Uuid) -> Response {
    let rx = observe_into_channel(app, uuid);
    let body = ReceiverStream::new(rx).filter_map(|msg| async move {
        match msg {
            ServerToClient::Console(lines) => {
                let mut text = Vec::new();
                for l in lines {
                    text.extend_from_slice(&l.data);
                    text.push(b'\n');
                }
                Some(Ok::<_, Infallible>(Bytes::from(text)))
            }
            ServerToClient::Dropped { lines } => Some(Ok(Bytes::from(format!(
                "[{lines} lines dropped by the console limit]\n"
            )))),
            _ => None,
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}
