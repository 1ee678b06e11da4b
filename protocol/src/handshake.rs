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

/// How long a client or worker waits for the TCP connection by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client or worker waits for the server's hello reply by
/// default.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The connect and hello timeouts of a client or worker
/// (`--connect-timeout`, `--hello-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the TCP connection.
    pub connect: Duration,
    /// For the server's hello reply.
    pub hello: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            hello: DEFAULT_HELLO_TIMEOUT,
        }
    }
}

/// Parses a timeout flag: positive seconds, fractions allowed (`10`, `0.5`),
/// at most a day.
pub fn parse_timeout_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400 (e.g. 10 or 0.5)"
        )),
    }
}

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
    /// No TCP connection within the connect timeout.
    #[error("cannot connect to {remote}: no connection within {}s (--connect-timeout)", timeout.as_secs_f64())]
    ConnectTimeout {
        /// The remote as given.
        remote: String,
        /// The limit.
        timeout: Duration,
    },
    /// Connected, but no hello reply within the hello timeout.
    #[error("{remote} accepted the connection but did not answer the hello within {}s (--hello-timeout); it is probably not a builder-server", timeout.as_secs_f64())]
    HelloTimeout {
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
/// `hello` and waits for the server's, each within its [`Timeouts`].
///
/// # Errors
///
/// See [`HandshakeError`].
pub async fn connect(
    remote: &str,
    hello: &Hello,
    max_frame: usize,
    timeouts: Timeouts,
) -> Result<(Connection<TcpStream>, ServerHello), HandshakeError> {
    let timeout = timeouts.connect;
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
            return Err(HandshakeError::ConnectTimeout {
                remote: remote.to_owned(),
                timeout,
            })
        }
    };
    let server = handshake(&mut conn, remote, hello, timeouts.hello).await?;
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
            return Err(HandshakeError::HelloTimeout {
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
        let got = handshake(&mut conn, "s", &hello, DEFAULT_HELLO_TIMEOUT)
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
        let err = handshake(
            &mut conn,
            "s",
            &Hello::client(None, "c"),
            DEFAULT_HELLO_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(matches!(&err, HandshakeError::Refused { reason } if reason == "bad token"));
        assert_eq!(err.to_string(), "server refused the connection: bad token");
    }

    #[tokio::test]
    async fn a_close_or_silence_is_not_a_refusal() {
        let (mut conn, _task) = server_side(None);
        let err = handshake(
            &mut conn,
            "s",
            &Hello::client(None, "c"),
            DEFAULT_HELLO_TIMEOUT,
        )
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
        assert!(matches!(err, HandshakeError::HelloTimeout { .. }), "{err}");
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
            Timeouts::default(),
        )
        .await
        else {
            panic!("connected to a closed port");
        };
        assert!(matches!(err, HandshakeError::Connect { .. }), "{err}");
        assert_eq!(err.to_string(), format!("cannot connect to {remote}"));
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_the_hello_times_out_with_a_hint() {
        // Accepts, then says nothing: not a builder-server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap().to_string();
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // Held open (not closed) until the test ends.
            std::future::pending::<()>().await;
            drop(stream);
        });
        let timeouts = Timeouts {
            connect: Duration::from_secs(10),
            hello: Duration::from_millis(200),
        };
        let Err(err) = connect(&remote, &Hello::client(None, "c"), 1024, timeouts).await else {
            panic!("a silent peer welcomed the hello");
        };
        assert!(
            matches!(err, HandshakeError::HelloTimeout { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&remote) && text.contains("probably not a builder-server"),
            "{text}"
        );
        accepting.abort();
    }

    #[test]
    fn timeout_flags_take_positive_seconds() {
        assert_eq!(parse_timeout_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout_secs("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "soon", "", "1e9", "NaN"] {
            assert!(parse_timeout_secs(bad).is_err(), "{bad}");
        }
    }
}
