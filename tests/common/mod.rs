// Each integration test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub mod client;
pub mod harness;
pub mod mock_upstream;
pub mod raw_upstream;
pub mod usage_fixtures;
