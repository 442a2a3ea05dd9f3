//! Opening upstream connections: DNS, TCP and TLS under one deadline.
//!
//! TLS uses rustls with the `ring` provider (a much shorter build than aws-lc-rs's C and cmake,
//! and its AES-GCM and ChaCha20 are assembly-backed for bulk throughput), trusting the Mozilla web
//! roots plus any `--upstream-ca` PEM file. ALPN offers only `http/1.1`, the protocol relayed.
//!
//! Addresses come from the resolver thread (`resolver`), so nothing here blocks a worker.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::ClientConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

use super::resolver::Resolver;
use super::stream::UpstreamStream;
use super::url::UpstreamUrl;
use crate::server::memory::MemoryStream;

/// While an upstream host has no address yet (just after start), a connect waits for the
/// resolver in steps of this long, within the connect timeout.
const RESOLVE_WAIT_STEP: Duration = Duration::from_millis(20);

/// Builds the shared TLS client configuration.
pub fn tls_client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("--upstream-ca {}: no certificate found", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
pub enum ConnectError {
    Resolve(String),
    Io(std::io::Error),
    Tls(String),
    Timeout,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Resolve(e) => write!(f, "resolve: {e}"),
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Tls(e) => write!(f, "tls: {e}"),
            ConnectError::Timeout => f.write_str("connect timed out"),
        }
    }
}

/// Opens a scripted in-memory upstream instead of a socket (`server::memory`).
pub type MemoryUpstreams = Box<dyn Fn() -> MemoryStream>;

/// One per worker: the TLS connector and the shared resolver.
pub struct Connector {
    tls: TlsConnector,
    resolver: Arc<Resolver>,
    memory: Option<MemoryUpstreams>,
}

impl Connector {
    pub fn new(config: Arc<ClientConfig>, resolver: Arc<Resolver>) -> Connector {
        Connector { tls: TlsConnector::from(config), resolver, memory: None }
    }

    /// A connector whose every connection is `open()`: no socket, no TLS.
    pub fn in_memory(config: Arc<ClientConfig>, resolver: Arc<Resolver>, open: MemoryUpstreams) -> Connector {
        Connector { tls: TlsConnector::from(config), resolver, memory: Some(open) }
    }

    /// Connects to upstream `index` (a `Provider::index()`) at `url`.
    pub async fn connect(
        &self,
        index: usize,
        url: &UpstreamUrl,
        timeout: Duration,
    ) -> Result<UpstreamStream, ConnectError> {
        match monoio::time::timeout(timeout, self.connect_inner(index, url)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn connect_inner(&self, index: usize, url: &UpstreamUrl) -> Result<UpstreamStream, ConnectError> {
        if let Some(open) = &self.memory {
            return Ok(UpstreamStream::Memory(open()));
        }
        let mut addrs = self.resolver.addrs(index);
        while addrs.is_empty() {
            // Bounded by the caller's timeout.
            monoio::time::sleep(RESOLVE_WAIT_STEP).await;
            addrs = self.resolver.addrs(index);
        }
        let mut last_err = None;
        let mut tcp = None;
        for addr in addrs.iter() {
            match TcpStream::connect_addr(*addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tcp = match tcp {
            Some(t) => t,
            None => return Err(ConnectError::Io(last_err.expect("at least one address was tried"))),
        };
        // Events are small and latency-bound: send each as soon as it is written.
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let name = ServerName::try_from(url.host.clone()).map_err(|e| ConnectError::Tls(e.to_string()))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let tls = self.tls.connect(name, tcp).await.map_err(|e| ConnectError::Tls(e.to_string()))?;
        Ok(UpstreamStream::tls(tls, fd))
    }
}
