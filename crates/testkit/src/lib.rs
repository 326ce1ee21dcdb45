//! The test kit of resilient-cache, shared by its integration tests, its
//! examples and its benchmarks (compiled once, as a workspace crate):
//!
//! - the `redis-server` helper (`server.rs`, re-exported here): real servers
//!   on free loopback ports that a test may kill, freeze or restart;
//! - `topology`: Redis Cluster and Sentinel deployments of such servers;
//! - the harnesses (`batch`, `chaos`, `coherence`, `invalidation`, `loadgen`, `stampede`,
//!   `topology_bench`) with their argument parsing (`cli`);
//! - `logs` (captured tracing output) and, with the `app` feature, the
//!   example web app (`app`) and its HTTP helpers (`http`).

#[cfg(feature = "app")]
pub mod app;
pub mod batch;
pub mod chaos;
pub mod cli;
pub mod coherence;
#[cfg(feature = "app")]
pub mod http;
pub mod invalidation;
pub mod loadgen;
pub mod logs;
pub mod stampede;
pub mod topology;
pub mod topology_bench;

mod server;
pub use server::*;
