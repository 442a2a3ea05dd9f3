//! Who is calling: Kurral keys, their hashes, and the table the workers check them against.
//!
//! - `key`: the key format, generation and hashing (only SHA-256 hashes are ever stored).
//! - `limits`: per-user rate (GCRA) and concurrency limits, atomic and shared by all workers.
//! - `store`: the append-only key file in the data dir, and the table built from it, reloaded
//!   by a watcher thread so that a running server sees new and revoked keys without restart.

pub mod headers;
pub mod key;
pub mod limits;
pub mod store;

pub use headers::{identify, CallIdentity};
pub use key::{generate_key, hash_key, KeyHash};
pub use limits::{LimitValues, Permit, Refusal, UserState};
pub use store::{AgentRegistration, KeyInfo, KeyLimits, KeyStore, KeyTable, SharedKeys};
