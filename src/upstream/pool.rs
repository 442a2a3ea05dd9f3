//! Each worker's idle upstream connections, by provider. Single-threaded (one per worker), so no
//! lock. A connection enters the pool only after a complete, clean response that did not ask to
//! close; it is reused most-recent-first, and dropped once idle for `MAX_IDLE` or when anything
//! arrived on it while it sat idle.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::stream::UpstreamStream;
use crate::provider::Provider;

/// Idle time after which a pooled connection is not reused: providers' load balancers close
/// idle connections after about a minute, and a reused dead connection costs a retry.
const MAX_IDLE: Duration = Duration::from_secs(20);
/// Idle connections kept per provider and worker.
const MAX_IDLE_PER_PROVIDER: usize = 64;

pub struct Pool {
    idle: RefCell<[Vec<(UpstreamStream, Instant)>; 3]>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool { idle: RefCell::new([Vec::new(), Vec::new(), Vec::new()]) }
    }
}

impl Pool {
    pub fn take(&self, provider: Provider) -> Option<UpstreamStream> {
        let mut idle = self.idle.borrow_mut();
        let list = &mut idle[provider.index()];
        while let Some((stream, since)) = list.pop() {
            if since.elapsed() < MAX_IDLE && stream.is_quiet() {
                return Some(stream);
            }
        }
        None
    }

    pub fn put(&self, provider: Provider, stream: UpstreamStream) {
        let mut idle = self.idle.borrow_mut();
        let list = &mut idle[provider.index()];
        if list.len() >= MAX_IDLE_PER_PROVIDER {
            list.remove(0);
        }
        list.push((stream, Instant::now()));
    }
}
