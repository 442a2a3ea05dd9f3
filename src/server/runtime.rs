//! Thread-per-core bootstrap: one listener per worker on the same address (SO_REUSEPORT, so the
//! kernel spreads connections), one named thread per worker pinned to a core, and the I/O driver:
//! io_uring where the kernel allows it, else epoll, said once in the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use super::worker::run_worker;
use super::Shared;
use crate::config::DriverChoice;

/// Pending connections per listener before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;
/// io_uring submission queue entries per worker.
const URING_ENTRIES: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

pub fn choose_driver(choice: DriverChoice) -> Result<Driver, String> {
    let uring = monoio::utils::detect_uring();
    match choice {
        DriverChoice::Epoll => Ok(Driver::Epoll),
        DriverChoice::Uring if uring => Ok(Driver::IoUring),
        DriverChoice::Uring => Err("--driver uring: io_uring is not available on this kernel".into()),
        DriverChoice::Auto if uring => Ok(Driver::IoUring),
        DriverChoice::Auto => {
            tracing::warn!("io_uring is not available; using the epoll driver");
            Ok(Driver::Epoll)
        }
    }
}

/// Binds `count` listeners to one address. Port 0 is resolved by the first bind and reused.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, String> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let a second proxy on the same port silently take half the
        // connections; a plain bind first fails if anything already listens there.
        std::net::TcpListener::bind(addr).map_err(|e| format!("listen {addr}: {e}"))?;
    }
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket =
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
        socket.set_reuse_address(true).map_err(|e| e.to_string())?;
        socket.set_reuse_port(true).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        socket.bind(&addr.into()).map_err(|e| format!("listen {addr}: {e}"))?;
        socket.listen(LISTEN_BACKLOG).map_err(|e| format!("listen {addr}: {e}"))?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr().map_err(|e| e.to_string())?;
        out.push(listener);
    }
    Ok(out)
}

pub fn spawn_workers(
    driver: Driver,
    listeners: Vec<std::net::TcpListener>,
    shared: &Arc<Shared>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = listeners.len() <= cores;
    let mut handles = Vec::with_capacity(listeners.len());
    for (id, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("kurral-worker-{id}"))
            .spawn(move || {
                if pin {
                    // One worker per core keeps each worker's caches and io_uring rings warm.
                    let _ = monoio::utils::bind_to_cpu_set([id]);
                }
                run_on_driver(driver, run_worker(id, listener, shared));
            })
            .map_err(|e| e.to_string())?;
        handles.push(handle);
    }
    Ok(handles)
}

fn run_on_driver<F: std::future::Future<Output = ()>>(driver: Driver, fut: F) {
    match driver {
        Driver::IoUring => {
            let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .enable_timer()
                .build();
            match rt {
                Ok(mut rt) => rt.block_on(fut),
                Err(e) => tracing::error!("io_uring runtime failed to start: {e}"),
            }
        }
        Driver::Epoll => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
            Ok(mut rt) => rt.block_on(fut),
            Err(e) => tracing::error!("epoll runtime failed to start: {e}"),
        },
    }
}
