//! One worker: a monoio runtime on its own thread with its own listener (SO_REUSEPORT), upstream
//! pool, connector and buffers. Nothing here is shared with other workers except `Shared`, which
//! is read-mostly (config, key table) or internally synchronized (the capture channel).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{CancelHandle, Canceller};
use monoio::net::TcpListener;

use super::client::ClientStream;
use super::conn::serve_connection;
use super::Shared;
use crate::upstream::{Connector, Pool};

/// How often a worker looks at the shutdown flag while it waits for connections or requests.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// After the grace period, calls still running are ended; this bounds how long that takes.
const HARD_STOP_WAIT: Duration = Duration::from_secs(2);

pub struct Worker {
    pub id: usize,
    /// Cancelled when the server shuts down: ends the accept and every idle keep-alive read.
    pub shutdown: CancelHandle,
    pub shared: Arc<Shared>,
    pub pool: Pool,
    pub connector: Connector,
    active: Cell<usize>,
    /// Every open connection's stop switch, by connection number.
    stops: RefCell<HashMap<u64, Rc<ConnStop>>>,
    next_conn: Cell<u64>,
}

/// Ends a connection's call when the grace period is over. The connection polls `stopped()`
/// beside its work; the worker fires it.
#[derive(Default)]
pub struct ConnStop {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ConnStop {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once the worker has fired this stop.
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped(self)
    }
}

pub struct Stopped<'a>(&'a ConnStop);

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.get() {
            return Poll::Ready(());
        }
        let mut slot = self.0.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>, connector: Connector, shutdown: CancelHandle) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            shutdown,
            shared,
            pool: Pool::default(),
            connector,
            active: Cell::new(0),
            stops: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
        })
    }

    pub fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }
}

/// Confines a panic to the connection that raised it. monoio does not catch panics in tasks, so
/// one would otherwise end the worker thread and every connection on it.
struct CatchPanic<'a>(Pin<Box<dyn Future<Output = ()> + 'a>>);

impl Future for CatchPanic<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("a connection task panicked; that connection was closed");
                Poll::Ready(())
            }
        }
    }
}

/// Counts a connection as in flight, and keeps its stop switch registered, for as long as it
/// lives.
struct ActiveGuard {
    worker: Rc<Worker>,
    conn: u64,
    stop: Rc<ConnStop>,
}

impl ActiveGuard {
    fn new(worker: &Rc<Worker>) -> ActiveGuard {
        let conn = worker.next_conn.get();
        worker.next_conn.set(conn + 1);
        worker.active.set(worker.active.get() + 1);
        let stop = Rc::new(ConnStop::default());
        worker.stops.borrow_mut().insert(conn, stop.clone());
        ActiveGuard { worker: worker.clone(), conn, stop }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.worker.active.set(self.worker.active.get() - 1);
        self.worker.stops.borrow_mut().remove(&self.conn);
    }
}

/// Accepts until shutdown, then waits (bounded by the grace period) for in-flight connections.
pub async fn run_worker(id: usize, listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = id, "listener unusable: {e}");
            return;
        }
    };
    let connector = Connector::new(shared.tls.clone(), shared.resolver.clone());
    let canceller = Canceller::new();
    let worker = Worker::new(id, shared, connector, canceller.handle());

    // Turns the shutdown flag into a cancellation of the worker's waiting operations. Cancelled
    // operations, unlike abandoned ones, still return what they completed: no accepted
    // connection or received request is lost.
    let watcher = worker.clone();
    monoio::spawn(async move {
        while !watcher.shutting_down() {
            monoio::time::sleep(SHUTDOWN_POLL).await;
        }
        canceller.cancel();
    });

    while !worker.shutting_down() {
        match listener.cancelable_accept(worker.shutdown.clone()).await {
            Ok((stream, _peer)) => {
                // Streamed events are small: send each as soon as it is written.
                let _ = stream.set_nodelay(true);
                let guard = ActiveGuard::new(&worker);
                monoio::spawn(async move {
                    let stream = ClientStream::Tcp(stream);
                    CatchPanic(Box::pin(serve_connection(&guard.worker, stream, &guard.stop))).await;
                    drop(guard);
                });
            }
            Err(_) if worker.shutting_down() => break,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(worker = id, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);

    let deadline = Instant::now() + worker.shared.config.shutdown_grace;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.active.get() > 0 {
        tracing::warn!(worker = id, open = worker.active.get(), "grace period over; ending the calls still running");
        let stops: Vec<Rc<ConnStop>> = worker.stops.borrow().values().cloned().collect();
        for stop in stops {
            stop.fire();
        }
        let deadline = Instant::now() + HARD_STOP_WAIT;
        while worker.active.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
