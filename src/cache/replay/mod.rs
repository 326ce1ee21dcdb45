//! The outage replay: while L2 is unavailable, writes and deletes wait in a
//! bounded queue (last write per key wins; an overflow becomes one clear of
//! the namespace), and once L2 answers again they are replayed into it, in
//! order, before L2 values are promoted into L1 again.
//!
//! `queue` holds the rules of what waits; `driver` runs the replay for a cache.

mod driver;
mod queue;

pub use queue::DEFAULT_REPLAY_CAPACITY;
pub(crate) use queue::{Lookup, PendingOp, RecoveryQueue};
