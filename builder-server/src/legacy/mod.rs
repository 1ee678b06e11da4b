//! The reference's peers (robur's OCaml `builder-worker` and
//! `builder-client`) on the same port as this project's: the first frame
//! tells them apart ([`protocol::legacy::dialect`]), and a reference peer's
//! connection is served here, in its own protocol, by the same code paths as
//! a new peer's: the same queues, claim, live builds and observers, records,
//! result index and uploads.
//!
//! - [`serve`] (this file): the reference's hello, its version check and
//!   who may connect (tokens, `--legacy-peers`).
//! - [`worker`]: worker protocol 5, one job per connection.
//! - [`client`]: client protocol 13, one command per connection.
//! - [`import`]: `--import-state`, the reference server's `state` file.
//! - [`peers`]: the `--legacy-peers` networks.
//!
//! As in the reference, a connection whose hello is not one of the two
//! versions spoken here is closed without an answer; the server logs the
//! version and the peer.

pub mod client;
pub mod import;
pub mod peers;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use protocol::codec::Connection;
use protocol::legacy::{Command, PeerKind, CLIENT_VERSION, WORKER_VERSION};
use protocol::Chain;

use crate::admission::{Admission, Unauthenticated};
use crate::state::Shared;

/// Serves a connection whose first frame, `first`, is a reference command.
/// `slot` is the connection's place in the unauthenticated budget; it moves
/// to the authenticated one once the peer is admitted, as a new peer's does
/// after its hello.
pub async fn serve(
    shared: &Arc<Shared>,
    mut conn: Connection,
    first: &[u8],
    admission: &Admission,
    slot: Unauthenticated,
) {
    let peer = conn.peer().to_owned();
    let (kind, version) = match Command::decode(first) {
        Ok(Command::ClientHello { kind, version }) => (kind, version),
        Ok(other) => {
            tracing::warn!(%peer, command = other.name(), "reference peer did not start with client_hello; closing");
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = ?Chain(&e), "unreadable reference hello; closing");
            return;
        }
    };
    let (role, expected) = match kind {
        PeerKind::Client => ("client", CLIENT_VERSION),
        PeerKind::Worker => ("worker", WORKER_VERSION),
    };
    if version != expected {
        // The reference closes the connection without a word.
        tracing::warn!(%peer, role, version, supported = expected, "reference peer speaks an unsupported protocol version; closing");
        return;
    }
    if let Err(reason) = admit(shared, kind, &peer) {
        tracing::warn!(%peer, role, %reason, "refused reference peer");
        // The reference's peers print a failure's message.
        let _ = send(
            &mut conn,
            &Command::Failure {
                message: reason.into_bytes(),
            },
        )
        .await;
        return;
    }
    let _slot = match admission.authenticate(slot) {
        Ok(slot) => slot,
        Err(busy) => {
            tracing::warn!(%peer, role, reason = %busy, "refusing reference peer");
            let message = busy.to_string().into_bytes();
            let _ = send(&mut conn, &Command::Failure { message }).await;
            return;
        }
    };
    // Past the hello: the server's frame limit (a reference worker sends
    // its artifacts inline in job_finished, within it), and for clients the
    // read timeout of a started frame.
    conn.set_max_frame(shared.config.max_frame);
    if kind == PeerKind::Client {
        conn.set_frame_timeout(Some(shared.config.frame_timeout));
    }
    if let Err(e) = send(&mut conn, &Command::ServerHello).await {
        tracing::debug!(%peer, error = ?protocol::Chain(&*e), "reference peer left during hello");
        return;
    }
    let result = match kind {
        PeerKind::Client => client::serve(shared, &mut conn).await,
        PeerKind::Worker => worker::serve(shared, &mut conn).await,
    };
    if let Err(e) = result {
        tracing::warn!(%peer, role, error = ?protocol::Chain(&*e), "reference connection ended with an error");
    }
    conn.linger_close(crate::listener::LINGER).await;
}

/// A reference peer cannot send a token: it is admitted when the server
/// requires none of its role, or when it connects from a `--legacy-peers`
/// network. `Err` says why not.
fn admit(shared: &Shared, kind: PeerKind, peer: &str) -> Result<(), String> {
    let token = match kind {
        PeerKind::Client => &shared.config.client_token,
        PeerKind::Worker => &shared.config.worker_token,
    };
    if token.is_none() {
        return Ok(());
    }
    let Ok(addr) = peer.parse::<SocketAddr>() else {
        return Err(format!("cannot tell the address of {peer}"));
    };
    if shared
        .config
        .legacy_peers
        .iter()
        .any(|net| net.contains(addr.ip()))
    {
        return Ok(());
    }
    Err(format!(
        "this server requires a token, which the OCaml builder's peers cannot send, and {} is not in --legacy-peers",
        addr.ip()
    ))
}

/// Sends one reference command.
async fn send(conn: &mut Connection, command: &Command) -> anyhow::Result<()> {
    conn.send_frame(&command.encode()).await?;
    Ok(())
}

/// Receives one reference command; `None` when the peer closed the
/// connection.
async fn recv(conn: &mut Connection) -> anyhow::Result<Option<Command>> {
    match conn.recv_frame().await? {
        Some(frame) => Ok(Some(Command::decode(&frame)?)),
        None => Ok(None),
    }
}
