//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): install any recorder (Prometheus, StatsD, …) in your program.
//!
//! Two kinds of figures:
//!
//! - **recorded as they happen**: `resilient_cache_l2_command_seconds`
//!   (histogram; labels `command`, `outcome`) around every L2 round trip, and
//!   `resilient_cache_circuit_breaker_state` (gauge: 0 closed, 1 half-open,
//!   2 open) with `resilient_cache_circuit_breaker_transitions_total`
//!   (label `breaker`) on every breaker transition;
//! - **published by [`record`]** from the caches' own counters, so the L1 hot
//!   path stays free of metric calls: call it before each scrape (the
//!   example app does it in its `/metrics` handler). Counters (label `cache`):
//!   `resilient_cache_l1_hits_total`, `_l1_misses_total`, `_l2_hits_total`,
//!   `_l2_misses_total`, `_l2_errors_total` (label `kind`), loader counters
//!   `_loads_total`, `_loader_errors_total`, `_stale_served_total`,
//!   `_load_waits_total`, `_eager_refreshes_total`,
//!   `_stale_writes_prevented_total`, backplane counters
//!   `_backplane_messages_sent_total`, `_backplane_messages_received_total`,
//!   `_backplane_messages_skipped_total`,
//!   tracking counters `_tracking_notifications_total`,
//!   `_tracking_keys_invalidated_total`, `_tracking_flushes_total`,
//!   `_tracking_loss_clears_total` and gauge `_tracking_connected` (1 or 0),
//!   L2 entries an invalidation marker covered `_marker_reads_total` (label
//!   `kind`: `removed`, `stale`); gauges `resilient_cache_l1_size`,
//!   `_replay_queue_depth`, `_markers_known`, and the state of each cache's
//!   breaker.

use metrics::{counter, gauge};

use crate::{CacheService, CircuitState};

/// Publishes every live cache's counters of `service` to the installed recorder.
pub async fn record(service: &CacheService) {
    // Counters only: a scrape must not scan every namespace in L2.
    let stats = service.stats_asking_l2(false).await;
    for (name, c) in stats.caches {
        let total = |metric: &'static str, v: u64| counter!(metric, "cache" => name.clone()).absolute(v);
        if let Some(l1) = &c.l1 {
            total("resilient_cache_l1_hits_total", l1.hits);
            total("resilient_cache_l1_misses_total", l1.misses);
            gauge!("resilient_cache_l1_size", "cache" => name.clone()).set(l1.size as f64);
        }
        total("resilient_cache_l2_hits_total", c.l2_hits);
        total("resilient_cache_l2_misses_total", c.l2_misses);
        let e = &c.errors;
        for (kind, v) in [
            ("timeout", e.l2_timeout),
            ("refused", e.l2_refused),
            ("connection", e.l2_connection),
            ("auth", e.l2_auth),
            ("decode", e.decode),
            ("encode", e.encode),
            ("skipped", e.l2_skipped),
        ] {
            counter!("resilient_cache_l2_errors_total", "cache" => name.clone(), "kind" => kind).absolute(v);
        }
        let l = &c.loader;
        total("resilient_cache_loads_total", l.loads);
        total("resilient_cache_loader_errors_total", l.loader_errors);
        total("resilient_cache_stale_served_total", l.stale_served);
        total("resilient_cache_load_waits_total", l.waits);
        total("resilient_cache_eager_refreshes_total", l.eager_refreshes);
        total(
            "resilient_cache_stale_writes_prevented_total",
            l.stale_writes_prevented,
        );
        if let Some(b) = &c.backplane {
            total("resilient_cache_backplane_messages_sent_total", b.messages_sent);
            total(
                "resilient_cache_backplane_messages_received_total",
                b.messages_received,
            );
            total(
                "resilient_cache_backplane_messages_skipped_total",
                b.messages_skipped,
            );
        }
        if let Some(t) = &c.tracking {
            total("resilient_cache_tracking_notifications_total", t.notifications);
            total(
                "resilient_cache_tracking_keys_invalidated_total",
                t.keys_invalidated,
            );
            total("resilient_cache_tracking_flushes_total", t.flushes);
            total("resilient_cache_tracking_loss_clears_total", t.loss_clears);
            gauge!("resilient_cache_tracking_connected", "cache" => name.clone()).set(if t.connected {
                1.0
            } else {
                0.0
            });
        }
        gauge!("resilient_cache_replay_queue_depth", "cache" => name.clone())
            .set(c.recovery.queue_depth as f64);
        let inv = &c.invalidation;
        for (kind, v) in [("removed", inv.removed_reads), ("stale", inv.stale_reads)] {
            counter!("resilient_cache_marker_reads_total", "cache" => name.clone(), "kind" => kind)
                .absolute(v);
        }
        gauge!("resilient_cache_markers_known", "cache" => name.clone()).set(inv.markers_known as f64);
        let state = match c.circuit_breaker.state {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        gauge!("resilient_cache_cache_breaker_state", "cache" => name.clone()).set(state);
    }
}
