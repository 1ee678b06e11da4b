//! Talking to the server: connect, hello, one request, its answer(s).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::handshake;
use protocol::message::{ClientRequest, Hello, ServerToClient};
use tokio::net::TcpStream;

/// How long a one-shot request (everything but observe) may wait for its
/// answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection that has been welcomed by the server.
pub struct Session {
    conn: Connection<TcpStream>,
    remote: String,
}

impl Session {
    /// Connects to `remote`, sends the hello and waits for the welcome.
    ///
    /// # Errors
    /// `cannot connect to <remote>` when the server is unreachable or does
    /// not accept within `timeouts.connect`; `... probably not a
    /// builder-server` when it does not answer the hello in time;
    /// `server refused the connection: <reason>` when it refuses the hello
    /// (see [`protocol::handshake::HandshakeError`]), followed by how to
    /// give a token when none was sent and the refusal is about it.
    pub async fn open(
        remote: &str,
        token: Option<String>,
        timeouts: handshake::Timeouts,
    ) -> Result<Session> {
        tracing::debug!(remote, "connecting");
        let token_sent = token.is_some();
        let hello = Hello::client(
            token,
            format!("builder-client {}", env!("CARGO_PKG_VERSION")),
        );
        let (conn, server) = handshake::connect(remote, &hello, DEFAULT_MAX_FRAME, timeouts)
            .await
            .map_err(|e| with_token_hint(e, token_sent))?;
        tracing::debug!(
            version = server.version,
            software = %server.software,
            "connected"
        );
        Ok(Session {
            conn,
            remote: remote.to_owned(),
        })
    }

    /// Sends one request.
    pub async fn send(&mut self, request: &ClientRequest) -> Result<()> {
        tracing::debug!(?request, "sending");
        self.conn
            .send(request)
            .await
            .with_context(|| format!("sending the request to {}", self.remote))
    }

    /// [`Session::recv`] giving up after [`ANSWER_TIMEOUT`].
    pub async fn recv_answer(&mut self, waiting: &str) -> Result<ServerToClient> {
        match tokio::time::timeout(ANSWER_TIMEOUT, self.recv(waiting)).await {
            Ok(answer) => answer,
            Err(_) => bail!(
                "{} did not answer within {}s",
                self.remote,
                ANSWER_TIMEOUT.as_secs()
            ),
        }
    }

    /// Reads the next answer; a connection closed instead is an error whose
    /// message says what was still expected (`waiting` completes "the
    /// connection closed before ...").
    pub async fn recv(&mut self, waiting: &str) -> Result<ServerToClient> {
        match self.conn.recv().await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => bail!("{} closed the connection before {waiting}", self.remote),
            Err(e) => Err(anyhow!(e).context(format!(
                "reading the answer from {} (expected {waiting})",
                self.remote
            ))),
        }
    }
}

/// A refused hello that carried no token says how to give one.
fn with_token_hint(err: handshake::HandshakeError, token_sent: bool) -> anyhow::Error {
    if let handshake::HandshakeError::Refused { reason } = &err {
        if let Some(hint) = protocol::token::refusal_hint(reason, token_sent) {
            return anyhow!("{err}; {hint}");
        }
    }
    err.into()
}

/// The short name of an answer, for "unexpected answer" errors.
pub fn answer_name(msg: &ServerToClient) -> &'static str {
    match msg {
        ServerToClient::Success { .. } => "Success",
        ServerToClient::Failure { .. } => "Failure",
        ServerToClient::Info(_) => "Info",
        ServerToClient::Results(_) => "Results",
        ServerToClient::ObserveStart(_) => "ObserveStart",
        ServerToClient::Console(_) => "Console",
        ServerToClient::Dropped { .. } => "Dropped",
        ServerToClient::ObserveEnd { .. } => "ObserveEnd",
        ServerToClient::InfoPart(_) => "InfoPart",
        ServerToClient::InfoEnd { .. } => "InfoEnd",
        ServerToClient::Job(_) => "Job",
        ServerToClient::Notice { .. } => "Notice",
        ServerToClient::RecordStart { .. } => "RecordStart",
        ServerToClient::RecordChunk { .. } => "RecordChunk",
        ServerToClient::ResultList(_) => "ResultList",
    }
}
