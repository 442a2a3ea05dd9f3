//! HTTP/1.1 codec: pure functions over byte buffers, apart from the code that owns sockets, so
//! that it can be fuzzed and benchmarked on its own.
//!
//! - `head`: request and response heads parsed into offsets, with the strict framing rules.
//! - `chunked`: the incremental chunked-transfer decoder.
//! - `body`: one decoder per framing (Content-Length, chunked, close-delimited).
//! - `rewrite`: the head sent upstream and the head sent back to the client.

pub mod body;
pub mod chunked;
pub mod head;
pub mod rewrite;
