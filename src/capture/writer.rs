//! The path from a worker to the store: a bounded crossbeam channel and one writer thread.
//!
//! A worker never blocks its thread on capture: `CaptureSender::send` tries the channel and, when
//! it is full, parks only the calling connection on a short timer and tries again (each such wait
//! counts in `CaptureStats::full_waits`). It never drops a record. The sender encodes the record
//! first, on the worker's thread (`Encoded`): the one writer thread only builds batches.
//!
//! Batching: the writer takes whatever is queued, up to `MAX_BATCH` records, and writes it as one
//! batch. It does not wait to fill a batch: while one batch is written (and, under `sync`,
//! fsynced) the next queues up, so batches grow with the load (group commit) and an idle proxy
//! writes each record at once. When every sender is gone, or when told to finish, it drains the
//! channel and returns.
//!
//! Durability (`capture.durability`, `--durability`):
//! - `sync`: every batch is fsynced (WAL) before the next is taken. A crash of the process or of
//!   the machine loses only records not yet in a written batch: those still in the channel and
//!   the batch being written (calls whose answers had already been sent).
//! - `async` (default): the WAL is written without fsync. A crash of the process loses the same
//!   as `sync`; a crash of the machine (power, kernel) can also lose the batches the OS had not
//!   yet flushed to disk, typically the last few seconds.
//! - Either way, a clean shutdown (SIGTERM/SIGINT) writes everything queued and syncs: nothing
//!   is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use super::record::{CallRecord, Encoded};

/// Records per write batch: large enough to amortize a WAL write under load, small enough that
/// one batch is a few hundred KiB.
const MAX_BATCH: usize = 512;
/// After a batch smaller than `MAX_BATCH / 4`, the writer lets records gather this long before
/// taking the next. A writer blocked on the channel must be woken by every record sent (a
/// syscall for the worker, and a context switch on a shared core); one that is collecting need
/// not be. Under moderate load this turns a wake per record into a batch per millisecond, at
/// the price of records reaching the store up to this much later.
const COLLECT: Duration = Duration::from_millis(1);
/// How often an idle writer checks whether it was told to finish.
const FINISH_POLL: Duration = Duration::from_millis(50);
/// Back-off bounds while the channel is full.
const FULL_WAIT_MIN: Duration = Duration::from_micros(200);
const FULL_WAIT_MAX: Duration = Duration::from_millis(20);

/// How hard a written batch is made durable; see the module documentation for what each loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the WAL with every batch.
    Sync,
    /// Write the WAL without fsync.
    #[default]
    Async,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "sync" => Some(Durability::Sync),
            "async" => Some(Durability::Async),
            _ => None,
        }
    }
}

/// Retention in time: what goes once a call is older than `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub after: Duration,
    pub scope: ExpiryScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryScope {
    /// The request, response and tool content; the call's metadata stays.
    Content,
    /// The whole call record (session and agent totals keep counting it).
    Records,
}

impl ExpiryScope {
    pub fn parse(s: &str) -> Option<ExpiryScope> {
        match s {
            "content" => Some(ExpiryScope::Content),
            "records" => Some(ExpiryScope::Records),
            _ => None,
        }
    }
}

/// Where batches go: RocksDB in the server, memory in tests.
pub trait RecordSink: Send + 'static {
    fn write_batch(&mut self, records: &[Encoded]) -> std::io::Result<()>;

    /// Whether the sink keeps the records' bytes; when it does not, senders skip encoding them.
    fn keeps_records(&self) -> bool {
        true
    }

    /// Called between batches and when idle (at least every `FINISH_POLL`): room for background
    /// work that must run on the thread that owns the store, such as retention.
    fn tick(&mut self) {}
}

/// A sink that keeps nothing (`--no-capture`): records are still built and pass through the
/// channel and the writer thread, unencoded, so the encoding and the store's cost are left out.
pub struct Discard;

impl RecordSink for Discard {
    fn write_batch(&mut self, _records: &[Encoded]) -> std::io::Result<()> {
        Ok(())
    }

    fn keeps_records(&self) -> bool {
        false
    }
}

/// Counters shared by the senders and the writer.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Records accepted by the writer and written.
    pub written: AtomicU64,
    /// Times a sender found the channel full and had to wait.
    pub full_waits: AtomicU64,
    /// Batches that failed to write (retried until they succeed).
    pub write_errors: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
}

#[derive(Clone)]
pub struct CaptureSender {
    tx: Sender<Encoded>,
    stats: Arc<CaptureStats>,
    encode: bool,
}

impl CaptureSender {
    /// Encodes a record (on the calling worker's thread) and hands it to the writer, waiting
    /// (asynchronously, on the monoio timer) while the channel is full.
    pub async fn send(&self, record: CallRecord) {
        let record = if self.encode { Encoded::new(record) } else { Encoded::unencoded(record) };
        match self.tx.try_send(record) {
            Ok(()) => {}
            // Boxed: the timer a wait needs is several hundred bytes, which every caller's state
            // would otherwise carry (and move) on every call for a wait that seldom happens.
            Err(TrySendError::Full(r)) => Box::pin(self.wait_for_room(r)).await,
            Err(TrySendError::Disconnected(r)) => lost(&r),
        }
    }

