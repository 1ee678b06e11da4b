//! Framing: every frame is an 8-byte big-endian length `N` followed by `N`
//! bytes of payload, one bincode-encoded message (see [`crate::message`]).
//!
//! The receiver's limit is checked against the header before a single byte of
//! the body is buffered, so a peer announcing a huge frame costs nothing: the
//! decoder fails with [`FrameError::TooLarge`] and the connection is closed.
//! A connection that ends between frames is a clean end of stream; one that
//! ends inside a frame is [`FrameError::Truncated`].
//!
//! [`Connection`] wraps a socket in this codec and speaks typed messages. It
//! sets `TCP_NODELAY`, and a frame's header and body are written with one
//! buffer so they leave in one write.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::message::{self, MessageError};

/// Size of the length header.
pub const HEADER_LEN: usize = 8;

/// The default limit on a frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Artifacts and console are sent in pieces of at most this many bytes, well
/// below any sane frame limit.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame's announced length is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or attempted) payload length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes received of the frame, header included.
        have: usize,
        /// Bytes the frame needs, header included (or just the header's 8).
        need: u64,
    },
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// How long a client or worker waits for the TCP connection by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client or worker waits for the server's hello reply by
/// default.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The connect and hello timeouts of a client or worker
/// (`--connect-timeout`, `--hello-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeTimeouts {
    /// For the TCP connection.
    pub connect: Duration,
    /// For the server's hello reply.
    pub hello: Duration,
}

impl Default for HandshakeTimeouts {
    fn default() -> Self {
        HandshakeTimeouts {
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

/// Why a connection to a server could not be set up in time.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The TCP connection failed (refused, unreachable, bad address...).
    #[error("cannot connect to {remote}")]
    Connect {
        /// The address as given.
        remote: String,
        /// What the socket said.
        #[source]
        source: io::Error,
    },
    /// No TCP connection within the connect timeout.
    #[error("cannot connect to {remote}: no connection within {}s (--connect-timeout)", timeout.as_secs_f64())]
    ConnectTimeout {
        /// The address as given.
        remote: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Connected, but no hello reply within the hello timeout.
    #[error("{remote} accepted the connection but did not answer the hello within {}s (--hello-timeout); it is probably not a builder-server", timeout.as_secs_f64())]
    HelloTimeout {
        /// The address as given.
        remote: String,
        /// The timeout that passed.
        timeout: Duration,
    },
}

/// [`Connection::connect`] giving up after `timeout`.
///
/// # Errors
/// [`HandshakeError::Connect`] or [`HandshakeError::ConnectTimeout`].
pub async fn connect_with_timeout(
    remote: &str,
    max_frame: usize,
    timeout: Duration,
) -> Result<Connection<TcpStream>, HandshakeError> {
    match tokio::time::timeout(timeout, Connection::connect(remote, max_frame)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(HandshakeError::Connect {
            remote: remote.to_owned(),
            source,
        }),
        Err(_) => Err(HandshakeError::ConnectTimeout {
            remote: remote.to_owned(),
            timeout,
        }),
    }
}

/// Runs `hello` (send the hello, read the reply) giving up after `timeout`
/// with [`HandshakeError::HelloTimeout`]: a peer that accepts but never
/// answers is most likely not a builder-server.
///
/// # Errors
/// [`HandshakeError::HelloTimeout`].
pub async fn hello_with_timeout<F: Future>(
    remote: &str,
    timeout: Duration,
    hello: F,
) -> Result<F::Output, HandshakeError> {
    tokio::time::timeout(timeout, hello)
        .await
        .map_err(|_| HandshakeError::HelloTimeout {
            remote: remote.to_owned(),
            timeout,
        })
}

/// The length-prefixed frame codec, with a limit on the payload size.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec refusing payloads longer than `max` bytes, in both directions.
    pub fn new(max: usize) -> FrameCodec {
        FrameCodec { max }
    }

    /// The payload limit.
    pub fn max_frame(&self) -> usize {
        self.max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&src[..HEADER_LEN]);
        let len = u64::from_be_bytes(header);
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        // Fits in usize: it is at most `max`.
        let len = len as usize;
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Reserve what this frame still needs (bounded by `max`), so the
            // read loop does not grow the buffer a few bytes at a time.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = if src.len() < HEADER_LEN {
                    HEADER_LEN as u64
                } else {
                    let mut header = [0u8; HEADER_LEN];
                    header.copy_from_slice(&src[..HEADER_LEN]);
                    HEADER_LEN as u64 + u64::from_be_bytes(header)
                };
                let have = src.len();
                src.clear();
                Err(FrameError::Truncated { have, need })
            }
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.len() > self.max {
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max: self.max,
            });
        }
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_u64(payload.len() as u64);
        dst.put_slice(payload);
        Ok(())
    }
}

/// Why a typed message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Framing failed (limit, truncation, socket error).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame did not hold the expected message.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// A framed connection that sends and receives typed messages.
pub struct Connection<S = TcpStream> {
    framed: Framed<S, FrameCodec>,
    peer: String,
}

impl Connection<TcpStream> {
    /// Wraps a TCP stream, enabling `TCP_NODELAY`.
    pub fn from_tcp(stream: TcpStream, max_frame: usize) -> io::Result<Connection<TcpStream>> {
        stream.set_nodelay(true)?;
        let peer = stream
            .peer_addr()
            .map(|a: SocketAddr| a.to_string())
            .unwrap_or_else(|_| "unknown peer".to_owned());
        Ok(Connection::new(stream, max_frame, peer))
    }

