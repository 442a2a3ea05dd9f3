//! Opening upstream connections: DNS, TCP and TLS under one deadline.
//!
//! TLS uses rustls with the `ring` provider (a much shorter build than aws-lc-rs's C and cmake,
//! and its AES-GCM and ChaCha20 are assembly-backed for bulk throughput), trusting the Mozilla web
//! roots plus any `--upstream-ca` PEM file. ALPN offers only `http/1.1`, the protocol relayed.
//!
//! DNS is resolved with the system resolver, which blocks; results are cached per worker for
//! `DNS_TTL` so a lookup happens at most that often per upstream host and worker, and never for
//! IP literals.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::ClientConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

use super::stream::UpstreamStream;
use super::url::UpstreamUrl;

/// How long a resolved upstream address is reused.
const DNS_TTL: Duration = Duration::from_secs(30);

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

/// One per worker: the TLS connector and the DNS cache.
pub struct Connector {
    tls: TlsConnector,
    dns: RefCell<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Connector {
    pub fn new(config: Arc<ClientConfig>) -> Connector {
        Connector { tls: TlsConnector::from(config), dns: RefCell::new(HashMap::new()) }
    }

    pub async fn connect(&self, url: &UpstreamUrl, timeout: Duration) -> Result<UpstreamStream, ConnectError> {
        match monoio::time::timeout(timeout, self.connect_inner(url)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn connect_inner(&self, url: &UpstreamUrl) -> Result<UpstreamStream, ConnectError> {
        let addr = self.resolve(url)?;
        let tcp = TcpStream::connect_addr(addr).await.map_err(ConnectError::Io)?;
        // Events are small and latency-bound: send each as soon as it is written.
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let name = ServerName::try_from(url.host.clone()).map_err(|e| ConnectError::Tls(e.to_string()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| ConnectError::Tls(e.to_string()))?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }

    fn resolve(&self, url: &UpstreamUrl) -> Result<SocketAddr, ConnectError> {
        if let Ok(ip) = url.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, url.port));
        }
        let key = (url.host.clone(), url.port);
        if let Some((addr, at)) = self.dns.borrow().get(&key) {
            if at.elapsed() < DNS_TTL {
                return Ok(*addr);
            }
        }
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| ConnectError::Resolve(e.to_string()))?
            .next()
            .ok_or_else(|| ConnectError::Resolve(format!("no address for {}", url.host)))?;
        self.dns.borrow_mut().insert(key, (addr, Instant::now()));
        Ok(addr)
    }
}
