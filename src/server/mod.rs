//! The running proxy: worker threads, the capture writer, the key watcher, and shutdown.
//!
//! - `runtime`: listeners (SO_REUSEPORT, one per worker), worker threads and driver choice.
//! - `worker`: one worker's accept loop and draining at shutdown.
//! - `conn`: the life of a client connection: heads, routing, local answers, keep-alive.
//! - `call`: one proxied call, phase by phase, and the record it leaves.
//! - `client`: the client socket and its read buffer.

pub mod call;
pub mod client;
pub mod conn;
pub mod memory;
pub mod runtime;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustls::ClientConfig;

use crate::api::reader::ReaderThreads;
use crate::api::Readers;
use crate::auth::store::watch_keys;
use crate::auth::{KeyStore, SharedKeys};
use crate::capture::{start_writer, CaptureSender, CaptureStats, RecordSink, WriterHandle};
use crate::config::Config;
use crate::pricing::PriceTable;
use crate::scan::Scanner;
use crate::upstream::{start_resolver, Resolver};

/// What every worker reads: resolved config, key table, capture channel, TLS config, and the
/// shutdown flag.
pub struct Shared {
    pub config: Config,
    pub keys: SharedKeys,
    pub capture: CaptureSender,
    pub tls: Arc<ClientConfig>,
    pub resolver: Arc<Resolver>,
    pub shutdown: Arc<AtomicBool>,
    /// Prices for the cost of each call.
    pub pricing: Arc<PriceTable>,
    /// The security scanner (compiled once); None when scanning is off.
    pub scanner: Option<Arc<Scanner>>,
    /// The read API's reader threads; none when the server records into something other than
    /// the RocksDB store (the read API then answers 503).
    pub reads: Option<Readers>,
}

/// A started server. `shutdown` stops accepting, lets in-flight calls finish (bounded by the
/// grace period), then drains the capture channel into the store.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub driver: runtime::Driver,
    shared: Option<Arc<Shared>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<WriterHandle>,
    key_watcher: Option<JoinHandle<()>>,
    resolver: Option<JoinHandle<()>>,
    readers: Option<ReaderThreads>,
    stats: Arc<CaptureStats>,
}

impl ServerHandle {
    pub fn capture_stats(&self) -> &Arc<CaptureStats> {
        &self.stats
    }

    /// Reloads the key table now, rather than at the watcher's next look.
    pub fn reload_keys(&self) -> std::io::Result<()> {
        if let Some(shared) = &self.shared {
            shared.keys.store(Arc::new(KeyStore::new(&shared.config.data_dir).load()?));
        }
        Ok(())
    }

    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        // Every worker has ended its connections; the writer drains what they queued. The
        // readers and the writer hold the store open until they end.
        self.shared.take();
        if let Some(readers) = self.readers.take() {
            readers.finish();
        }
        if let Some(writer) = self.writer.take() {
            writer.finish();
        }
        if let Some(k) = self.key_watcher.take() {
            let _ = k.join();
        }
        if let Some(r) = self.resolver.take() {
            let _ = r.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Starts the workers with `sink` as the capture store (the read API answers 503: no store).
pub fn start_with_sink(config: Config, sink: impl RecordSink) -> Result<ServerHandle, String> {
    let listeners = runtime::bind_listeners(config.listen, config.workers)?;
    launch(config, listeners, sink, None)
}

/// Starts the server with the RocksDB store in the data dir.
#[cfg(feature = "store")]
pub fn start(config: Config) -> Result<ServerHandle, String> {
    // Bind first: a taken port should fail before anything is opened or started.
    let listeners = runtime::bind_listeners(config.listen, config.workers)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("data dir {}: {e}", config.data_dir.display()))?;
    if !config.capture.store {
        tracing::warn!("--no-capture: records are discarded, not stored");
        return launch(config, listeners, crate::capture::Discard, None);
    }
    let store = Arc::new(crate::capture::store::Store::open(&config.data_dir)?);
    let readers = crate::api::reader::start_readers(store.clone(), crate::api::reader::READER_THREADS)
        .map_err(|e| format!("reader threads: {e}"))?;
    let sink =
        crate::capture::store::StoreWriter::new(store, config.capture.durability).with_expiry(config.capture.expiry);
    launch(config, listeners, sink, Some(readers))
}

fn launch(
    config: Config,
    listeners: Vec<std::net::TcpListener>,
    sink: impl RecordSink,
    readers: Option<(Readers, ReaderThreads)>,
) -> Result<ServerHandle, String> {
    // Everything that can fail on bad settings runs before any thread starts.
    let driver = runtime::choose_driver(config.driver)?;
    let tls = crate::upstream::tls_client_config(config.upstream_ca.as_deref())?;
    let pricing = Arc::new(match &config.capture.pricing_file {
        Some(path) => PriceTable::load(path).map_err(|e| format!("price file: {e}"))?,
        None => PriceTable::builtin().clone(),
    });
    let addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let (keys, key_watcher) =
        watch_keys(KeyStore::new(&config.data_dir), stop.clone()).map_err(|e| format!("key file: {e}"))?;
    // Threads already started see `stop` and end by themselves if a later step fails.
    let stop_on_error = |e: std::io::Error| {
        stop.store(true, Ordering::Relaxed);
        e.to_string()
    };
    let (resolver, resolver_thread) = start_resolver(&config.upstreams, stop.clone()).map_err(stop_on_error)?;
    let (capture, writer) = start_writer(sink, config.capture_channel_capacity).map_err(stop_on_error)?;
    let stats = capture.stats().clone();
    let (reads, reader_threads) = match readers {
        Some((r, threads)) => (Some(r), Some(threads)),
        None => (None, None),
    };
    let scanner = config.capture.scan.then(|| Arc::new(Scanner::new()));
    let shared =
        Arc::new(Shared { config, keys, capture, tls, resolver, shutdown: stop.clone(), pricing, scanner, reads });
    let mut handle = ServerHandle {
        addr,
        driver,
        shared: Some(shared.clone()),
        stop,
        workers: Vec::new(),
        writer: Some(writer),
        key_watcher: Some(key_watcher),
        resolver: Some(resolver_thread),
        readers: reader_threads,
        stats,
    };
    // On failure, dropping `handle` stops and joins whatever did start.
    handle.workers = runtime::spawn_workers(driver, listeners, &shared)?;
    Ok(handle)
}
