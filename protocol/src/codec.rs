//! Framing: every frame is an 8-byte big-endian length `N` followed by `N`
//! bytes of payload, one bincode-encoded message (see [`crate::message`]).
//!
//! The receiver's limit is checked against the header before a single byte of
//! the body is buffered, so a peer announcing a huge frame costs nothing: the
//! decoder fails with [`FrameError::TooLarge`] and the connection is closed.
//! Within the limit, memory is never reserved for an announced length: the
//! read buffer grows only as bytes arrive, by at most [`READ_CHUNK`] ahead
//! of them, so a peer that announces 16 MiB and sends 10 bytes holds less
//! than 100 KiB.
//! A connection that ends between frames is a clean end of stream; one that
//! ends inside a frame is [`FrameError::Truncated`].
//!
//! [`Connection`] wraps a socket in this codec and speaks typed messages. It
//! sets `TCP_NODELAY`, and a frame's header and body are written with one
//! buffer so they leave in one write.
//!
//! An idle connection holds almost no memory: the read buffer is let go
//! whenever it is empty after a frame (a decoded frame shares its
//! allocation, so keeping an empty tail would pin the whole last frame) and
//! replaced by [`IDLE_READ_CAPACITY`] bytes, enough for a small frame in one
//! read; the write buffer is let go after every flush. `Framed`'s own 8 KiB
//! buffers are dropped at once. Farms keep hundreds of workers and clients
//! connected and waiting; a malloc per frame costs far less than the
//! read or write it goes with.
//!
//! Frames of [`LARGE_FRAME`] bytes or more, read or written, are counted
//! ([`large_frames`]) so that a server can give their memory back to the
//! system once it is free (the allocator keeps freed memory otherwise).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The most [`Connection::linger_close`] reads and drops before it closes
/// anyway: what a peer may have in flight when it reads the last frame.
pub const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The default limit on a frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Artifacts and console are sent in pieces of at most this many bytes, well
/// below any sane frame limit.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// The most room the decoder reserves ahead of the bytes that arrived.
pub const READ_CHUNK: usize = 64 * 1024;

/// What an idle connection's read buffer holds: room for a small frame
/// (a heartbeat, a request) to arrive in one read.
pub const IDLE_READ_CAPACITY: usize = 512;

/// Frames at least this large are counted by [`large_frames`]: 1 MiB.
pub const LARGE_FRAME: usize = 1024 * 1024;

static LARGE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// How many frames of [`LARGE_FRAME`] bytes or more this process has read
/// or written. A change means large buffers were used and are, or soon
/// will be, free again.
pub fn large_frames() -> u64 {
    LARGE_FRAMES.load(Ordering::Relaxed)
}