    /// Connects to `addr` (`host:port`, `1.2.3.4:port` or `[::1]:port`).
    pub async fn connect(addr: &str, max_frame: usize) -> io::Result<Connection<TcpStream>> {
        let stream = TcpStream::connect(addr).await?;
        Connection::from_tcp(stream, max_frame)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps any byte stream; `peer` names the other side in errors and logs.
    pub fn new(stream: S, max_frame: usize, peer: String) -> Connection<S> {
        Connection {
            framed: Framed::new(stream, FrameCodec::new(max_frame)),
            peer,
        }
    }

    /// The other side's address, for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Encodes and sends one message, flushing it.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        let payload = message::encode(msg)?;
        self.framed.send(&payload[..]).await?;
        Ok(())
    }

    /// Encodes and queues one message without flushing; call
    /// [`Connection::flush`] after a batch.
    pub async fn feed<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        let payload = message::encode(msg)?;
        self.framed.feed(&payload[..]).await?;
        Ok(())
    }

    /// Flushes queued messages.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        SinkExt::<&[u8]>::flush(&mut self.framed).await?;
        Ok(())
    }

    /// Receives one frame's payload; `None` when the peer closed the
    /// connection cleanly between frames. Cancel-safe (usable in `select!`).
    pub async fn recv_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        self.framed.next().await.transpose()
    }

    /// Receives and decodes one message; `None` on a clean end of stream.
    /// Cancel-safe (usable in `select!`).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectionError> {
        match self.recv_frame().await? {
            Some(frame) => Ok(Some(message::decode(&frame)?)),
            None => Ok(None),
        }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut S {
        self.framed.get_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new(1024).encode(payload, &mut buf).unwrap();
        buf
    }

    #[test]
    fn header_is_eight_bytes_big_endian() {
        let buf = frame(b"abc");
        assert_eq!(&buf[..], b"\0\0\0\0\0\0\0\x03abc");
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut all = frame(b"hello");
        all.extend_from_slice(&frame(b""));
        all.extend_from_slice(&frame(b"world!"));
        for cut in 0..all.len() {
            let mut codec = FrameCodec::new(1024);
            let mut src = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = codec.decode(&mut src).unwrap() {
                got.push(f.to_vec());
            }
            src.extend_from_slice(&all[cut..]);
            while let Some(f) = codec.decode_eof(&mut src).unwrap() {
                got.push(f.to_vec());
            }
            assert_eq!(got, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
        }
    }

    #[test]
    fn frame_one_byte_over_the_limit_is_refused_from_its_header() {
        let mut codec = FrameCodec::new(100);
        // Only the header: the body was never sent, so nothing was buffered.
        let mut src = BytesMut::from(&101u64.to_be_bytes()[..]);
        let err = codec.decode(&mut src).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 101, max: 100 }));
        // The buffer did not grow to hold the announced body.
        assert!(src.capacity() < 100, "capacity {}", src.capacity());
        // Exactly at the limit is fine.
        let mut src = BytesMut::from(&100u64.to_be_bytes()[..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn huge_announced_length_is_refused_without_allocating() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut src = BytesMut::from(&u64::MAX.to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(FrameError::TooLarge { len: u64::MAX, .. })
        ));
    }

    #[test]
    fn encoder_refuses_oversized_payloads() {
        let mut buf = BytesMut::new();
        let err = FrameCodec::new(4)
            .encode(&b"12345"[..], &mut buf)
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 5, max: 4 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn clean_eof_is_not_an_error_but_truncation_is() {
        let mut codec = FrameCodec::new(1024);
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());

        let whole = frame(b"payload");
        for cut in 1..whole.len() {
            let mut src = BytesMut::from(&whole[..cut]);
            let err = codec.decode_eof(&mut src).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { have, .. } if have == cut),
                "cut {cut}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn connection_round_trip_and_clean_close() {
        let (a, b) = tokio::io::duplex(64);
        let mut a = Connection::new(a, 1024, "a".into());
        let mut b = Connection::new(b, 1024, "b".into());
        let writer = tokio::spawn(async move {
            a.send(&crate::message::ClientRequest::Info).await.unwrap();
            a.send(&"a string".to_owned()).await.unwrap();
        });
        let got: crate::message::ClientRequest = b.recv().await.unwrap().unwrap();
        assert_eq!(got, crate::message::ClientRequest::Info);
        let got: String = b.recv().await.unwrap().unwrap();
        assert_eq!(got, "a string");
        writer.await.unwrap();
        assert!(b.recv::<String>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_frame_on_a_connection_is_an_error() {
        let (a, b) = tokio::io::duplex(64);
        let mut a = Connection::new(a, 1 << 20, "a".into());
        let mut b = Connection::new(b, 16, "b".into());
        tokio::spawn(async move { a.send(&vec![7u8; 100]).await });
        let err = b.recv::<Vec<u8>>().await.unwrap_err();
        assert!(matches!(
            err,
            ConnectionError::Frame(FrameError::TooLarge { max: 16, .. })
        ));
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
        let mut conn = connect_with_timeout(&remote, 1024, Duration::from_secs(10))
            .await
            .expect("the listener accepts");
        let err = hello_with_timeout(&remote, Duration::from_millis(200), async {
            conn.send(&"hello").await.unwrap();
            conn.recv::<String>().await
        })
        .await
        .unwrap_err();
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

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error_naming_the_address() {
        // Bound then dropped: nothing listens there now.
        let remote = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let Err(err) = connect_with_timeout(&remote, 1024, Duration::from_secs(10)).await else {
            panic!("connected to a closed port");
        };
        match &err {
            HandshakeError::Connect { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("expected a refused connection, got {other:?}"),
        }
        assert!(err.to_string().contains(&remote), "{err}");
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
