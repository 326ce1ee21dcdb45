//! Helpers shared by the integration tests and the harness examples: the
//! `redis-server` helper (`server.rs`, re-exported here) and the harnesses
//! (`chaos`, `coherence`, `loadgen`, `stampede`) with their argument parsing (`cli`).
#![allow(dead_code)]

#[cfg(all(feature = "axum", feature = "metrics"))]
pub mod app;
pub mod chaos;
pub mod cli;
pub mod coherence;
#[cfg(all(feature = "axum", feature = "metrics"))]
pub mod http;
pub mod loadgen;
pub mod logs;
pub mod stampede;
pub mod topology;
pub mod topology_bench;

mod server;
pub use server::*;
