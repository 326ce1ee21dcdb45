//! Tools for testing backends and the services built on this crate (the
//! `testing` feature).
//!
//! - [`conformance`]: the contract every [`CacheBackend`](crate::CacheBackend)
//!   keeps (the rules of `BACKEND_GUIDE.md`), as a suite you run against your
//!   own backend. The built-in backends pass it in this crate's tests.
//! - [`MemoryL2`]: an in-memory L2 backend with fault injection (fail the
//!   next calls, freeze, add latency, drop the connection), so a service's
//!   own tests can drive an outage and a recovery without starting Redis.
//! - [`MemoryBackplane`]: an in-process backplane between caches standing
//!   for instances of a service, with fault injection (latency, a freeze,
//!   a lost connection, a flood), so cross-instance invalidation is tested
//!   without Redis.
//! - [`clock`]: this crate's clock, moved forward by your test (expiry,
//!   fail-safe and breaker timeouts without sleeping).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use resilient_cache::testing::{conformance, MemoryL2};
//!
//! let l2 = Arc::new(MemoryL2::new());
//! let report = conformance::check(l2, conformance::Options::default(), |i| i.to_be_bytes().to_vec()).await;
//! assert!(report.is_ok(), "{report}");
//! # }
//! ```

mod backplane;
pub mod clock;
pub mod conformance;
mod memory_l2;

pub use backplane::{MemoryBackplane, MemoryBus};
pub use memory_l2::{Faults, MemoryL2};