/// Counts a frame's payload of `len` bytes if it is large.
fn count_frame(len: usize) {
    if len >= LARGE_FRAME {
        LARGE_FRAMES.fetch_add(1, Ordering::Relaxed);
    }
}

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
    /// A frame that had started did not complete in time.
    #[error("no complete frame within {0:?} of its first byte")]
    Stalled(Duration),
    /// The socket failed.
    #[error("i/o error")]
    Io(#[from] io::Error),
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
            // Room for the next read only, at most READ_CHUNK: the announced
            // length is the peer's word, the bytes that arrive are what
            // costs memory. (Reserving nothing makes the read loop grow the
            // buffer a few KiB at a time, copying it each time.)
            src.reserve((total - src.len()).min(READ_CHUNK));
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
    /// See [`Connection::set_frame_timeout`].
    frame_timeout: Option<Duration>,
    /// When the frame now in the read buffer was first seen there.
    partial_since: Option<tokio::time::Instant>,
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
        let mut framed = Framed::new(stream, FrameCodec::new(max_frame));
        *framed.read_buffer_mut() = BytesMut::with_capacity(IDLE_READ_CAPACITY);
        *framed.write_buffer_mut() = BytesMut::new();
        Connection {
            framed,
            peer,
            frame_timeout: None,
            partial_since: None,
        }
    }

    /// Lets go of the write buffer once everything in it is sent.
    fn release_write_buffer(&mut self) {
        if self.framed.write_buffer().is_empty() {
            *self.framed.write_buffer_mut() = BytesMut::new();
        }
    }

    /// Lets go of the read buffer if no byte of a next frame is in it.
    fn release_read_buffer(&mut self) {
        if self.framed.read_buffer().is_empty() {
            *self.framed.read_buffer_mut() = BytesMut::with_capacity(IDLE_READ_CAPACITY);
        }
    }

    /// Changes the limit on the payload of frames read and written from now
    /// on (a server raises it once the peer's hello is accepted).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        *self.framed.codec_mut() = FrameCodec::new(max_frame);
    }

    /// Limits how long a frame may take to arrive once its first byte has
    /// (`None`, the default: no limit). Waiting *between* frames is never
    /// limited. A frame that takes longer ends [`Connection::recv_frame`]
    /// with [`FrameError::Stalled`]; the frame's start is noticed within
    /// half the timeout, so a stalled peer is dropped after 1 to 1.5 times
    /// `timeout`.
    pub fn set_frame_timeout(&mut self, timeout: Option<Duration>) {
        self.frame_timeout = timeout;
        self.partial_since = None;
    }

    /// The other side's address, for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Encodes and sends one message, flushing it.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        let payload = message::encode(msg)?;
        count_frame(payload.len());
        self.framed.send(&payload[..]).await?;
        self.release_write_buffer();
        Ok(())
    }

    /// Sends one frame of raw payload, flushing it (for peers of another
    /// encoding, such as the reference's DER commands).
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        count_frame(payload.len());
        self.framed.send(payload).await?;
        self.release_write_buffer();
        Ok(())
    }

    /// Encodes and queues one message without flushing; call
    /// [`Connection::flush`] after a batch.
    pub async fn feed<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        let payload = message::encode(msg)?;
        count_frame(payload.len());
        self.framed.feed(&payload[..]).await?;
        Ok(())
    }

    /// Flushes queued messages.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        SinkExt::<&[u8]>::flush(&mut self.framed).await?;
        self.release_write_buffer();
        Ok(())
    }

    /// Receives one frame's payload; `None` when the peer closed the
    /// connection cleanly between frames. Cancel-safe (usable in `select!`).
    pub async fn recv_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        let frame = self.next_frame().await;
        if let Ok(Some(frame)) = &frame {
            count_frame(frame.len());
            self.release_read_buffer();
        }
        frame
    }

    async fn next_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        let Some(timeout) = self.frame_timeout else {
            return self.framed.next().await.transpose();
        };
        // Looks at the read buffer every half timeout: bytes there are a
        // frame that has started. (The state lives in `self`, so this stays
        // cancel-safe.)
        let every = (timeout / 2).max(Duration::from_millis(1));
        loop {
            tokio::select! {
                next = self.framed.next() => {
                    self.partial_since = None;
                    return next.transpose();
                }
                () = tokio::time::sleep(every) => {
                    if self.framed.read_buffer().is_empty() {
                        self.partial_since = None;
                    } else {
                        let since = *self.partial_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= timeout {
                            return Err(FrameError::Stalled(timeout));
                        }
                    }
                }
            }
        }
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

    /// Ends the connection without losing what was sent last: shuts the
    /// write side, then reads and drops whatever the peer still sends until
    /// it closes, `within` passes or [`LINGER_MAX_BYTES`] were dropped.
    /// Closing a socket that has unread input sends a reset, and a reset can
    /// destroy the last frame (the failure that says why) before the peer
    /// has read it; a peer that stops on that frame sends no more than what
    /// was already in flight.
    pub async fn linger_close(&mut self, within: Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = self.framed.get_mut();
        let drain = async {
            if stream.shutdown().await.is_err() {
                return;
            }
            // On the heap, and only now: a buffer in the future itself
            // would be carried by every connection for its whole life.
            let mut buf = vec![0u8; 8192];
            let mut dropped = 0;
            while let Ok(n) = stream.read(&mut buf).await {
                dropped += n;
                if n == 0 || dropped > LINGER_MAX_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
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
    fn a_big_announced_length_reserves_nothing() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut src = BytesMut::with_capacity(64);
        src.put_u64(DEFAULT_MAX_FRAME as u64);
        src.put_slice(b"only a few bytes");
        assert!(codec.decode(&mut src).unwrap().is_none());
        // The 16 MiB announced were not reserved: memory follows the bytes
        // that arrived, plus one read's room.
        assert!(
            src.capacity() <= 64 + READ_CHUNK,
            "capacity {}",
            src.capacity()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_buffers_what_arrived_not_what_was_announced() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut b = Connection::new(b, DEFAULT_MAX_FRAME, "b".into());
        a.write_all(&(DEFAULT_MAX_FRAME as u64).to_be_bytes())
            .await
            .unwrap();
        a.write_all(&[7u8; 100_000]).await.unwrap();
        // Reads everything written, then waits for the rest (paused time
        // moves on only once nothing is left to read).
        let read = tokio::time::timeout(Duration::from_secs(1), b.recv_frame()).await;
        assert!(read.is_err(), "the frame is not complete");
        let buffer = b.framed.read_buffer();
        assert_eq!(buffer.len(), HEADER_LEN + 100_000);
        assert!(
            buffer.capacity() <= 2 * (buffer.len() + READ_CHUNK),
            "capacity {} for {} bytes",
            buffer.capacity(),
            buffer.len()
        );
    }

    #[tokio::test]
    async fn an_idle_connection_lets_go_of_its_buffers() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut a = Connection::new(a, DEFAULT_MAX_FRAME, "a".into());
        let mut b = Connection::new(b, DEFAULT_MAX_FRAME, "b".into());
        assert!(b.framed.read_buffer().capacity() <= IDLE_READ_CAPACITY);
        assert_eq!(a.framed.write_buffer().capacity(), 0);
        let big = vec![7u8; 300_000];
        let (sent, received) = tokio::join!(a.send_frame(&big), b.recv_frame());
        sent.unwrap();
        let frame = received.unwrap().unwrap();
        assert_eq!(frame.len(), big.len());
        // The frame is the caller's; the connection keeps only room for the
        // next small frame, and nothing of what it wrote.
        assert!(
            b.framed.read_buffer().capacity() <= IDLE_READ_CAPACITY,
            "read buffer {}",
            b.framed.read_buffer().capacity()
        );
        assert_eq!(a.framed.write_buffer().capacity(), 0);
        // Frames queued back to back are all still read, whatever was let go.
        for n in [1usize, 10, 600, 70_000] {
            a.feed(&vec![n as u8; n]).await.unwrap();
        }
        a.flush().await.unwrap();
        assert_eq!(a.framed.write_buffer().capacity(), 0);
        for n in [1usize, 10, 600, 70_000] {
            let frame = b.recv_frame().await.unwrap().unwrap();
            let want: Vec<u8> = message::encode(&vec![n as u8; n]).unwrap();
            assert_eq!(&frame[..], &want[..], "frame of {n}");
        }
    }

    #[tokio::test]
    async fn large_frames_are_counted_both_ways() {
        let (a, b) = tokio::io::duplex(4 * LARGE_FRAME);
        let mut a = Connection::new(a, 2 * LARGE_FRAME, "a".into());
        let mut b = Connection::new(b, 2 * LARGE_FRAME, "b".into());
        // Other tests in this process send large frames too: only a rise
        // can be checked, and that a small frame alone does not count is
        // left to the code.
        let before = large_frames();
        a.send_frame(&vec![0; LARGE_FRAME]).await.unwrap();
        b.recv_frame().await.unwrap().unwrap();
        assert!(large_frames() >= before + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_is_dropped_but_idle_is_fine() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = Connection::new(b, 1024, "b".into());
        b.set_frame_timeout(Some(Duration::from_secs(10)));
        // Idle between frames for far longer than the timeout: fine.
        let idle = tokio::time::timeout(Duration::from_secs(100), b.recv_frame()).await;
        assert!(idle.is_err(), "still waiting");
        // Half a frame, then nothing.
        a.write_all(&100u64.to_be_bytes()).await.unwrap();
        a.write_all(b"half").await.unwrap();
        let started = tokio::time::Instant::now();
        let err = b.recv_frame().await.unwrap_err();
        assert!(matches!(err, FrameError::Stalled(_)), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took <= Duration::from_secs(16),
            "{took:?}"
        );
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
}
