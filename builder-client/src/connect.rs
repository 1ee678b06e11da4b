//! Talking to the server: connect, hello, one request, its answer(s).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use protocol::codec::{Connection, DEFAULT_MAX_FRAME};
use protocol::message::{ClientRequest, Hello, HelloReply, Role, ServerToClient};
use protocol::PROTOCOL_VERSION;
use tokio::net::TcpStream;

/// How long establishing the TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a one-shot request (everything but observe) may wait for its
/// answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment variable holding the client token.
pub const TOKEN_ENV: &str = "BUILDER_TOKEN";

/// A connection that has been welcomed by the server.
pub struct Session {
    conn: Connection<TcpStream>,
    remote: String,
}

impl Session {
    /// Connects to `remote`, sends the hello and waits for the welcome.
    ///
    /// # Errors
    /// `cannot connect to <remote>: ...` when the server is unreachable;
    /// `server refused the connection: <reason>` when it refuses the hello.
    pub async fn open(remote: &str, token: Option<String>) -> Result<Session> {
        tracing::debug!(remote, "connecting");
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(remote, DEFAULT_MAX_FRAME),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(anyhow!(e).context(format!("cannot connect to {remote}"))),
            Err(_) => bail!(
                "cannot connect to {remote}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let mut session = Session {
            conn,
            remote: remote.to_owned(),
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            token,
            software: format!("builder-client {}", env!("CARGO_PKG_VERSION")),
        };
        session
            .conn
            .send(&hello)
            .await
            .with_context(|| format!("sending the hello to {remote}"))?;
        let reply: Option<HelloReply> = session
            .conn
            .recv()
            .await
            .with_context(|| format!("reading the server's hello from {remote}"))?;
        match reply {
            None => bail!("{remote} closed the connection before answering the hello"),
            Some(HelloReply::Refused { reason }) => {
                bail!("server refused the connection: {reason}")
            }
            Some(HelloReply::Welcome(server)) => {
                tracing::debug!(
                    version = server.version,
                    software = %server.software,
                    "connected"
                );
            }
        }
        Ok(session)
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

/// The token to present: the first line of `token_file` if given, else the
/// `BUILDER_TOKEN` variable if set and not blank, else none.
///
/// # Errors
/// The token file cannot be read, or its first line is blank.
pub fn load_token(token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            bail!("token file {}: the first line is empty", path.display());
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
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
        ServerToClient::Notice { .. } => "Notice",
        ServerToClient::RecordStart { .. } => "RecordStart",
        ServerToClient::RecordChunk { .. } => "RecordChunk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret \t\nsecond line\n").unwrap();
        assert_eq!(load_token(Some(&path)).unwrap().as_deref(), Some("s3cret"));

        std::fs::write(&path, "\nsecond line\n").unwrap();
        let err = load_token(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("first line is empty"), "{err}");

        let missing = dir.path().join("missing");
        let err = format!("{:#}", load_token(Some(&missing)).unwrap_err());
        assert!(
            err.contains("cannot read token file") && err.contains("missing"),
            "{err}"
        );
    }
}
