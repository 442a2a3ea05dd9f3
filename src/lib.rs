//! kurral-proxy: an LLM observability proxy for OpenAI, Anthropic and Gemini.
//!
//! Agents change one base URL; the proxy authenticates them with a Kurral key, relays each call
//! to the provider with the caller's own provider key, streams the answer back as it arrives, and
//! records one capture per call.
//!
//! ```text
//!   worker thread (monoio, one per core, own SO_REUSEPORT listener, own upstream pool)
//!   server::conn      read_request_head ─ route ─ plan_call (auth::identify) ─ forward_request
//!                     ─ read_response_head ─ relay_response_body ─ call_record
//!                                                                       │ crossbeam, bounded
//!   capture::writer   one thread, batches ─▶ capture::store (RocksDB)   ◀┘
//!   api::reader       GET /api/... from a worker ─▶ reader thread ─▶ store, answer by oneshot
//! ```
//!
//! Where things live:
//! - `cli`, `config`: the command line and its resolution into one validated `Config`.
//! - `error`: the one place that maps failures to statuses and JSON bodies.
//! - `http`: head parsing to offsets, body framing, head rewriting (pure, fuzzable).
//! - `provider`: providers, endpoints, routing.
//! - `auth`: Kurral keys, the key table, the Kurral request fields.
//! - `upstream`: connecting (TCP, TLS), per-worker pools.
//! - `dom`: JSON bodies parsed into a DOM, with per-thread parser buffers.
//! - `inspect`: what a request body says (model, stream).
//! - `scan`: security scanning (secrets, personal data, prompt injection, risky tool calls).
//! - `capture`: records, the writer thread, the RocksDB store.
//! - `server`: threads, workers, the connection lifecycle.
//! - `api`: the read API (agents, sessions, calls), answered from reader threads.

pub mod api;
pub mod auth;
pub mod capture;
pub mod cli;
pub mod config;
pub mod dom;
pub mod error;
pub mod http;
pub mod inspect;
pub mod pricing;
pub mod provider;
pub mod scan;
pub mod server;
pub mod upstream;
pub mod usage;
