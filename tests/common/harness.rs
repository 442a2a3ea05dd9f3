//! Starts the proxy in-process against a mock upstream, with a fresh data dir and one key.

use std::net::SocketAddr;
use std::path::Path;

use kurral_proxy::auth::KeyStore;
use kurral_proxy::capture::store::Store;
use kurral_proxy::capture::CallRecord;
use kurral_proxy::config::{Config, DriverChoice};
use kurral_proxy::server::{self, ServerHandle};

use super::mock_upstream::MockUpstream;

pub struct Proxy {
    pub server: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub key: String,
    pub addr: SocketAddr,
}

pub const OPENAI_KEY: &str = "sk-test-openai-0123456789";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";
pub const GOOGLE_KEY: &str = "AIzaTestGoogleKey0123456789";

impl Proxy {
    /// A proxy whose three upstreams are `mock`, with `tweak` applied to the config.
    pub fn start(mock: &MockUpstream, tweak: impl FnOnce(&mut Config)) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path());
        config.workers = 2;
        // Suites make many calls with one key; the tests of the limits set their own.
        config.limits.requests_per_minute = 0;
        config.limits.max_concurrent = 0;
        let url = kurral_proxy::upstream::UpstreamUrl::parse(&mock.url()).unwrap();
        config.upstreams = [url.clone(), url.clone(), url];
        if let Some(pem) = mock.ca_pem() {
            let ca = dir.path().join("mock-ca.pem");
            std::fs::write(&ca, pem).unwrap();
            config.upstream_ca = Some(ca);
        }
        tweak(&mut config);
        let (key, _) = KeyStore::new(dir.path()).create("alice").unwrap();
        let server = server::start(config).expect("proxy starts");
        let addr = server.addr;
        Proxy { server: Some(server), dir, key, addr }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (draining captures) and returns every record, oldest first.
    pub fn stop_and_records(&mut self) -> Vec<CallRecord> {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        Store::open(self.dir.path()).unwrap().calls().unwrap()
    }

    /// The Kurral fields every proxied test request carries.
    pub fn kurral<'a>(&'a self, agent: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![("X-Kurral-API-Key", self.key.as_str()), ("x-kurral-agent", agent)]
    }
}

/// The drivers to run socket tests on: epoll always, io_uring where the kernel has it.
pub fn drivers() -> Vec<DriverChoice> {
    let mut d = vec![DriverChoice::Epoll];
    if monoio::utils::detect_uring() {
        d.push(DriverChoice::Uring);
    }
    d
}
