//! A stand-in for builder-web's `/upload` that counts the body's bytes as
//! they stream in, without keeping them, and answers 201.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Result;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use futures_util::StreamExt;

/// User and password the server is given in its `--upload` URL.
pub const USER: &str = "bench";
/// See [`USER`].
pub const PASSWORD: &str = "pw";
/// `Basic base64("bench:pw")`.
const AUTHORIZATION: &str = "Basic YmVuY2g6cHc=";

/// One POST received in full.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// When its first body bytes arrived (the request's arrival for an
    /// empty body).
    pub first_byte: SystemTime,
    /// When its last body bytes arrived.
    pub done: SystemTime,
    /// Body size in bytes.
    pub len: u64,
    /// Whether it carried the expected basic-auth credentials.
    pub authorized: bool,
}

#[derive(Default)]
struct Received {
    deliveries: Mutex<Vec<Delivery>>,
}

/// The sink, serving until dropped.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts on 127.0.0.1 with port 0.
    pub async fn start() -> Result<Sink> {
        let received = Arc::new(Received::default());
        let app = axum::Router::new()
            .route("/upload", post(upload))
            .layer(DefaultBodyLimit::disable())
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink {
            addr,
            received,
            task,
        })
    }

    /// The URL to give the server's `--upload`.
    pub fn url(&self) -> String {
        format!("http://{USER}:{PASSWORD}@{}/upload", self.addr)
    }

    /// Every POST received in full so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.received.deliveries.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upload(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == AUTHORIZATION.as_bytes());
    let mut first_byte = None;
    let mut len = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                first_byte.get_or_insert_with(SystemTime::now);
                len += bytes.len() as u64;
            }
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    }
    let done = SystemTime::now();
    received.deliveries.lock().unwrap().push(Delivery {
        first_byte: first_byte.unwrap_or(done),
        done,
        len,
        authorized,
    });
    StatusCode::CREATED
}
