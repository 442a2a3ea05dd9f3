//! The provider side: upstream URLs, connecting (TCP, TLS via rustls), and each worker's pool of
//! kept-alive connections.
//!
//! - `url`: an upstream base URL parsed once at start.
//! - `resolver`: the thread that resolves upstream hosts, so workers never block on DNS.
//! - `connector`: TCP connect and the TLS handshake, under one deadline.
//! - `stream`: one type for a plain or TLS upstream connection.
//! - `pool`: per-worker idle connections, keyed by provider.

pub mod connector;
pub mod pool;
pub mod resolver;
pub mod stream;
pub mod url;

pub use connector::{tls_client_config, Connector};
pub use pool::Pool;
pub use resolver::{start_resolver, Resolver};
pub use stream::UpstreamStream;
pub use url::UpstreamUrl;
