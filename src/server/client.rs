//! The downstream connection: the client's socket and its read buffer.
//!
//! Invariant: `buf[start..]` holds bytes read from the client and not yet consumed; a parsed head
//! is a set of offsets from `start` and stays valid until `consume` is called. Reads append after
//! `buf.len()`; the buffer is compacted (unconsumed bytes moved to the front) only when it has no
//! room left, and grows only up to the head limit.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use monoio::BufResult;

use super::memory::MemoryStream;

/// Initial read buffer: holds a typical SDK request head and a small JSON body in one read.
pub const READ_BUF: usize = 16 * 1024;
/// After an error answer that leaves a request body unread, the proxy keeps reading (and
/// discarding) for this long before closing. Closing a socket with unread input sends a reset,
/// which can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// The client's transport: a socket, or the in-memory script the `connection` fuzz target drives.
pub enum ClientStream {
    Tcp(TcpStream),
    Memory(MemoryStream),
}

impl ClientStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Tcp(s) => s.read(buf).await,
            ClientStream::Memory(s) => s.read(buf).await,
        }
    }

    async fn cancelable_read<T: IoBufMut>(&mut self, buf: T, cancel: CancelHandle) -> BufResult<usize, T> {
        match self {
            ClientStream::Tcp(s) => s.cancelable_read(buf, cancel).await,
            ClientStream::Memory(s) => s.read(buf).await,
        }
    }

    async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Tcp(s) => s.write_all(buf).await,
            ClientStream::Memory(s) => s.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.shutdown().await,
            ClientStream::Memory(_) => Ok(()),
        }
    }
}

pub struct ClientConn {
    stream: ClientStream,
    buf: Vec<u8>,
    start: usize,
}

impl ClientConn {
    pub fn new(stream: ClientStream) -> ClientConn {
        ClientConn { stream, buf: Vec::with_capacity(READ_BUF), start: 0 }
    }

    /// Unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Waits for the next request on an idle connection: a read that ends at `idle` or when the
    /// worker's shutdown cancels it. A cancelled read still returns whatever it had received, so
    /// no request is lost to shutdown.
    pub async fn fill_idle(&mut self, idle: Duration, shutdown: CancelHandle) -> io::Result<usize> {
        self.make_room(READ_BUF)?;
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        match monoio::time::timeout(idle, self.stream.cancelable_read(buf.slice_mut(len..), shutdown)).await {
            Ok((res, slice)) => {
                self.buf = slice.into_inner();
                res
            }
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
        }
    }

    /// Reads more bytes, growing the buffer up to `max_len` if it is full. Returns 0 at EOF.
    pub async fn fill(&mut self, max_len: usize) -> io::Result<usize> {
        self.make_room(max_len)?;
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Ensures spare capacity: compacts consumed bytes away, then grows up to `max_len`.
    fn make_room(&mut self, max_len: usize) -> io::Result<()> {
        if self.buf.len() == self.buf.capacity() {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if self.buf.len() == self.buf.capacity() {
                let want = (self.buf.capacity() * 2).clamp(READ_BUF, max_len.max(READ_BUF));
                if want <= self.buf.len() {
                    return Err(io::Error::new(io::ErrorKind::OutOfMemory, "read buffer limit"));
                }
                self.buf.reserve_exact(want - self.buf.len());
            }
        }
        Ok(())
    }

    /// `fill` under a deadline; a timed-out read leaves the connection unusable (the read may
    /// still complete into a dropped buffer), so the caller must close it.
    pub async fn fill_within(&mut self, max_len: usize, limit: Duration) -> io::Result<usize> {
        match monoio::time::timeout(limit, self.fill(max_len)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client read timed out")),
        }
    }

    /// Writes `bytes` fully; returns the buffer for reuse.
    pub async fn write_all<T: IoBuf + 'static>(&mut self, bytes: T, limit: Duration) -> io::Result<T> {
        match monoio::time::timeout(limit, self.stream.write_all(bytes)).await {
            Ok((Ok(_), b)) => Ok(b),
            Ok((Err(e), _)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client write timed out")),
        }
    }

    /// Lends out the read buffer (for zero-copy relay of a slice of it) and takes it back.
    pub fn take_buf(&mut self) -> (Vec<u8>, usize) {
        (std::mem::take(&mut self.buf), self.start)
    }

    pub fn restore_buf(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// Half-closes, then drains what the client is still sending, bounded in time and bytes, so
    /// the last response is read before the connection goes.
    pub async fn linger_close(mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = std::time::Instant::now() + LINGER;
        let mut drained = 0;
        let mut buf = Vec::with_capacity(READ_BUF);
        while drained < LINGER_MAX_BYTES {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match monoio::time::timeout(left, self.stream.read(buf)).await {
                Ok((Ok(n), b)) if n > 0 => {
                    drained += n;
                    buf = b;
                    buf.clear();
                }
                _ => return,
            }
        }
    }

    /// Drops a large read buffer between requests so an idle keep-alive connection holds little
    /// memory.
    pub fn shrink_idle(&mut self) {
        if self.data().is_empty() && self.buf.capacity() > READ_BUF {
            self.buf = Vec::with_capacity(READ_BUF);
            self.start = 0;
        }
    }
}