    /// The channel is full: tries again after a back-off, until the writer has made room.
    async fn wait_for_room(&self, mut record: Encoded) {
        let mut wait = FULL_WAIT_MIN;
        loop {
            self.stats.full_waits.fetch_add(1, Ordering::Relaxed);
            monoio::time::sleep(wait).await;
            wait = (wait * 2).min(FULL_WAIT_MAX);
            match self.tx.try_send(record) {
                Ok(()) => return,
                Err(TrySendError::Full(r)) => record = r,
                Err(TrySendError::Disconnected(r)) => return lost(&r),
            }
        }
    }

    pub fn stats(&self) -> &Arc<CaptureStats> {
        &self.stats
    }
}

/// Only possible if the writer thread died; says so rather than lose the record quietly.
fn lost(record: &Encoded) {
    tracing::error!(id = %record.id, "capture writer is gone; record lost");
}

/// The writer thread, to be finished at shutdown.
pub struct WriterHandle {
    thread: JoinHandle<()>,
    finish: Arc<AtomicBool>,
}

impl WriterHandle {
    /// Writes everything already queued, then ends the thread. Senders still alive after this
    /// (a connection that outlived its worker) can no longer be served.
    pub fn finish(self) {
        self.finish.store(true, Ordering::Release);
        if self.thread.join().is_err() {
            tracing::error!("the capture writer panicked");
        }
    }
}

/// Starts the writer thread. It ends when every `CaptureSender` clone has been dropped, or when
/// `WriterHandle::finish` is called, after draining the channel either way.
pub fn start_writer(mut sink: impl RecordSink, capacity: usize) -> std::io::Result<(CaptureSender, WriterHandle)> {
    let (tx, rx) = bounded::<Encoded>(capacity);
    let encode = sink.keeps_records();
    let stats = Arc::new(CaptureStats::default());
    let finish = Arc::new(AtomicBool::new(false));
    let (writer_stats, writer_finish) = (stats.clone(), finish.clone());
    let thread = std::thread::Builder::new().name("kurral-capture".into()).spawn(move || {
        lower_priority();
        run_writer(&rx, &mut sink, &writer_stats, &writer_finish)
    })?;
    Ok((CaptureSender { tx, stats, encode }, WriterHandle { thread, finish }))
}

/// Nice value of the writer thread. Workers relay bytes someone is waiting for; the writer's
/// records can wait a few milliseconds. Where they share a core, the scheduler then lets a
/// worker run as soon as it has work instead of after the writer's batch. A writer starved under
/// overload only fills the channel, which makes the calls wait: nothing is lost.
const WRITER_NICE: libc::c_int = 10;

fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread only; no memory is passed.
    let done = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, WRITER_NICE)
    };
    if done != 0 {
        tracing::debug!("capture writer keeps its priority: {}", std::io::Error::last_os_error());
    }
}

fn run_writer(rx: &Receiver<Encoded>, sink: &mut dyn RecordSink, stats: &CaptureStats, finish: &AtomicBool) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = match rx.recv_timeout(FINISH_POLL) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if finish.load(Ordering::Acquire) => return,
            Err(RecvTimeoutError::Timeout) => {
                sink.tick();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut retry = Duration::from_millis(10);
        while let Err(e) = sink.write_batch(&batch) {
            // A failing disk must not lose records: keep them and retry. Senders wait meanwhile
            // because the channel fills.
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("capture write failed, retrying: {e}");
            std::thread::sleep(retry);
            retry = (retry * 2).min(Duration::from_secs(1));
        }
        stats.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let small = batch.len() < MAX_BATCH / 4;
        batch.clear();
        sink.tick();
        if small && !finish.load(Ordering::Acquire) {
            std::thread::sleep(COLLECT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::record::sample;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct MemSink {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        fail_first: Arc<AtomicU64>,
        delay: Duration,
    }

    impl RecordSink for MemSink {
        fn write_batch(&mut self, records: &[Encoded]) -> std::io::Result<()> {
            std::thread::sleep(self.delay);
            if self.fail_first.load(Ordering::Relaxed) > 0 {
                self.fail_first.fetch_sub(1, Ordering::Relaxed);
                return Err(std::io::Error::other("disk full"));
            }
            self.batches.lock().unwrap().push(records.iter().map(|r| r.id.clone()).collect());
            Ok(())
        }
    }

    #[test]
    fn a_full_channel_waits_and_nothing_is_lost() {
        let sink = MemSink { delay: Duration::from_millis(5), ..Default::default() };
        sink.fail_first.store(2, Ordering::Relaxed);
        let (tx, handle) = start_writer(sink.clone(), 4).unwrap();
        let stats = tx.stats().clone();
        let n = 300;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..n {
                let tx = tx.clone();
                tasks.push(monoio::spawn(async move { tx.send(sample(&format!("r{i}"))).await }));
            }
            for t in tasks {
                t.await;
            }
        });
        drop(tx);
        handle.finish();
        let batches = sink.batches.lock().unwrap();
        let mut ids: Vec<String> = batches.iter().flatten().cloned().collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "every record written exactly once");
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), n);
        assert!(stats.full_waits.load(Ordering::Relaxed) > 0, "the channel filled and senders waited");
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 2);
        assert_eq!(stats.written.load(Ordering::Relaxed), n as u64);
        assert!(batches.iter().any(|b| b.len() > 1), "records were batched");
    }
}
