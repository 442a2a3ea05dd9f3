//! An in-memory transport: the whole connection state machine (head reading, routing, limits,
//! the call, the relay, keep-alive) driven without sockets, for the `connection` fuzz target.
//!
//! The client is a script of bytes delivered in pieces of a chosen size, then end of stream;
//! every upstream connection the proxy opens answers with the same scripted bytes and records
//! what it was sent. Reads and writes complete at once, so an exchange runs to its end without
//! waiting on a timer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::Canceller;
use monoio::BufResult;

use super::conn::serve_connection;
use super::worker::{ConnStop, Worker};
use super::Shared;
use crate::auth::KeyTable;
use crate::capture::{start_writer, Discard, WriterHandle};
use crate::config::Config;
use crate::pricing::PriceTable;
use crate::provider::Provider;
use crate::scan::Scanner;
use crate::upstream::{Connector, Resolver};

/// A scripted byte stream: reads return the script piece by piece, then end of stream; writes
/// are recorded.
pub struct MemoryStream {
    reads: VecDeque<Vec<u8>>,
    written: Rc<RefCell<Vec<u8>>>,
}

impl MemoryStream {
    /// A stream that delivers `input` in pieces of `piece` bytes; returns it and what is written
    /// to it.
    pub fn new(input: &[u8], piece: usize) -> (MemoryStream, Rc<RefCell<Vec<u8>>>) {
        let written = Rc::new(RefCell::new(Vec::new()));
        let reads = input.chunks(piece.max(1)).map(<[u8]>::to_vec).collect();
        (MemoryStream { reads, written: written.clone() }, written)
    }

    pub async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let room = buf.bytes_total();
        let Some(piece) = self.reads.front_mut() else { return (Ok(0), buf) };
        let n = piece.len().min(room);
        // SAFETY: `n` bytes fit in the buffer's writable room, which starts at `write_ptr`.
        unsafe {
            std::ptr::copy_nonoverlapping(piece.as_ptr(), buf.write_ptr(), n);
            buf.set_init(n);
        }
        piece.drain(..n);
        if piece.is_empty() {
            self.reads.pop_front();
        }
        (Ok(n), buf)
    }

    pub async fn write_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr` points at `bytes_init` initialized bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        self.written.borrow_mut().extend_from_slice(bytes);
        (Ok(bytes.len()), buf)
    }
}

/// What one exchange produced.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Every byte the proxy wrote to the client.
    pub client: Vec<u8>,
    /// What each upstream connection opened during the exchange was sent, in order.
    pub upstream: Vec<Vec<u8>>,
}

/// The upstream side of an exchange: the reply every new connection gives, and what each was
/// sent.
#[derive(Default)]
struct UpstreamScript {
    reply: Vec<u8>,
    piece: usize,
    sent: Vec<Rc<RefCell<Vec<u8>>>>,
}

/// A worker serving in-memory connections. Build it and run exchanges inside one monoio runtime
/// (with its timer enabled).
pub struct MemoryServer {
    worker: Rc<Worker>,
    script: Rc<RefCell<UpstreamScript>>,
    writer: Option<WriterHandle>,
}

impl MemoryServer {
    /// A server with `config` and `keys`; captures are discarded.
    pub fn new(config: Config, keys: KeyTable) -> Result<MemoryServer, String> {
        let tls = crate::upstream::tls_client_config(None)?;
        let (capture, writer) = start_writer(Discard, config.capture_channel_capacity).map_err(|e| e.to_string())?;
        let resolver = Arc::new(Resolver::fixed(&config.upstreams));
        let scanner = config.capture.scan.then(|| Arc::new(Scanner::new()));
        let shared = Arc::new(Shared {
            config,
            keys: Arc::new(arc_swap::ArcSwap::from_pointee(keys)),
            capture,
            tls: tls.clone(),
            resolver: resolver.clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
            pricing: Arc::new(PriceTable::builtin().clone()),
            scanner,
            reads: None,
        });
        let script = Rc::new(RefCell::new(UpstreamScript::default()));
        let source = script.clone();
        let open = move || {
            let mut s = source.borrow_mut();
            let (stream, sent) = MemoryStream::new(&s.reply, s.piece);
            s.sent.push(sent);
            stream
        };
        let connector = Connector::in_memory(tls, resolver, Box::new(open));
        let worker = Worker::new(0, shared, connector, Canceller::new().handle());
        Ok(MemoryServer { worker, script, writer: Some(writer) })
    }

    /// Serves one client connection: `client` delivered in pieces of `client_piece` bytes; every
    /// upstream connection answers `reply` in pieces of `reply_piece`. Connections pooled by an
    /// earlier exchange are dropped first.
    pub async fn exchange(&self, client: &[u8], client_piece: usize, reply: &[u8], reply_piece: usize) -> Exchange {
        for p in Provider::ALL {
            while self.worker.pool.take(p).is_some() {}
        }
        {
            let mut s = self.script.borrow_mut();
            s.reply = reply.to_vec();
            s.piece = reply_piece;
            s.sent.clear();
        }
        let (stream, written) = MemoryStream::new(client, client_piece);
        serve_connection(&self.worker, super::client::ClientStream::Memory(stream), &ConnStop::default()).await;
        let upstream = self.script.borrow().sent.iter().map(|s| s.borrow().clone()).collect();
        let client = written.borrow().clone();
        Exchange { client, upstream }
    }
}

/// A `MemoryServer` with its own runtime (epoll driver, timer on), for callers outside monoio.
pub struct MemoryHarness {
    runtime: monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>,
    server: MemoryServer,
}

impl MemoryHarness {
    pub fn new(config: Config, keys: KeyTable) -> Result<MemoryHarness, String> {
        let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        Ok(MemoryHarness { runtime, server: MemoryServer::new(config, keys)? })
    }

    /// `MemoryServer::exchange`, run to its end.
    pub fn exchange(&mut self, client: &[u8], client_piece: usize, reply: &[u8], reply_piece: usize) -> Exchange {
        let server = &self.server;
        self.runtime.block_on(server.exchange(client, client_piece, reply, reply_piece))
    }
}

impl Drop for MemoryServer {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            w.finish();
        }
    }
}
