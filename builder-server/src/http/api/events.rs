//! `GET /api/v1/events`: the farm's events ([`crate::events`]) as
//! server-sent events, named by kind, data the event's JSON.

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

use crate::http::sse::{keep_alive, sse_slot};
use crate::http::{ApiResult, App};

/// Streams farm events until the client leaves or the server stops. A
/// reader too slow for [`crate::events::CAPACITY`] events gets a `lagged`
/// event saying how many it missed (refetch the lists then).
pub(crate) async fn stream(State(app): State<App>) -> ApiResult<Response> {
    let slot = sse_slot(&app)?;
    let mut events = app.shared.events.subscribe();
    let stop = app.shared.shutdown.clone();
    let stream = async_stream(move |tx| async move {
        let _slot = slot;
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = stop.cancelled() => return,
            };
            let sse = match event {
                Ok(e) => Event::default()
                    .event(e.name())
                    .json_data(&*e)
                    .unwrap_or_else(|_| Event::default().comment("unencodable event")),
                Err(RecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{n}}}")),
                Err(RecvError::Closed) => return,
            };
            if tx.send(sse).await.is_err() {
                return;
            }
        }
    });
    let interval = keep_alive(&app);
    Ok(Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(interval))
        .into_response())
}

/// A stream fed by a task: `produce(tx)` sends items until it returns.
fn async_stream<T, F, Fut>(produce: F) -> tokio_stream::wrappers::ReceiverStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
