//! What a backend reports about itself: the figures of L1 and L2 in a cache's stats.

use std::collections::BTreeMap;

use serde::Serialize;

/// L1 figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct L1Stats {
    /// `ttl` or `lru`.
    pub backend: &'static str,
    /// Entries held now.
    pub size: u64,
    /// Maximum entries.
    pub maxsize: u64,
    /// Entry TTL in seconds (`None` for `lru`).
    pub ttl: Option<f64>,
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries dropped to make room (capacity evictions; not expiries or
    /// deletes). 0 from a backend that does not report them.
    pub evictions: u64,
    /// hits / (hits + misses), 0 when there were no reads.
    pub hit_rate: f64,
    /// size / maxsize × 100.
    pub usage_percent: f64,
}

impl L1Stats {
    /// Fills `hit_rate` and `usage_percent` from the counts (for backend authors).
    pub fn compute_rates(mut self) -> Self {
        let total = self.hits + self.misses;
        self.hit_rate = if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        };
        self.usage_percent = if self.maxsize == 0 {
            0.0
        } else {
            self.size as f64 * 100.0 / self.maxsize as f64
        };
        self
    }
}

/// L2 figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct L2Stats {
    /// `redis` or `valkey`.
    pub backend: &'static str,
    /// `host:port/db` or the URL, never with credentials.
    pub endpoint: String,
    /// Database number.
    pub db: i64,
    /// Namespace.
    pub key_prefix: String,
    /// Default TTL in seconds.
    pub ttl: f64,
    /// Serializer name.
    pub serializer: String,
    /// Whether the server answered for these stats.
    pub available: bool,
    /// Keys in this namespace (`None` when the server was not asked or did not answer).
    pub size: Option<u64>,
    /// Selected server figures from `INFO` (hits, misses, memory, clients…):
    /// counters as numbers, names and versions as strings.
    pub server: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_computed() {
        let s = L1Stats {
            backend: "ttl",
            size: 5,
            maxsize: 10,
            ttl: Some(1.0),
            hits: 3,
            misses: 1,
            evictions: 0,
            hit_rate: 0.0,
            usage_percent: 0.0,
        }
        .compute_rates();
        assert_eq!(s.hit_rate, 0.75);
        assert_eq!(s.usage_percent, 50.0);
    }
}
