//! Upstream addresses, resolved off the worker threads.
//!
//! The system resolver blocks; on a worker thread it would stall every connection of that worker.
//! One resolver thread looks the upstream hosts up at start and every `REFRESH` after (every
//! second while a host has no address yet); workers read the latest addresses without a lock.
//! IP literals never go through it.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::url::UpstreamUrl;

/// How often resolved addresses are refreshed (provider addresses change behind their CDNs).
const REFRESH: Duration = Duration::from_secs(30);
/// Retry interval while a host has not resolved.
const RETRY: Duration = Duration::from_secs(1);
/// While a host keeps failing to resolve, the failure is logged again at most this often (the
/// retries themselves go on every `RETRY`).
const WARN_AGAIN: Duration = Duration::from_secs(300);

/// What the log has said about one host's lookups.
#[derive(Debug, Default)]
struct Lookups {
    /// When the current run of failures was last logged; None while the host resolves.
    warned: Option<Instant>,
}

impl Lookups {
    /// A lookup failed: whether to log it (the first failure, then every `WARN_AGAIN`).
    fn failed(&mut self, now: Instant) -> bool {
        let due = self.warned.is_none_or(|at| now.duration_since(at) >= WARN_AGAIN);
        if due {
            self.warned = Some(now);
        }
        due
    }

    /// A lookup found addresses: whether this ends a run of failures (worth saying once).
    fn resolved(&mut self) -> bool {
        self.warned.take().is_some()
    }
}

pub struct Resolver {
    /// Indexed like the upstreams (by `Provider::index()`).
    addrs: Vec<ArcSwap<Vec<SocketAddr>>>,
}

impl Resolver {
    pub fn addrs(&self, index: usize) -> Arc<Vec<SocketAddr>> {
        self.addrs[index].load_full()
    }
}

fn literal(url: &UpstreamUrl) -> Option<SocketAddr> {
    url.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, url.port))
}

impl Resolver {
    /// Literal addresses only, no thread (names stay unresolved): for in-memory upstreams.
    pub fn fixed(urls: &[UpstreamUrl]) -> Resolver {
        Resolver { addrs: urls.iter().map(|u| ArcSwap::from_pointee(literal(u).into_iter().collect())).collect() }
    }
}

/// Starts the resolver thread; it ends when `stop` is set.
pub fn start_resolver(urls: &[UpstreamUrl], stop: Arc<AtomicBool>) -> std::io::Result<(Arc<Resolver>, JoinHandle<()>)> {
    let resolver = Arc::new(Resolver {
        addrs: urls.iter().map(|u| ArcSwap::from_pointee(literal(u).into_iter().collect())).collect(),
    });
    let names: Vec<(usize, UpstreamUrl)> =
        urls.iter().cloned().enumerate().filter(|(_, u)| literal(u).is_none()).collect();
    let shared = resolver.clone();
    let handle = std::thread::Builder::new().name("kurral-resolver".into()).spawn(move || {
        let mut next = Instant::now();
        let mut lookups: Vec<Lookups> = names.iter().map(|_| Lookups::default()).collect();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let mut all_resolved = true;
                for ((i, url), log) in names.iter().zip(&mut lookups) {
                    match (url.host.as_str(), url.port).to_socket_addrs() {
                        Ok(found) => {
                            let found: Vec<SocketAddr> = found.collect();
                            all_resolved &= !found.is_empty();
                            if !found.is_empty() {
                                shared.addrs[*i].store(Arc::new(found));
                                if log.resolved() {
                                    tracing::info!(host = %url.host, "upstream host resolves again");
                                }
                            }
                        }
                        Err(e) => {
                            // Keep the last good addresses; a resolver hiccup is not an outage.
                            all_resolved &= !shared.addrs[*i].load().is_empty();
                            if log.failed(Instant::now()) {
                                tracing::warn!(
                                    host = %url.host,
                                    "upstream host did not resolve: {e} (retrying every {}s; said again in {} min \
                                     if it still fails)",
                                    RETRY.as_secs(),
                                    WARN_AGAIN.as_secs() / 60
                                );
                            }
                        }
                    }
                }
                next = Instant::now() + if all_resolved { REFRESH } else { RETRY };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })?;
    Ok((resolver, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_known_at_once_and_names_resolve() {
        let urls =
            [UpstreamUrl::parse("http://127.0.0.1:9").unwrap(), UpstreamUrl::parse("http://localhost:10").unwrap()];
        let stop = Arc::new(AtomicBool::new(false));
        let (r, handle) = start_resolver(&urls, stop.clone()).unwrap();
        assert_eq!(*r.addrs(0), vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.addrs(1).is_empty() {
            assert!(Instant::now() < deadline, "localhost never resolved");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(r.addrs(1).iter().all(|a| a.port() == 10 && a.ip().is_loopback()));
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }

    #[test]
    fn a_failing_host_is_logged_at_first_then_every_few_minutes_and_when_it_recovers() {
        let mut log = Lookups::default();
        let t0 = Instant::now();
        assert!(log.failed(t0), "the first failure is said");
        assert!(!log.failed(t0 + RETRY), "retries a second apart are not");
        assert!(!log.failed(t0 + WARN_AGAIN - RETRY));
        assert!(log.failed(t0 + WARN_AGAIN), "a host still failing is said again");
        assert!(log.resolved(), "recovery ends the run of failures");
        assert!(!log.resolved(), "and is said once");
        assert!(log.failed(t0 + WARN_AGAIN + RETRY), "a new run of failures is said at once");
    }
}
