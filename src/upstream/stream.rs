//! A connection to an upstream, plain or TLS, behind one read/write interface.

use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::ClientTlsStream;

use crate::server::memory::MemoryStream;

pub enum UpstreamStream {
    Plain(TcpStream),
    /// The socket's descriptor is kept beside the TLS stream, which does not expose it.
    Tls(Box<ClientTlsStream<TcpStream>>, RawFd),
    /// A scripted upstream (`server::memory`, for the `connection` fuzz target).
    Memory(MemoryStream),
}

impl UpstreamStream {
    pub fn tls(stream: ClientTlsStream<TcpStream>, fd: RawFd) -> UpstreamStream {
        UpstreamStream::Tls(Box::new(stream), fd)
    }

    fn fd(&self) -> Option<RawFd> {
        match self {
            UpstreamStream::Plain(s) => Some(s.as_raw_fd()),
            UpstreamStream::Tls(_, fd) => Some(*fd),
            UpstreamStream::Memory(_) => None,
        }
    }

    /// True when nothing is waiting to be read: no bytes, no EOF, no error. An idle pooled
    /// connection with anything pending (a late or unrequested response, the upstream's close)
    /// must not carry another request, or that data would answer the wrong call.
    pub fn is_quiet(&self) -> bool {
        // A scripted upstream always has its next bytes or its end pending.
        let Some(fd) = self.fd() else { return false };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd, a zero timeout; the descriptor is owned by `self`.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 0
    }

    pub async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s, _) => s.read(buf).await,
            UpstreamStream::Memory(s) => s.read(buf).await,
        }
    }

    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write_all(buf).await,
            UpstreamStream::Tls(s, _) => s.write_all(buf).await,
            UpstreamStream::Memory(s) => s.write_all(buf).await,
        }
    }
}
