//! The connecting side of the hello (clients, workers, the benchmark), and
//! where a server is by default.
//!
//! [`connect`] opens a TCP connection, sends a [`Hello`] and returns the
//! server's [`ServerHello`], or a [`HandshakeError`] saying what went wrong;
//! a refusal is [`HandshakeError::Refused`] with the server's reason, so a
//! worker can tell a final refusal (bad token, other protocol version,
//! dropped platform) from a server that is merely away. The server's side of
//! the hello lives in builder-server.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::codec::{Connection, ConnectionError};
use crate::message::{Hello, HelloReply, Role, ServerHello};
use crate::PROTOCOL_VERSION;

/// The port a server listens on by default (the reference's).
pub const DEFAULT_PORT: u16 = 1234;

/// Where clients and workers look for the server when neither `-r` nor
/// `BUILDER_REMOTE` is given: `127.0.0.1:`[`DEFAULT_PORT`].
pub const DEFAULT_REMOTE: &str = "127.0.0.1:1234";

/// How long a connection attempt and the hello may each take by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl Hello {
    /// A client's hello for this protocol version.
    pub fn client(token: Option<String>, software: impl Into<String>) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            token,
            software: software.into(),
        }
    }

    /// A worker's hello for this protocol version.
    pub fn worker(
        platform: impl Into<String>,
        host: impl Into<String>,
        token: Option<String>,
        software: impl Into<String>,
    ) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role: Role::Worker {
                platform: platform.into(),
                host: host.into(),
            },
            token,
            software: software.into(),
        }
    }
}

/// Why a connection was not welcomed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The TCP connection failed (refused, unreachable, unknown host).
    #[error("cannot connect to {remote}")]
    Connect {
        /// The remote as given.
        remote: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection or the hello took too long.
    #[error("no answer from {remote} within {}s", timeout.as_secs_f64())]
    Timeout {
        /// The remote as given.
        remote: String,
        /// The limit.
        timeout: Duration,
    },
    /// The hello could not be sent, or the reply could not be read.
    #[error("the hello exchange with {remote} failed")]
    Exchange {
        /// The remote as given.
        remote: String,
        /// Why.
        #[source]
        source: ConnectionError,
    },
    /// The server closed the connection without answering the hello.
    #[error("{remote} closed the connection before answering the hello")]
    Closed {
        /// The remote as given.
        remote: String,
    },
    /// The server refused the hello and said why. Final: retrying with the
    /// same hello gets the same answer.
    #[error("server refused the connection: {reason}")]
    Refused {
        /// The server's reason.
        reason: String,
    },
}

/// Connects to `remote` (`host:port`, `1.2.3.4:port`, `[::1]:port`), sends
/// `hello` and waits for the server's; the connection and the exchange may
/// each take `timeout`.
///
/// # Errors
///
/// See [`HandshakeError`].
pub async fn connect(
    remote: &str,
    hello: &Hello,
    max_frame: usize,
    timeout: Duration,
) -> Result<(Connection<TcpStream>, ServerHello), HandshakeError> {
    let mut conn = match tokio::time::timeout(timeout, Connection::connect(remote, max_frame)).await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(source)) => {
            return Err(HandshakeError::Connect {
                remote: remote.to_owned(),
                source,
            })
        }
        Err(_) => {
            return Err(HandshakeError::Timeout {
                remote: remote.to_owned(),
                timeout,
            })
        }
    };
    let server = handshake(&mut conn, remote, hello, timeout).await?;
    Ok((conn, server))
}

/// Sends `hello` on an open connection and waits up to `timeout` for the
/// server's answer; `remote` names the server in errors.
///
/// # Errors
///
/// See [`HandshakeError`].
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    remote: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<ServerHello, HandshakeError> {
    let exchange = async {
        conn.send(hello).await?;
        conn.recv::<HelloReply>().await
    };
    let reply = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(source)) => {
            return Err(HandshakeError::Exchange {
                remote: remote.to_owned(),
                source,
            })
        }
        Err(_) => {
            return Err(HandshakeError::Timeout {
                remote: remote.to_owned(),
                timeout,
            })
        }
    };
    match reply {
        Some(HelloReply::Welcome(server)) => Ok(server),
        Some(HelloReply::Refused { reason }) => Err(HandshakeError::Refused { reason }),
        None => Err(HandshakeError::Closed {
            remote: remote.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DEFAULT_MAX_FRAME;

    #[test]
    fn the_default_remote_uses_the_default_port() {
        let addr: std::net::SocketAddr = DEFAULT_REMOTE.parse().unwrap();
        assert_eq!(addr.port(), DEFAULT_PORT);
        assert!(addr.ip().is_loopback());
    }

    fn server_side(
        reply: Option<HelloReply>,
    ) -> (
        Connection<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Hello>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move {
            let mut server = Connection::new(b, DEFAULT_MAX_FRAME, "client".into());
            let hello: Hello = server.recv().await.unwrap().unwrap();
            if let Some(reply) = reply {
                server.send(&reply).await.unwrap();
            }
            hello
        });
        (Connection::new(a, DEFAULT_MAX_FRAME, "server".into()), task)
    }

    #[tokio::test]
    async fn welcome_returns_the_server_hello() {
        let welcome = ServerHello {
            version: PROTOCOL_VERSION,
            software: "test".into(),
            heartbeat_ms: 7,
        };
        let (mut conn, task) = server_side(Some(HelloReply::Welcome(welcome.clone())));
        let hello = Hello::worker("linux", "h", Some("t".into()), "w");
        let got = handshake(&mut conn, "s", &hello, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(got, welcome);
        let sent = task.await.unwrap();
        assert_eq!(sent, hello);
        assert_eq!(sent.version, PROTOCOL_VERSION);
    }

    #[tokio::test]
    async fn a_refusal_is_typed_and_carries_the_reason() {
        let (mut conn, _task) = server_side(Some(HelloReply::Refused {
            reason: "bad token".into(),
        }));
        let err = handshake(&mut conn, "s", &Hello::client(None, "c"), HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(&err, HandshakeError::Refused { reason } if reason == "bad token"));
        assert_eq!(err.to_string(), "server refused the connection: bad token");
    }

    #[tokio::test]
    async fn a_close_or_silence_is_not_a_refusal() {
        let (mut conn, _task) = server_side(None);
        let err = handshake(&mut conn, "s", &Hello::client(None, "c"), HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Closed { .. }), "{err}");

        let (a, _b) = tokio::io::duplex(4096);
        let mut conn = Connection::new(a, DEFAULT_MAX_FRAME, "s".into());
        let err = handshake(
            &mut conn,
            "s",
            &Hello::client(None, "c"),
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_names_the_remote_once() {
        // A port that was just free: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let remote = format!("127.0.0.1:{port}");
        let Err(err) = connect(
            &remote,
            &Hello::client(None, "c"),
            DEFAULT_MAX_FRAME,
            HANDSHAKE_TIMEOUT,
        )
        .await
        else {
            panic!("connected to a closed port");
        };
        assert!(matches!(err, HandshakeError::Connect { .. }), "{err}");
        assert_eq!(err.to_string(), format!("cannot connect to {remote}"));
    }
}
