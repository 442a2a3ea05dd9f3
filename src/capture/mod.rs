//! Capture: one record per call, handed from the workers to one writer thread.
//!
//! - `record`: `CallRecord` and its versioned encoding.
//! - `content`: what a record keeps of bodies and tools, by retention level.
//! - `writer`: the bounded crossbeam channel, the async-waiting sender the workers hold, and the
//!   writer thread that batches records into a `RecordSink`.
//! - `layout`: the store's column families and keys (per user), values versioned.
//! - `summary`: per-session and per-agent aggregates the writer keeps up to date.
//! - `batch`: a RocksDB write batch handed over in key order (feature `store`).
//! - `store`: the RocksDB sink and the queries of the read API and the CLI (feature `store`).
//! - `findings`: the security findings of a user's calls, for `findings list` (feature `store`).

#[cfg(feature = "store")]
mod batch;
pub mod content;
#[cfg(feature = "store")]
pub mod findings;
pub mod layout;
pub mod record;
#[cfg(feature = "store")]
pub mod store;
pub mod summary;
pub mod writer;

pub use record::{CallRecord, Encoded, Env, Outcome, Retention};
pub use writer::{
    start_writer, CaptureSender, CaptureStats, Discard, Durability, Expiry, ExpiryScope, RecordSink, WriterHandle,
};
